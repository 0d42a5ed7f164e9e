"""The running agent's part in updates (docs/operations.md, "Updating gateways"): it reports, proves, and stages.

* **Report.** At start, the running version, the previous one and the last update's outcome go upstream as health
  records (``health/update.running``, ``update.previous``, ``update.outcome``; text values); an outcome the agent
  has not reported yet (``update-outcome``'s id differs from ``update-reported``) also becomes an event record
  ``<gw>/update/<version>`` with ``vs`` ``"<outcome>: ..."``, and when that outcome is a switch or a rollback it is
  the reason of this start (restart reason ``update``). Outcomes written while the agent runs (a staged bundle the
  updater refused) are picked up every ``POLL_S``.
* **Prove.** While this version is on trial (the ``trial`` file names it), its first acknowledged delivery writes
  ``update-proven`` and reports ``kept``. Without one within ``update.prove_s`` it writes ``update-unproven``,
  reports it and stops (exit 75, so systemd starts the unit again): the supervisor then brings the previous
  version back.
* **Stage.** The console's ``update FILE`` and the signed ``update`` command (bundle fetched from a URL, resumed,
  digest checked) verify the bundle as far as the agent can (signature, admission), copy it into
  ``<state>/update/`` and write ``update/request``; the root updater unit (``edge-gateway-update.path``) installs
  it. The agent itself never writes outside its state directory.
"""

import asyncio
import logging
import os
import re
import shutil

from gateway import __version__
from gateway.adapters.files import write_atomic
from gateway.adapters.versions import PROVEN, REPORTED, REQUEST, UNPROVEN, Layout
from gateway.core.model import Event, Reading
from gateway.core.pipeline import HEALTH_SENSOR
from gateway.core.update import UpdateError, admit

log = logging.getLogger(__name__)

POLL_S = 5.0
SENSOR = "update"
#: outcomes that are why the agent (re)started
RESTARTING = ("switched", "rolled_back")
BUNDLE_RE = re.compile(r"^bundle-[0-9.]{1,30}\.tar$")


def describe(outcome):
    """One line for the console, doctor and the records: ``rolled_back 0.1.2 -> 0.1.1: not proven ...``."""
    if not outcome:
        return None
    text = "%s %s" % (outcome.get("outcome", "?"), outcome.get("version") or "?")
    if outcome.get("previous"):
        text += " (from %s)" % outcome["previous"] if outcome.get("outcome") != "rolled_back" else \
            " -> %s" % outcome["previous"]
    return text + (": " + outcome["reason"] if outcome.get("reason") else "")


def summary(layout):
    """What ``status``, doctor and the health records say about versions: a dict."""
    trial = layout.trial()
    on_trial = bool(trial and trial.get("version") == __version__ and trial.get("target") == layout.current())
    return {"running": __version__, "previous": layout.version_of(layout.previous()),
            "last": describe(layout.outcome()), "on_trial": on_trial,
            "proven": layout.marker(PROVEN) == __version__}


def unreported(layout):
    """The outcome not yet reported (a dict), or None."""
    outcome = layout.outcome()
    if not outcome or not outcome.get("id") or outcome.get("id") == layout.marker(REPORTED):
        return None
    return outcome


def restart_note(layout):
    """The restart reason's detail when an update (or its rollback) is why this start happens, else None."""
    outcome = unreported(layout)
    return describe(outcome) if outcome and outcome.get("outcome") in RESTARTING else None


class UpdateWatch:
    """Reports outcomes and runs this version's trial (see the module docstring)."""

    def __init__(self, agent, layout, prove_s, request_restart):
        self.agent = agent
        self.layout = layout
        self.prove_s = prove_s
        self.request_restart = request_restart
        self.info = summary(layout)
        self._proving = None

    def report_start(self):
        info, now = self.info, self.agent.clock.monotonic()
        for name in ("running", "previous", "last"):
            if info[name]:
                key = "update.outcome" if name == "last" else "update." + name
                self.agent.emit(Reading(HEALTH_SENSOR, key, info[name][:200], None, now))
        self._report_new()

    def _report_new(self):
        outcome = unreported(self.layout)
        if outcome is None:
            return
        self._event(outcome.get("version") or "unknown", outcome.get("outcome", "?"), describe(outcome))
        self.layout.write_marker(REPORTED, outcome["id"])
        self.info["last"] = describe(outcome)

    def _event(self, version, state, text):
        (log.info if state in ("switched", "kept") else log.warning)("update: %s", text)
        self.agent.emit(Event(SENSOR, version, state, text[:480], self.agent.clock.monotonic()))
        self.agent.cut()

    def on_sent(self, batch):
        """The first acknowledged delivery of a version on trial proves it (called on the loop)."""
        if self.info["on_trial"] and not self.info["proven"] and self._proving is None:
            self._proving = asyncio.get_running_loop().run_in_executor(None, self.layout.write_marker, PROVEN,
                                                                       __version__)
            self._proving.add_done_callback(self._proved)

    def _proved(self, future):
        if future.exception() is not None:
            log.error("update: cannot write the proof marker: %s", future.exception())
            self._proving = None
            return
        self.info["proven"] = True
        self._event(__version__, "kept", "kept %s: proved itself (a batch delivered %.0f s after start)"
                    % (__version__, self.agent.clock.monotonic() - self.agent.started))

    async def run(self):
        clock, deadline = self.agent.clock, self.agent.clock.monotonic() + self.prove_s
        while True:
            await clock.sleep(POLL_S if not self.info["on_trial"] or self.info["proven"]
                              else max(0.05, min(POLL_S, deadline - clock.monotonic())))
            await asyncio.get_running_loop().run_in_executor(None, self._report_new)
            if self.info["on_trial"] and not self.info["proven"] and self._proving is None \
                    and clock.monotonic() >= deadline:
                self.layout.write_marker(UNPROVEN, __version__)
                self._event(__version__, "unproven", "%s delivered nothing within update.prove_s (%d s): stopping "
                            "so the supervisor restores %s" % (__version__, self.prove_s, self.info["previous"]))
                self.request_restart()
                return


def start_update_watch(agent, cfg, request_restart):
    """Report at start and run the trial; returns the task (None when ``update.base`` holds no install: a demo, a
    checkout)."""
    layout = Layout(cfg.update.base, cfg.gateway.state_dir)
    watch = UpdateWatch(agent, layout, cfg.update.prove_s, request_restart)
    agent.update_info = watch.info
    try:
        watch.report_start()
    except OSError as exc:
        log.error("update: cannot record the reported outcome: %s", exc)
    if not layout.installed():
        return None
    previous = agent.on_sent

    def on_sent(batch):
        watch.on_sent(batch)
        if previous is not None:
            previous(batch)
    agent.on_sent = on_sent
    if watch.info["on_trial"] and not watch.info["proven"]:
        log.warning("update: %s is on trial: it must deliver a batch within %d s", __version__, cfg.update.prove_s)
    task = asyncio.create_task(watch.run(), name="update")
    return task


# -- staging (the console and the downlink; the root updater installs) ------------------------------------------
def stage(cfg, path):
    """Check bundle ``path`` as far as the agent can and hand it to the updater; returns what was done."""
    from gateway.adapters.update_bundle import read_manifest
    from gateway.app.update_install import operators_for, running_version
    layout = Layout(cfg.update.base, cfg.gateway.state_dir)
    manifest, _ = read_manifest(path, operators_for(cfg))
    admit(manifest, running_version(layout), cfg.update.pin)
    folder = layout.stage_dir()
    os.makedirs(folder, mode=0o700, exist_ok=True)
    name = "bundle-%s.tar" % manifest.version
    target = os.path.join(folder, name)
    if os.path.abspath(path) != target:
        shutil.copyfile(path, target + ".tmp")
        with open(target + ".tmp", "rb+") as f:
            os.fsync(f.fileno())
        os.replace(target + ".tmp", target)
    write_atomic(os.path.join(folder, REQUEST), name + "\n", 0o600)
    return "bundle %s verified (replaces %s, key %s); staged for the updater" % (
        manifest.version, running_version(layout), manifest.kid)


def fetch_and_stage(config_path, url, sha256):
    """The signed ``update`` command: fetch (resuming), check the digest, stage."""
    from gateway.adapters.update_fetch import fetch
    from gateway.app.config import load
    cfg = load(config_path)
    folder = Layout(cfg.update.base, cfg.gateway.state_dir).stage_dir()
    os.makedirs(folder, mode=0o700, exist_ok=True)
    path, got = fetch(url, os.path.join(folder, "download.tar"), str(sha256).lower(), ca_file=cfg.uplink.ca_file)
    try:
        return "fetched %d bytes; %s" % (got, stage(cfg, path))
    finally:
        os.unlink(path)


def staged_request(cfg):
    """The updater's side: the staged bundle's path (the request is consumed), or None."""
    folder = Layout(cfg.update.base, cfg.gateway.state_dir).stage_dir()
    request = os.path.join(folder, REQUEST)
    try:
        with open(request) as f:
            name = f.read(100).strip()
    except FileNotFoundError:
        return None
    os.unlink(request)
    if not BUNDLE_RE.match(name):
        raise UpdateError("update request %s names %r, not a staged bundle" % (request, name[:40]), "malformed")
    return os.path.join(folder, name)
