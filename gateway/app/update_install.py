"""The staged install of an update bundle: beside the running version, checked, then switched to atomically and put
on trial (docs/operations.md, "Updating gateways").

``install(bundle, cfg)`` runs as root (``edge-gateway update FILE``, or the updater unit for a bundle the agent
staged), one at a time (``update.lock``), in these steps (``STEPS``):

1. ``verify``: the manifest's signature (operator keys), then ``admit``: not a downgrade, not below the bundle's
   ``min_version``, the pin. Leftovers of an interrupted install are removed.
2. ``extract``: the wheels into ``staging/<version>/``, each checked against its sha256 before it is named.
3. ``venv``: ``versions/<version>/`` (a virtualenv without pip, built under its final name: its scripts name their
   interpreter by absolute path), 4. ``pip``: the wheels into it, offline.
5. ``check``: ``--version`` says the manifest's version, the agent's modules import, and ``doctor --quick`` passes
   on the gateway's config (it still validates under the new version; the key is readable) - as the service user.
6. ``activate``: ``versions/<version>/.complete`` written (a version without it is unfinished: removed by the
   next install, never switched to).
7. ``trial``: the ``trial`` file (new and previous target, starts 0, ``max_starts``, ``prove_s``) written.
8. ``switch``: ``current`` replaced by rename; ``previous`` and ``update-outcome`` (``switched``) written.
9. ``prune``: versions other than the new and the previous removed (``install-manifest`` kept in step).

A power cut or SIGKILL before ``switch`` leaves ``current`` on the running version (the supervisor deletes a
``trial`` whose version is not ``current``); after it, the new version is on trial and the supervisor
(``deploy/supervise.sh``, the unit's ``ExecStartPre=``) brings the previous one back unless it proves itself.
The queue and the key live in the state directory, outside every version, and no step touches them.

``EDGE_GATEWAY_FAULT_KILL_AT=<step>`` makes the installer SIGKILL itself as that step begins: the fault tests use
it to show that every step is safe to lose.
"""

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

from gateway import __version__
from gateway.adapters.files import write_atomic
from gateway.adapters.update_bundle import extract, read_manifest
from gateway.adapters.versions import CURRENT, OUTCOME, TRIAL, Layout
from gateway.core.update import UpdateError, admit

STEPS = ("verify", "extract", "venv", "pip", "check", "activate", "trial", "switch", "prune")
MANIFEST = "install-manifest"
COMPLETE = ".complete"
CHECK_TIMEOUT_S = 120
IMPORTS = "import gateway.app.service, gateway.app.agent, gateway.app.downlink, drivers.sources"


def operators_for(cfg):
    """The operator keys that sign bundles: ``update.operators``, else ``downlink.operators``; {} when neither.

    As root, the file must be root's and writable by root alone: the config is the service user's (the console
    rewrites it), and a trust root that user could swap would let a compromised agent get code installed as root."""
    from gateway.adapters.operators import load_operators
    path = cfg.update.operators or cfg.downlink.operators
    if path:
        root_only(path, "update.operators")
    return load_operators(path) if path else {}


def root_only(path, key):
    """As root: refuse ``path`` unless root owns it and neither group nor others may write it."""
    if os.geteuid() != 0:
        return
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UpdateError("%s %s: %s" % (key, path, exc.strerror), "no_operators") from None
    if st.st_uid != 0 or st.st_mode & 0o022:
        raise UpdateError("%s %s must be owned by root and writable by root only (chown root: %s; chmod go-w %s)"
                          % (key, path, path, path), "no_operators")


def running_version(layout):
    """The version ``current`` points at (what the service starts), else this interpreter's."""
    return layout.version_of(layout.current()) or __version__


def _step(name, say):
    say("step %s" % name)
    if os.environ.get("EDGE_GATEWAY_FAULT_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _run(cmd, what, user=None, timeout=CHECK_TIMEOUT_S):
    if user:
        cmd = ["runuser", "-u", user, "--"] + cmd
    env = dict(os.environ, PIP_CONFIG_FILE=os.devnull, PIP_FIND_LINKS="", PYTHONNOUSERSITE="1")
    env.pop("PYTHONPATH", None)  # the new version must stand on its own, not import from a checkout
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd="/")
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UpdateError("%s: %s" % (what, exc), "check") from None
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        raise UpdateError("%s failed (exit %d): %s" % (what, proc.returncode, " / ".join(tail)), "check")
    return proc.stdout


def clean_leftovers(layout):
    """What an interrupted install left: ``staging/``, unfinished ``versions/*`` (no ``.complete``), a
    ``current.new`` link, and a ``trial`` whose version is not the one ``current`` points at (the switch never
    happened)."""
    shutil.rmtree(layout.path("staging"), ignore_errors=True)
    for name in os.listdir(layout.path("versions")) if os.path.isdir(layout.path("versions")) else ():
        target = "versions/" + name
        if target != layout.current() and not os.path.exists(layout.path(target, COMPLETE)):
            shutil.rmtree(layout.path(target), ignore_errors=True)
    for name in (CURRENT + ".new",):
        if os.path.lexists(layout.path(name)):
            os.unlink(layout.path(name))
    trial = layout.trial()
    if trial is not None and trial.get("target") != layout.current():
        layout.remove(TRIAL)


def install(bundle, cfg, python=None, user=None, say=print):
    """Install ``bundle`` for the gateway configured by ``cfg``; returns the new version. Raises ``UpdateError``
    (the reason says which check refused it); the outcome is also written to ``update-outcome``."""
    layout = Layout(cfg.update.base, cfg.gateway.state_dir)
    root_only(layout.base, "update.base")
    if not layout.installed():
        raise UpdateError("%s holds no installed agent (no 'current' link): install with deploy/install.sh first, "
                          "or set update.base" % layout.base, "install")
    with _lock(layout):
        _step("verify", say)
        manifest, previous = None, layout.current()
        try:
            manifest, _ = read_manifest(bundle, operators_for(cfg))
            admit(manifest, running_version(layout), cfg.update.pin)
        except UpdateError as exc:
            record(layout, "refused", manifest.version if manifest else "", previous, exc)
            raise
        clean_leftovers(layout)
        try:
            _stage(layout, bundle, manifest, cfg, python or _base_python(layout), user, say)
        except (UpdateError, OSError) as exc:
            shutil.rmtree(layout.path("versions", manifest.version), ignore_errors=True)
            shutil.rmtree(layout.path("staging"), ignore_errors=True)
            err = exc if isinstance(exc, UpdateError) else UpdateError(str(exc), "install")
            refused = err.reason in ("digest", "missing_file", "extra_file")  # the bundle, not the gateway
            record(layout, "refused" if refused else "failed", manifest.version, previous, err)
            raise err from None
        target = "versions/" + manifest.version
        _step("trial", say)
        layout.write(TRIAL, {"version": manifest.version, "target": target, "previous": previous, "starts": 0,
                             "max_starts": cfg.update.max_starts, "prove_s": int(cfg.update.prove_s)})
        _step("switch", say)
        layout.switch(target)
        layout.set_previous(previous)
        record(layout, "switched", manifest.version, previous, None)
        _note_manifest(layout, add=["t\t/opt/edge-gateway/" + target])
        _step("prune", say)
        prune(layout, keep=(target, previous))
        shutil.rmtree(layout.path("staging"), ignore_errors=True)
    say("switched to %s (previous: %s); on trial until it delivers a batch (update.prove_s %d s, %d starts)"
        % (manifest.version, previous, cfg.update.prove_s, cfg.update.max_starts))
    return manifest.version


def _stage(layout, bundle, manifest, cfg, python, user, say):
    version = manifest.version
    staging = layout.path("staging", version)
    _step("extract", say)
    wheels = extract(bundle, manifest, staging)
    pip = next(w for w in wheels if os.path.basename(w).startswith("pip-"))
    venv = layout.path("versions", version)
    _step("venv", say)
    os.makedirs(layout.path("versions"), mode=0o755, exist_ok=True)
    if os.path.lexists(venv):  # an earlier install of this version, since rolled back (not current: admitted)
        shutil.rmtree(venv)
    _run([python, "-m", "venv", "--without-pip", venv], "creating the virtualenv with %s" % python)
    _step("pip", say)
    try:
        _run([venv + "/bin/python", pip + "/pip", "install", "--quiet", "--no-index", "--find-links", staging,
              "--no-cache-dir", "--disable-pip-version-check", "edge-gateway==" + version], "pip install")
    except UpdateError as exc:
        raise UpdateError(str(exc), "install") from None
    _step("check", say)
    out = _run([venv + "/bin/edge-gateway", "--version"], "edge-gateway --version", user)
    if out.strip() != "edge-gateway " + version:
        raise UpdateError("the new venv says %r, the manifest %s" % (out.strip()[:60], version), "check")
    _run([venv + "/bin/python", "-c", IMPORTS], "importing the agent", user)
    _run([venv + "/bin/edge-gateway", "doctor", "--quick", "--config", cfg.file], "doctor --quick", user)
    _step("activate", say)
    write_atomic(os.path.join(venv, COMPLETE), "", 0o644)


def _base_python(layout):
    """The interpreter the running version's venv was made from (its ``pyvenv.cfg``), else this one's base."""
    from gateway.adapters.versions import parse_fields, read_small
    home = parse_fields(read_small(layout.path(CURRENT, "pyvenv.cfg"))).get("home")
    for name in ("python3", "python"):
        if home and os.access(os.path.join(home, name), os.X_OK):
            return os.path.join(home, name)
    return getattr(sys, "_base_executable", sys.executable)


def record(layout, outcome, version, previous, exc):
    """The ``update-outcome`` file the agent reports upstream (a fresh id: reported once)."""
    layout.write(OUTCOME, {"id": "%d-%s" % (int(time.time()), uuid.uuid4().hex[:8]), "outcome": outcome,
                           "version": version or "", "previous": layout.version_of(previous) or "",
                           "reason": ("%s: %s" % (exc.reason, exc)).replace("\n", " ")[:400] if exc else ""})


def rollback(cfg, reason="by hand (edge-gateway update --rollback)"):
    """Switch ``current`` back to ``previous`` now; returns ``(from, to)`` versions."""
    layout = Layout(cfg.update.base, cfg.gateway.state_dir)
    with _lock(layout):
        cur, prev = layout.current(), layout.previous()
        if not prev or not os.path.isfile(layout.path(prev, "bin", "edge-gateway")):
            raise UpdateError("no previous version to go back to (%s)" % (prev or "none recorded"), "install")
        layout.write(OUTCOME, {"id": "%d-%s" % (int(time.time()), uuid.uuid4().hex[:8]), "outcome": "rolled_back",
                               "version": layout.version_of(cur) or "", "previous": layout.version_of(prev) or "",
                               "reason": reason})
        layout.switch(prev)
        layout.set_previous(cur)
        layout.remove(TRIAL)
    return layout.version_of(cur), layout.version_of(prev)


def prune(layout, keep):
    """Remove installed versions other than ``keep`` (targets), and their lines in ``install-manifest``."""
    gone = []
    for folder in ("versions", "venvs"):
        if not os.path.isdir(layout.path(folder)):
            continue
        for name in os.listdir(layout.path(folder)):
            target = "%s/%s" % (folder, name)
            if target not in keep:
                shutil.rmtree(layout.path(folder, name), ignore_errors=True)
                gone.append("t\t/opt/edge-gateway/" + target)
    _note_manifest(layout, remove=gone)


def _note_manifest(layout, add=(), remove=()):
    """Keep ``install-manifest`` (what uninstall.sh removes) in step with the versions on disk."""
    path = layout.path(MANIFEST)
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return
    lines = [l for l in lines if l not in remove]
    for entry in ("f\t/opt/edge-gateway/" + n for n in ("previous", TRIAL, OUTCOME, "update.lock")):
        if entry not in lines:
            lines.append(entry)
    if "t\t/opt/edge-gateway/staging" not in lines:
        lines.append("t\t/opt/edge-gateway/staging")
    lines += [a for a in add if a not in lines]
    write_atomic(path, "\n".join(lines) + "\n", 0o600)


class _lock:
    """One update at a time (``update.lock`` in the base, ``flock``; released by the kernel if we die)."""

    def __init__(self, layout):
        self.path = layout.path("update.lock")

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise UpdateError("another update is running (%s is locked)" % self.path, "busy") from None
        return self

    def __exit__(self, *exc):
        os.close(self.fd)
