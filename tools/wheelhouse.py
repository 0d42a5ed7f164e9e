"""The offline wheelhouse of a first-boot bundle: every wheel ``pip install --no-index`` needs on the gateway.

Two ways to fill it:

* ``build_for_target(dest, ...)``: the normal way, on an installer's laptop with network access. It runs
  ``pip wheel --no-deps`` on this project and ``pip download --only-binary=:all:`` of its runtime dependencies for
  the target (Raspberry Pi OS bookworm 64-bit: ``manylinux2014_aarch64``/``manylinux_2_36_aarch64``, CPython 3.11).
* ``from_environment(dest)``: offline, for the SAME platform as this machine only. It repacks the distributions
  installed in this interpreter's environment (edge-gateway and the closure of its runtime requirements, plus pip)
  back into wheels, from their ``RECORD`` files. An editable install of edge-gateway is packed from its source
  tree. The tests use this so they never touch the network; an installer can use it on a machine of the target's
  own kind (a Pi that already runs the agent) to clone a fleet.

A wheel is a zip file with a ``.dist-info`` folder (PEP 427); this module writes one with ``zipfile``.
"""

import base64
import csv
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from importlib import metadata

PROJECT = "edge-gateway"
TARGETS = {
    # name: (pip --platform values, python version, abi)
    "rpi-arm64": (["manylinux_2_36_aarch64", "manylinux2014_aarch64", "linux_aarch64"], "3.11", "cp311"),
    "rpi-armhf": (["linux_armv7l", "manylinux2014_armv7l"], "3.11", "cp311"),
}
_SKIP_DIST_INFO = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}


class WheelhouseError(Exception):
    """The wheelhouse could not be built (a missing distribution, pip failed). The message says which."""


def _norm(name):
    return re.sub(r"[-_.]+", "_", name).lower()


def _marker_ok(requirement):
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip always vendors it
        from pip._vendor.packaging.requirements import Requirement
    req = Requirement(requirement)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        return None
    return req.name


def requirement_closure(root=PROJECT):
    """Names of the installed distributions ``root`` needs at run time (markers evaluated for this machine)."""
    seen, todo = {}, [root]
    while todo:
        name = todo.pop()
        if _norm(name) in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise WheelhouseError("%s is required but not installed in %s" % (name, sys.prefix)) from None
        seen[_norm(name)] = dist
        for req in dist.requires or ():
            dep = _marker_ok(req)
            if dep:
                todo.append(dep)
    return list(seen.values())


def _record_line(arcname, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")
    return [arcname, "sha256=" + digest, str(len(data))]


def write_wheel(dest_dir, name, version, tags, files, dist_info):
    """Write ``{name}-{version}-{tags}.whl``; ``files`` and ``dist_info`` map archive names to bytes."""
    info_dir = "%s-%s.dist-info" % (_norm(name), version)
    path = os.path.join(dest_dir, "%s-%s-%s.whl" % (_norm(name), version, tags))
    rows = []
    tmp = path + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for arcname, data in sorted(files.items()):
            zf.writestr(arcname, data)
            rows.append(_record_line(arcname, data))
        for fname, data in sorted(dist_info.items()):
            zf.writestr(info_dir + "/" + fname, data)
            rows.append(_record_line(info_dir + "/" + fname, data))
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerows(rows + [[info_dir + "/RECORD", "", ""]])
        zf.writestr(info_dir + "/RECORD", out.getvalue())
    os.replace(tmp, path)
    return path


def _wheel_tags(wheel_text):
    py, abi, plat = [], [], []
    for line in wheel_text.splitlines():
        if line.startswith("Tag:"):
            a, b, c = line.split(":", 1)[1].strip().split("-", 2)
            for lst, v in ((py, a), (abi, b), (plat, c)):
                if v not in lst:
                    lst.append(v)
    if not py:
        return "py3-none-any"
    return "-".join(".".join(x) for x in (py, abi, plat))


def _editable_source(dist):
    if dist.read_text("WHEEL") is None and dist.read_text("PKG-INFO") is not None:
        return str(dist.locate_file(""))  # found as <source>/<name>.egg-info (running from the checkout)
    try:
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
    except ValueError:
        return None
    if not direct.get("dir_info", {}).get("editable") or not direct.get("url", "").startswith("file://"):
        return None
    return direct["url"][len("file://"):]


def repack(dist, dest_dir):
    """Pack one installed distribution back into a wheel in ``dest_dir``; returns its path."""
    info_files = {}
    for fname in ("METADATA", "WHEEL", "entry_points.txt", "top_level.txt"):
        text = dist.read_text(fname)
        if text is not None:
            info_files[fname] = text.encode("utf-8")
    if "METADATA" not in info_files and dist.read_text("PKG-INFO") is not None:
        info_files["METADATA"] = dist.read_text("PKG-INFO").encode("utf-8")  # an .egg-info in a source tree
    source = _editable_source(dist)
    files = {}
    if source:
        tops = (dist.read_text("top_level.txt") or "").split()
        for top in tops:
            base = os.path.join(source, top)
            for folder, dirs, names in os.walk(base):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__")
                for n in names:
                    if n.endswith((".pyc", ".pyo")):
                        continue
                    full = os.path.join(folder, n)
                    with open(full, "rb") as f:
                        files[os.path.relpath(full, source).replace(os.sep, "/")] = f.read()
        info_files["WHEEL"] = b"Wheel-Version: 1.0\nGenerator: edge-gateway-wheelhouse\nRoot-Is-Purelib: true\n" \
                              b"Tag: py3-none-any\n"
        tags = "py3-none-any"
    else:
        for entry in dist.files or ():
            rel = str(entry).replace(os.sep, "/")
            if rel.startswith("../") or "__pycache__" in rel or rel.endswith(".pyc"):
                continue  # scripts in bin/ are regenerated from entry_points.txt; bytecode is rebuilt
            if ".dist-info/" in rel:
                fname = rel.split(".dist-info/", 1)[1]
                if fname in _SKIP_DIST_INFO or fname in info_files:
                    continue
                info_files[fname] = dist.locate_file(entry).read_bytes()
                continue
            files[rel] = dist.locate_file(entry).read_bytes()
        tags = _wheel_tags((info_files.get("WHEEL") or b"").decode("utf-8"))
    return write_wheel(dest_dir, dist.metadata["Name"], dist.version, tags, files, info_files)


def from_environment(dest_dir, root=PROJECT, extra=("pip",)):
    """Offline wheelhouse for THIS machine's platform from the installed environment. Returns the wheel paths."""
    os.makedirs(dest_dir, exist_ok=True)
    dists = requirement_closure(root)
    for name in extra:
        try:
            dists.append(metadata.distribution(name))
        except metadata.PackageNotFoundError:
            raise WheelhouseError("%s is not installed in %s" % (name, sys.prefix)) from None
    return [repack(d, dest_dir) for d in dists]


def build_for_target(dest_dir, project_dir, target="rpi-arm64", pip=None):
    """Build the wheelhouse for ``target`` with pip (needs network access to the package index)."""
    if target not in TARGETS:
        raise WheelhouseError("unknown target %r (known: %s)" % (target, ", ".join(TARGETS)))
    platforms, pyver, abi = TARGETS[target]
    pip = pip or [sys.executable, "-m", "pip"]
    os.makedirs(dest_dir, exist_ok=True)
    steps = [pip + ["wheel", "--no-deps", "-w", dest_dir, project_dir]]
    reqs = [r for r in (metadata.distribution(PROJECT).requires or ()) if "extra ==" not in r]
    plat_args = sum((["--platform", p] for p in platforms), [])
    steps.append(pip + ["download", "--only-binary=:all:", "--python-version", pyver, "--implementation", "cp",
                        "--abi", abi, "--abi", "abi3", "--abi", "none"] + plat_args + ["-d", dest_dir] + reqs)
    steps.append(pip + ["download", "--only-binary=:all:", "--no-deps", "-d", dest_dir, "pip"])
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise WheelhouseError("%s failed:\n%s" % (" ".join(cmd[:4]), proc.stderr[-2000:]))
    return sorted(os.path.join(dest_dir, n) for n in os.listdir(dest_dir) if n.endswith(".whl"))
