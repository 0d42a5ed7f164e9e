"""Versions of the agent built by the tests, for the update tests (tests/integration/test_update.py).

``offline_wheelhouse(dest)`` repacks this machine's environment (``tools.wheelhouse.from_environment``: offline);
``version_wheelhouse(base, dest, version, patch)`` copies it with the agent's wheel rebuilt at another version,
optionally with files of the package replaced (``patch``: archive name -> bytes), e.g. an agent that exits at start.
"""

import os
import re
import shutil
import zipfile

from tools import wheelhouse

#: an agent whose ``run`` exits at once with status 3: it passes --version, the imports and doctor --quick, and then
#: never proves itself (the crash loop the supervisor must end)
CRASHING_RUN = b"\n\ndef cmd_run(args):\n    import sys\n    print('this build exits at start', file=sys.stderr)\n" \
               b"    return 3\n"


def offline_wheelhouse(dest):
    if not os.path.exists(dest):
        tmp = dest + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        wheelhouse.from_environment(tmp)
        os.rename(tmp, dest)
    return dest


def agent_wheel(folder):
    return next(os.path.join(folder, n) for n in sorted(os.listdir(folder)) if n.startswith("edge_gateway-"))


def rebuild_wheel(src, dest_dir, version, patch=None):
    """The agent's wheel ``src`` as ``version`` (``gateway.__version__`` and the metadata), with ``patch`` applied;
    ``patch`` values are appended to the named module (so a later definition replaces an earlier one)."""
    files, info = {}, {}
    with zipfile.ZipFile(src) as zf:
        for name in zf.namelist():
            data = zf.read(name)
            if ".dist-info/" in name:
                fname = name.split(".dist-info/", 1)[1]
                if fname != "RECORD":
                    info[fname] = data
                continue
            files[name] = data
    files["gateway/__init__.py"] = re.sub(rb'__version__ = "[^"]*"', b'__version__ = "%s"' % version.encode(),
                                          files["gateway/__init__.py"])
    for name, extra in (patch or {}).items():
        files[name] = files.get(name, b"") + extra
    info["METADATA"] = re.sub(rb"(?m)^Version: .*$", b"Version: " + version.encode(), info["METADATA"])
    return wheelhouse.write_wheel(dest_dir, "edge-gateway", version, "py3-none-any", files, info)


def version_wheelhouse(base, dest, version, patch=None):
    """A copy of wheelhouse ``base`` whose agent wheel is ``version``."""
    if os.path.exists(dest):
        return dest
    tmp = dest + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    src = agent_wheel(base)
    for name in os.listdir(base):
        if os.path.join(base, name) != src:
            shutil.copy(os.path.join(base, name), tmp)
    rebuild_wheel(src, tmp, version, patch)
    os.rename(tmp, dest)
    return dest
