"""What travels over a serial line, as pure objects the serial adapter drives.

A protocol takes the bytes that arrived (``feed(data, now)``) and returns ``(sensor_or_None, [Measurement])``
pairs; decode errors are counted in ``errors`` by reason, never raised to the adapter (which copies them into its
counters as ``error.<reason>``). ``poll(now)`` returns bytes to write (a Modbus request) or ``None``; the adapter
calls it at least every ``poll_interval`` seconds and after every ``feed``. ``reset()`` (optional) is called each
time the port is (re)opened. No IO and no clock here: the adapter passes ``now`` (monotonic seconds).

Every protocol is built from its ``[[sources]]`` table by ``from_spec(spec)``; ``PROTOCOLS`` is the table
``make_protocol`` walks. See ``drivers/serial/README.md`` for the config keys and the counters.
"""

from gateway.core.errors import ConfigError, DecodeError
from drivers.serial import modbus, nmea
from drivers.serial.lines import LineDecoder, LineFramer


def _count(errors, reason, n=1):
    if n:
        errors[reason] = errors.get(reason, 0) + n


#: the largest frame a serial source will buffer: a framer fed one byte at a time copies its partial frame on each
#: byte, so the limit also bounds the work per byte
MAX_FRAME = 4096


def _number(spec, key, default, minimum=0.0, maximum=None):
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > minimum:
        raise ConfigError("must be a number greater than %g, got %r" % (minimum, value), key=key)
    if maximum is not None and value > maximum:
        raise ConfigError("must be at most %g, got %r" % (maximum, value), key=key)
    return value


DAY = 86400.0


class LinesProtocol:
    """``key=value`` or CSV lines (``drivers/serial/lines.py``). Errors: the decoder's reasons plus ``overlong``."""

    kind = "lines"
    #: the keys of its ``[[sources]]`` table: None (the protocol checks it), (min, max), or a nested table
    KEYS = {"mode": None, "columns": None, "units": None, "max_line": (1, MAX_FRAME)}
    poll_interval = 0.5

    def __init__(self, mode="kv", columns=None, units=None, max_line=256):
        self.framer = LineFramer(max_line)
        self.decoder = LineDecoder(mode, columns, units)
        self.errors = {}

    @classmethod
    def from_spec(cls, spec):
        return cls(spec.get("mode", "kv"), spec.get("columns"), spec.get("units"),
                   int(_number(spec, "max_line", 256, 0, MAX_FRAME)))

    def feed(self, data, now=None):
        out = []
        before = self.framer.overlong
        for line in self.framer.feed(data):
            try:
                out.append(self.decoder.decode(line))
            except DecodeError as exc:
                _count(self.errors, exc.reason)
        _count(self.errors, "overlong", self.framer.overlong - before)
        return out

    def poll(self, now):
        return None


class NmeaProtocol:
    """NMEA 0183 from a GNSS receiver (``drivers/serial/nmea.py``): one ``(None, measurements)`` pair per decoded
    sentence of the kinds in ``sentences``; the source's name becomes the sensor id.

    ``errors`` holds the reader's reasons (``bad_checksum``, ``garbage`` (bytes), ``truncated``, ``overlong``,
    ``no_checksum``, ``malformed``, ``bad_field``). Sentence types we do not decode (GSV, TXT, proprietary ...) are
    normal traffic, not errors: they are counted in ``ignored``.
    """

    kind = "nmea"
    KEYS = {"sentences": None, "max_len": (9, MAX_FRAME)}
    poll_interval = 0.5

    def __init__(self, sentences=None, max_len=nmea.MAX_SENTENCE):
        self.reader = nmea.NmeaReader(max_len)
        known = sorted(kind for _, kind in nmea.DECODERS.values())
        wanted = [s.upper() for s in (sentences or nmea.DEFAULT_SENTENCES)]
        bad = [s for s in wanted if s not in known]
        if bad:
            raise ConfigError("unknown sentence type(s) %s (known: %s)" % (", ".join(bad), ", ".join(known)),
                              key="sentences")
        self.sentences = frozenset(wanted)

    @classmethod
    def from_spec(cls, spec):
        sentences = spec.get("sentences")
        if sentences is not None and (not isinstance(sentences, list)
                                      or not all(isinstance(s, str) for s in sentences)):
            raise ConfigError("must be a list of sentence types such as [\"GGA\", \"RMC\"]", key="sentences")
        return cls(sentences, int(_number(spec, "max_len", nmea.MAX_SENTENCE, 9, MAX_FRAME)))

    @property
    def errors(self):
        return {k: v for k, v in self.reader.counters.items() if k != "ignored"}

    @property
    def ignored(self):
        return self.reader.counters.get("ignored", 0)

    @property
    def utc(self):
        """GPS date and time of the last RMC (for a caller that wants GPS time), or None."""
        return self.reader.utc

    def feed(self, data, now=None):
        return [(None, list(s.measurements)) for s in self.reader.feed(data)
                if s.kind in self.sentences and s.measurements]

    def poll(self, now):
        return None


class Slave:
    """One configured Modbus slave: its id, its sensor name and the requests that read its register map."""

    __slots__ = ("id", "name", "polls")

    def __init__(self, slave_id, name, polls):
        self.id = slave_id
        self.name = name
        self.polls = tuple(polls)


def char_time(baud, bytesize=8, parity="N", stopbits=1):
    """Seconds to send one character: start bit, data bits, parity bit, stop bits."""
    return (1 + bytesize + (parity != "N") + stopbits) / float(baud)


class ModbusProtocol:
    """A Modbus RTU master for one bus: polls one or several slaves from their register maps.

    * One request outstanding at a time (RTU is half duplex): ``poll`` sends the next ``Poll`` only after the
      previous one was answered or timed out, and after the bus was quiet for the 3.5-character frame gap.
    * A slave is polled every ``poll_s`` seconds (``PollScheduler``): when it is due, all its requests are queued
      (a "cycle"). A timeout, a bad CRC, a truncated answer or an exception response ends that slave's cycle and
      backs it off (``backoff_s`` doubling up to ``backoff_max_s``, never more often than ``poll_s``); the other
      slaves keep their own schedule, so a dead slave never stops the healthy ones.
    * The response timeout of a request is its transmission time at the configured line settings (request plus
      the longest answer) plus a turnaround allowance of ``max(0.25 s, 50 characters)``, unless ``timeout_s``
      sets it.

    ``errors`` counts each failure twice: by reason (``timeout``, ``bad_crc``, ``truncated``, ``exception_<code>``,
    ``short_read``) and per slave (``slave<id>.<reason>``), plus bus-level ``garbage`` (bytes skipped while hunting
    for an answer) and ``unexpected`` (bytes that arrived with no request outstanding, e.g. a late answer).
    """

    kind = "modbus"
    KEYS = {"poll_s": (0.01, DAY), "timeout_s": (0.001, 3600.0), "backoff_s": (0.001, DAY),
            "backoff_max_s": (0.001, DAY), "max_gap": (0, 125),
            "slaves": {"id": (1, 247), "name": None, "registers": {
                "name": None, "address": (0, 65535), "type": None, "table": None, "word_order": None, "scale": None,
                "unit": None}}}
    poll_interval = 0.02

    def __init__(self, slaves, poll_s=5.0, timeout_s=None, baud=9600, bytesize=8, parity="N", stopbits=1,
                 backoff_s=1.0, backoff_max_s=60.0):
        if not slaves:
            raise ConfigError("at least one slave is required", key="slaves")
        self.slaves = {s.id: s for s in slaves}
        self.char_time = char_time(baud, bytesize, parity, stopbits)
        self.timeout_s = timeout_s
        self.gap = max(3.5 * self.char_time, 0.00175)  # Modbus over serial line V1.02, 2.5.1.1
        self.scheduler = modbus.PollScheduler(sorted(self.slaves), poll_s, base=backoff_s, cap=backoff_max_s)
        self.framer = modbus.ResponseFramer()
        self.errors = {}
        self.requests = 0
        self.answers = 0
        self._queue = []  # Polls of the current cycles, in order
        self._current = None  # the Poll outstanding
        self._deadline = None
        self._quiet_until = None
        self._framer_seen = {}

    @classmethod
    def from_spec(cls, spec):
        name = spec.get("name") or "modbus"
        table = spec.get("slaves")
        if not isinstance(table, list) or not table or not all(isinstance(s, dict) for s in table):
            raise ConfigError("must be a non-empty array of tables like {id = 1, registers = [...]}", key="slaves")
        maps, names = {}, {}
        for i, s in enumerate(table):
            where = "slaves[%d]" % i
            sid = s.get("id")
            if isinstance(sid, bool) or not isinstance(sid, int) or not 1 <= sid <= 247:
                raise ConfigError("id must be an integer 1..247, got %r" % (sid,), key=where + ".id")
            if sid in maps:
                raise ConfigError("slave id %d appears twice" % sid, key=where + ".id")
            regs = s.get("registers")
            if not isinstance(regs, list) or not regs or not all(isinstance(r, dict) for r in regs):
                raise ConfigError("must be a non-empty array of tables", key=where + ".registers")
            entries = [modbus.RegisterEntry.from_dict(r, key=where + ".registers") for r in regs]
            seen = set()
            for e in entries:
                if e.name in seen:
                    raise ConfigError("register name %r appears twice" % e.name, key=where + ".registers")
                seen.add(e.name)
            maps[sid] = entries
            slave_name = s.get("name", "%s-slave%d" % (name, sid))
            if not isinstance(slave_name, str) or not slave_name:
                raise ConfigError("must be a non-empty string", key=where + ".name")
            names[sid] = slave_name
        polls = modbus.plan_polls(maps, max_gap=int(spec.get("max_gap", 0)))
        slaves = [Slave(sid, names[sid], [p for p in polls if p.slave == sid]) for sid in maps]
        timeout = spec.get("timeout_s")
        return cls(slaves, poll_s=_number(spec, "poll_s", 5.0),
                   timeout_s=None if timeout is None else _number(spec, "timeout_s", 0),
                   baud=int(_number(spec, "baud", 9600)), bytesize=int(spec.get("bytesize", 8)),
                   parity=str(spec.get("parity", "N")), stopbits=int(spec.get("stopbits", 1)),
                   backoff_s=_number(spec, "backoff_s", 1.0), backoff_max_s=_number(spec, "backoff_max_s", 60.0))

    def response_timeout(self, poll):
        """Seconds to wait for the answer to ``poll`` after writing its request."""
        if self.timeout_s is not None:
            return self.timeout_s
        wire = (8 + poll.count * 2 + 5) * self.char_time
        return wire + max(0.25, 50 * self.char_time)

    # -- bookkeeping ----------------------------------------------------------------------------------------
    def _fail(self, poll, reason, now):
        _count(self.errors, reason)
        _count(self.errors, "slave%d.%s" % (poll.slave, reason))
        self.scheduler.failure(poll.slave, now, reason)
        self._queue = [p for p in self._queue if p.slave != poll.slave]  # end this slave's cycle
        self._end(now)

    def _end(self, now):
        self._current = None
        self._deadline = None
        self._quiet_until = now + self.gap

    def _sync_framer_counters(self):
        for src, dst in (("skipped", "garbage"), ("unexpected", "unexpected")):
            n = self.framer.counters.get(src, 0)
            _count(self.errors, dst, n - self._framer_seen.get(src, 0))
            self._framer_seen[src] = n

    # -- the protocol interface ---------------------------------------------------------------------------
    def reset(self):
        """The port was (re)opened: a transaction cut by the port going away is nobody's fault; start afresh."""
        if self._current is not None:
            self.framer.timeout()
        self._current = self._deadline = self._quiet_until = None
        self._queue = []

    def feed(self, data, now):
        out = []
        poll = self._current
        try:
            response = self.framer.feed(data)
        except modbus.ModbusException as exc:
            self._sync_framer_counters()
            self._fail(poll, exc.reason, now)
            return out
        self._sync_framer_counters()
        if response is None:
            return out
        try:
            measurements = poll.decode(response)
        except DecodeError as exc:
            self._fail(poll, exc.reason, now)
            return out
        self.answers += 1
        self._end(now)
        if not any(p.slave == poll.slave for p in self._queue):
            self.scheduler.success(poll.slave, now)
        if measurements:
            out.append((self.slaves[poll.slave].name, measurements))
        return out

    def poll(self, now):
        if self._current is not None:
            if now < self._deadline:
                return None
            self._fail(self._current, self.framer.timeout().reason, now)
        if self._quiet_until is not None and now < self._quiet_until:
            return None
        if not self._queue:
            for sid in self.scheduler.due(now):
                self._queue.extend(self.slaves[sid].polls)
            if not self._queue:
                return None
        poll = self._current = self._queue.pop(0)
        self._deadline = now + self.response_timeout(poll)
        self.framer.expect(poll.request())
        self.requests += 1
        return poll.request().encode()


PROTOCOLS = {"lines": LinesProtocol, "nmea": NmeaProtocol, "modbus": ModbusProtocol}


def make_protocol(spec):
    """Build a protocol from a source's config table (``protocol = "lines"`` plus its options). A ``ConfigError``
    names the key inside the table (``slaves[0].id``); the caller puts ``sources[N].`` in front."""
    kind = spec.get("protocol", "lines")
    if kind not in PROTOCOLS:
        raise ConfigError("unknown serial protocol %r (known: %s)" % (kind, ", ".join(sorted(PROTOCOLS))),
                          key="protocol")
    return PROTOCOLS[kind].from_spec(spec)
