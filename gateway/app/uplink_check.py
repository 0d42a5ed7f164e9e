"""Apply, check, keep or revert: a signed ``config_set`` of an ``uplink.*`` key (docs/operations.md, "Changing the
uplink from afar").

A wrong uplink would cut the very channel that could undo it, so such a change is applied on probation:

1. the new config is validated and its uplink built (a value the validation refuses fails the command, nothing
   changes);
2. the **pending-check marker** (``downlink-check.json`` in the state directory, 0600: the op_seq, the key, and
   the whole previous config file) is written durably, then the new config file (``config.toml.bak`` keeps the
   old one, as the console does);
3. the agent sends through the new uplink (``Agent.replace_uplink``), wrapped in ``CheckedUplink``: while on
   probation a rejection (4xx) is taken as a failure of the uplink, not of the batch, so nothing is quarantined
   by an uplink that is about to be reverted. A ``checking`` outcome record is cut at once, so there is
   something to deliver even on a quiet gateway;
4. **keep**: a batch is acknowledged through the new uplink within ``downlink.check_s`` (default 60 s): the marker
   goes, the old uplink is closed, the outcome is ``applied``;
   **revert**: otherwise the previous config file is written back, the old uplink (still open) takes over again,
   the marker goes, the outcome is ``reverted`` with the last error of the new uplink. What was queued meanwhile is
   delivered through the old one.

A power cut or a kill during the check leaves the marker: at the next start, before the uplink is built,
``recover`` writes the previous config back and the outcome is ``reverted`` (the check was never passed). So the
gateway comes back on the old config, or on the new one only after it was proven; never without a working one.
"""

import asyncio
import json
import logging
import os

from gateway.adapters import files
from gateway.adapters.uplink import SectionError, build_uplink
from gateway.adapters.uplink.base import Uplink
from gateway.core.errors import ConfigError, GatewayError, UplinkError

log = logging.getLogger(__name__)

MARKER = "downlink-check.json"
#: uplink keys the agent applies live (no connection changes): they need no check
UNCHECKED = ("uplink.backoff_min_s", "uplink.backoff_max_s")
POLL_S = 0.2  # how often the check looks for an acknowledgement


class Reverted(GatewayError):
    """The change was undone; the message says why."""

    reason = "reverted"


def needs_check(key):
    return isinstance(key, str) and key.startswith("uplink.") and key not in UNCHECKED


class CheckedUplink(Uplink):
    """The new uplink while its check runs (``probation``), and after it is kept. Counts acknowledgements; on
    probation a non-retryable error becomes a retryable one (the batch stays queued for the old uplink)."""

    def __init__(self, inner):
        self.inner = inner
        self.kind = inner.kind
        self.downlink = inner.downlink
        self.probation = True
        self.acked = 0
        self.last_error = None

    @property
    def command_sink(self):
        return self.inner.command_sink

    def set_command_sink(self, sink):
        self.inner.set_command_sink(sink)

    def send(self, batch):
        try:
            status = self.inner.send(batch)
        except UplinkError as exc:
            self.last_error = str(exc)
            if exc.retryable or not self.probation:
                raise
            raise UplinkError("%s (the uplink is on probation: the batch stays queued)" % exc, retryable=True,
                              retry_after=exc.retry_after, status=exc.status) from exc
        self.acked += 1
        return status

    def close(self):
        self.inner.close()

    def describe(self):
        return self.inner.describe()

    def probe(self, timeout, monotonic=None):
        return self.inner.probe(timeout) if monotonic is None else self.inner.probe(timeout, monotonic)


def marker_path(state_dir):
    return os.path.join(state_dir, MARKER)


def _read_marker(path):
    try:
        with open(path, "rb") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError("pending uplink check %s cannot be read (%s): check the config, then delete the file"
                          % (path, exc)) from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), str):
        raise ConfigError("pending uplink check %s holds no previous config: check the config, then delete the "
                          "file" % path)
    return doc


def recover(cfg, load):
    """At start-up, before the uplink is built: if a check was under way when the agent stopped, put the previous
    config back. Returns ``(cfg, reverted)``: the config to run (reloaded with ``load(path)`` when restored) and
    the marker's contents for ``report_recovered`` (None when there was nothing to do)."""
    path = marker_path(cfg.gateway.state_dir)
    doc = _read_marker(path)
    if doc is None:
        return cfg, None
    if cfg.file:
        mode = os.stat(cfg.file).st_mode & 0o777
        files.write_atomic(cfg.file, doc["config"], mode)
        log.warning("downlink: the agent stopped while checking %s = %s (op_seq %s): the previous config %s is "
                    "back", doc.get("key"), doc.get("value"), doc.get("op_seq"), cfg.file)
        cfg = load(cfg.file)
    os.unlink(path)
    return cfg, doc


def report_recovered(report, doc):
    """The ``reverted`` outcome of a check a stop interrupted (``report(op_seq, state, text, digest)``)."""
    if doc:
        report(doc.get("op_seq"), "reverted", "%s: the agent stopped during the check; the previous config is back"
               % doc.get("what", "config_set"), doc.get("digest"))


class UplinkCheck:
    """What a checked change needs: the agent, the console's view (config file), the state directory and the
    bounded time. ``run`` is the coroutine the downlink's ``config_set`` awaits for an uplink key."""

    def __init__(self, agent, view, state_dir, check_s):
        self.agent = agent
        self.view = view
        self.marker = marker_path(state_dir)
        self.check_s = check_s

    def _prepare(self, key, text, record):
        """Off the loop: validate, build the new uplink, write the marker, then the new config."""
        from gateway.app.config import from_dict
        from gateway.app.console import settings
        raw = self.view.config_data()
        path = self.view.config_path
        new_raw, value = settings.set_key(raw, key, text, path)
        new_cfg = from_dict(new_raw, path)
        try:
            uplink = build_uplink(new_cfg.uplink)
        except SectionError as exc:
            raise ConfigError(str(exc), path, exc.key) from exc
        except (ValueError, OSError) as exc:
            raise ConfigError(str(exc), path, key) from exc
        with open(path, "rb") as f:
            old = f.read().decode("utf-8")
        shown = settings.REDACTED if settings.is_secret(key) else value
        files.write_atomic(self.marker, json.dumps(dict(record, key=key, value=str(shown), config=old)), 0o600)
        self.view.persist(new_raw)
        return uplink, old, shown

    def _restore(self, old):
        path = self.view.config_path
        files.write_atomic(path, old, os.stat(path).st_mode & 0o777)
        os.unlink(self.marker)

    async def run(self, key, text, record, checking):
        """Apply ``key = text`` on probation; returns the outcome text, or raises ``Reverted`` / ``ConfigError``.
        ``record``: what the marker keeps for the report after a power cut (op_seq, digest, what);
        ``checking(text)``: reports the non-final ``checking`` outcome."""
        loop = asyncio.get_running_loop()
        agent = self.agent
        new, old_text, shown = await loop.run_in_executor(None, self._prepare, key, text, record)
        checked = CheckedUplink(new)
        checked.set_command_sink(agent.uplink.command_sink)
        old = agent.replace_uplink(checked)
        start = agent.clock.monotonic()
        checking("%s = %s: a batch must be delivered through %s within %g s, or the previous uplink comes back"
                 % (key, shown, checked.describe(), self.check_s))
        while not checked.acked and agent.clock.monotonic() - start < self.check_s:
            await agent.clock.sleep(POLL_S)
        took = agent.clock.monotonic() - start
        if checked.acked:
            checked.probation = False
            await agent.close_uplink(old)
            await loop.run_in_executor(None, os.unlink, self.marker)
            return "saved %s = %s; checked: delivered through %s after %.1f s" % (key, shown, checked.describe(),
                                                                                   took)
        agent.replace_uplink(old)
        await agent.close_uplink(checked)
        await loop.run_in_executor(None, self._restore, old_text)
        log.warning("downlink: %s = %s reverted: nothing delivered within %g s (%s)", key, shown, self.check_s,
                    checked.last_error or "no attempt ended")
        raise Reverted("%s = %s: no batch delivered through %s within %g s (last error: %s); the previous config "
                       "and uplink %s are back" % (key, shown, checked.describe(), self.check_s,
                                                   checked.last_error or "none", old.describe()))
