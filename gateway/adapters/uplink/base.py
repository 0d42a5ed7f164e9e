"""The uplink contract: one abstract base for the role (as bleak has one per backend role), one file per uplink.

An uplink delivers signed batches to a backend (Telegraf's outputs: connect/write/close). A new one is a module
in this folder with a subclass of ``Uplink`` and one row in the registry (``gateway/adapters/uplink/__init__.py``);
nothing else in the gateway names a kind. What a subclass provides:

* ``kind`` (the config's ``uplink.kind``) and ``schemes`` (the URL schemes ``from_url`` takes);
* ``check_section(section)``: validate the typed ``[uplink]`` section at config load (``SectionError``);
* ``from_section(section)`` and ``from_url(url, timeout=..., retry_max_s=...)``: build itself;
  ``config_from_url(url)``: the ``[uplink]`` table ``provision`` writes for a URL;
* ``send(batch)``: deliver one ``EncodedBatch``; returns on acknowledgement, raises ``UplinkError(retryable=...)``;
* ``close()``; ``describe()``: where it sends, credentials redacted (``gateway.core.redact``);
* ``downlink`` and ``set_command_sink(sink)``: how signed commands reach the gateway over this uplink, if at all
  (``""`` none; ``"answer"``: in the answers to its sends, handed to ``sink(list of bytes)``; ``"subscribe"``: a
  subscriber of its own, ``gateway.adapters.downlink_mqtt``);
* ``transport(section)``: the offline check (plain text to a host off this machine is a WARN) that doctor,
  provision and the daemon share; ``probe(timeout)``: one real round trip for doctor and the console.
Both answer a ``Probe``.
"""

import abc
import time
import zlib
from dataclasses import dataclass

OK, WARN, FAIL = "ok", "warn", "fail"
#: zlib's default level: ~10 % fewer bytes than level 1 for well under 1 ms more per 1,000 readings
DEFLATE_LEVEL = 6


def deflated(data, level=DEFLATE_LEVEL):
    """``data`` as a zlib stream (HTTP's ``deflate`` coding) when that is smaller, else None: the one compressor
    of the uplinks. What is signed is never touched; this is the hop's coding of the signed bytes."""
    packed = zlib.compress(data, level)
    return packed if len(packed) < len(data) else None


@dataclass(frozen=True, slots=True)
class Probe:
    """What a transport check or a round trip found: ``status`` (``OK``, ``WARN``, ``FAIL``), a message with
    credentials redacted, a fix hint for WARN and FAIL, and how long the round trip took."""
    status: str
    message: str
    fix: str = ""
    latency_s: float = 0.0

    @property
    def ok(self):
        return self.status != FAIL


class SectionError(ValueError):
    """The ``[uplink]`` section cannot build this uplink; ``key`` names the key (``uplink.url``)."""

    def __init__(self, message, key="uplink"):
        super().__init__(message)
        self.key = key


class Uplink(abc.ABC):
    """connect/send/close. ``send`` blocks; the agent runs it in a worker thread."""

    kind = "uplink"
    #: about how many bytes one batch costs on the link besides its (deflated) body: the batcher's byte budget
    #: counts them as part of every batch's fixed cost (``gateway.core.batcher``)
    frame_bytes = 0
    schemes = ()  # URL schemes ``from_url`` takes
    #: how commands come down this uplink: "" (they cannot), "answer" (in the answers to ``send``, given to the
    #: sink), "subscribe" (a subscriber of its own on the same broker: ``gateway.adapters.downlink_mqtt``)
    downlink = ""
    command_sink = None

    def set_command_sink(self, sink):
        """``sink(commands)`` (a list of bytes, called on the sending thread, must not block) gets the commands
        the upstream hands over in its answers; only an uplink whose ``downlink`` is ``"answer"`` calls it."""
        self.command_sink = sink

    @classmethod
    def check_section(cls, section):
        """Raise ``SectionError`` when the typed ``[uplink]`` section cannot describe this uplink (config load)."""

    @classmethod
    def from_section(cls, section):
        """Build from the validated ``[uplink]`` section (``gateway.app.config.UplinkSection``). Raises
        ``SectionError`` for a missing key, ``ValueError`` or ``OSError`` for a value it cannot use. Every
        registered uplink overrides it (``tests/integration/test_uplink_directory.py`` checks); a test double need not."""
        raise SectionError("the %s uplink cannot be configured from a file" % cls.kind)

    @classmethod
    def from_url(cls, url, timeout=10.0, retry_max_s=None):
        """Build from a URL of one of ``schemes`` (``demo --uplink``). ``retry_max_s``: the longest wait between
        the uplink's own reconnect attempts (None: its default)."""
        raise ValueError("the %s uplink takes no URL" % cls.kind)

    @classmethod
    def config_from_url(cls, url, ca_file=None):
        """The ``[uplink]`` table (a plain dict, as TOML holds it) that configures this uplink for ``url``: what
        ``provision --uplink URL`` writes. ``ValueError`` when the URL is not one of this uplink's."""
        table = {"kind": cls.kind, "url": url}
        if ca_file:
            table["ca_file"] = ca_file
        return table

    @abc.abstractmethod
    def send(self, batch):
        """Deliver one ``EncodedBatch``. Returns when the upstream acknowledged it; raises ``UplinkError``."""

    def close(self):
        """Release connections. Safe to call twice."""

    def describe(self):
        """Where this uplink sends, for logs and status, with credentials redacted."""
        return self.kind

    @classmethod
    def transport(cls, section):
        """Offline: is this configuration safe on the path (``Probe``)? No network, no files."""
        return Probe(OK, "%s uplink" % cls.kind)

    def probe(self, timeout, monotonic=time.monotonic):
        """One real round trip to the upstream within ``timeout`` seconds (``Probe``); never raises for network
        trouble."""
        return Probe(FAIL, "no round trip is defined for uplink %s" % self.describe())
