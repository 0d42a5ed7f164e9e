"""Modbus RTU master, the pure part: CRC, read requests, an incremental response framer, register maps, a polling
planner and a per-slave backoff scheduler. No IO and no clock (house style, habit 1): the serial adapter writes
``request.encode()``, feeds what it reads to ``ResponseFramer.feed`` and passes ``now`` to the scheduler.

Why our own framing instead of pymodbus or minimalmodbus: pymodbus 3.16.1 (a 168 kB wheel, measured with
``pip download``, with its own asyncio serial transport) would be a second serial stack beside the one pyserial
adapter every serial source shares, and its client owns the port and the timing; minimalmodbus 2.1.1 (32 kB) is
blocking and also owns the port, which does not fit our asyncio source. The part we need (read coils, discrete
inputs, holding and input registers: functions 1 to 4) is this module: pure code that the fuzz tests drive with
hundreds of thousands of inputs, and that also serves the simulated slave. pymodbus serves as the independent
slave in ``tests/integration/test_modbus_pymodbus.py``.

RTU frames carry no delimiter (the 3.5-character silence does not survive a USB serial adapter), so the framer
knows the outstanding request and therefore the answer's length: ``5 + byte count`` bytes for a normal answer
(``2 * count`` for registers, ``ceil(count / 8)`` for coils and discrete inputs), 5 for an exception. It hunts for ``slave, function`` at every offset, so noise before the answer is skipped, and
checks the byte count and the CRC. An exception answer raises ``ModbusException(code)`` (reason
``exception_<code>``). ``ResponseFramer.timeout()`` ends a transaction that got no valid answer and says why:
``bad_crc`` (a frame arrived with a wrong CRC), ``truncated`` (the answer stopped short) or ``timeout``.
"""

import math
import struct
from dataclasses import dataclass

from drivers.bounds import check
from drivers.serial.modbus_schedule import PollScheduler, SlaveState  # noqa: F401 (API)
from gateway.core.errors import ConfigError, DecodeError
from gateway.core.model import Measurement

READ_COILS = 1
READ_DISCRETE = 2
READ_HOLDING = 3
READ_INPUT = 4
TABLES = {"coil": READ_COILS, "discrete": READ_DISCRETE, "holding": READ_HOLDING, "input": READ_INPUT}
BIT_FUNCTIONS = (READ_COILS, READ_DISCRETE)
MAX_REGISTERS = 125  # Modbus Application Protocol V1.1b3, 6.3 and 6.4: quantity of registers 1..125
MAX_BITS = 2000  # Modbus Application Protocol V1.1b3, 6.1 and 6.2: quantity of coils or inputs 1..2000

EXCEPTIONS = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


def _crc_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data):
    """CRC-16/MODBUS (reflected polynomial 0xA001, initial 0xFFFF). Sent low byte first."""
    crc = 0xFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def with_crc(pdu_with_address):
    """Append the CRC, low byte first, to ``address + PDU``."""
    return bytes(pdu_with_address) + crc16(pdu_with_address).to_bytes(2, "little")


class ModbusException(DecodeError):
    """The slave answered with an exception response (function | 0x80). ``code`` is the exception code."""

    def __init__(self, code, slave=None, function=None):
        super().__init__("slave %s function %s: exception %d (%s)"
                         % (slave, function, code, EXCEPTIONS.get(code, "unknown")), reason="exception_%d" % code)
        self.code = code
        self.slave = slave
        self.function = function


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """Read ``count`` registers (function 3 or 4) or bits (function 1 or 2) from ``address`` (0-based protocol
    address)."""

    slave: int
    function: int
    address: int
    count: int

    def __post_init__(self):
        if not 1 <= self.slave <= 247:
            raise ValueError("slave must be 1..247, not %r" % (self.slave,))
        if self.function not in BIT_FUNCTIONS + (READ_HOLDING, READ_INPUT):
            raise ValueError("function must be 1, 2, 3 or 4, not %r" % (self.function,))
        most = MAX_BITS if self.function in BIT_FUNCTIONS else MAX_REGISTERS
        if not 1 <= self.count <= most or not 0 <= self.address <= 0xFFFF - self.count + 1:
            raise ValueError("bad register range %r+%r" % (self.address, self.count))

    def encode(self):
        return with_crc(struct.pack(">BBHH", self.slave, self.function, self.address, self.count))

    @property
    def byte_count(self):
        """The byte count of a normal answer: 2 per register, 8 bits per byte (the last one padded)."""
        return (self.count + 7) // 8 if self.function in BIT_FUNCTIONS else 2 * self.count

    @property
    def response_length(self):
        return 5 + self.byte_count


def read_holding(slave, address, count):
    return ReadRequest(slave, READ_HOLDING, address, count)


def read_input(slave, address, count):
    return ReadRequest(slave, READ_INPUT, address, count)


def read_coils(slave, address, count):
    return ReadRequest(slave, READ_COILS, address, count)


def read_discrete(slave, address, count):
    return ReadRequest(slave, READ_DISCRETE, address, count)


def parse_request(frame):
    """Decode an 8-byte read request (for the simulated slave and the CLI); raises ``DecodeError``."""
    if len(frame) != 8:
        raise DecodeError("a read request is 8 bytes, not %d" % len(frame), reason="malformed")
    if crc16(frame[:6]) != int.from_bytes(frame[6:], "little"):
        raise DecodeError("request CRC mismatch", reason="bad_crc")
    slave, function, address, count = struct.unpack(">BBHH", frame[:6])
    try:
        return ReadRequest(slave, function, address, count)
    except ValueError as exc:
        raise DecodeError(str(exc), reason="malformed") from exc


@dataclass(frozen=True, slots=True)
class ReadResponse:
    slave: int
    function: int
    registers: tuple  # unsigned 16-bit values; for functions 1 and 2, one 0 or 1 per coil or input


class ResponseFramer:
    """Finds the answer to the one outstanding request in whatever bytes arrive.

    ``expect(request)`` starts a transaction; ``feed(data)`` returns the ``ReadResponse`` once it is complete
    (then the transaction is over), None while waiting, and raises ``ModbusException`` for an exception answer.
    Bytes that arrive with no transaction open are dropped and counted as ``unexpected``; bytes skipped while
    hunting are counted as ``skipped``.
    """

    def __init__(self):
        self.counters = {}
        self._request = None
        self._buf = b""
        self._bad_crc = False

    @property
    def pending(self):
        return self._request is not None

    def _count(self, key, n):
        if n:
            self.counters[key] = self.counters.get(key, 0) + n

    def expect(self, request):
        self._request = request
        self._buf = b""
        self._bad_crc = False

    def timeout(self):
        """End the transaction without an answer; returns the ``DecodeError`` that says why (for counting)."""
        if self._bad_crc:
            err = DecodeError("answer had a bad CRC", reason="bad_crc")
        elif self._request is not None and self._buf[:1] == bytes((self._request.slave,)):
            err = DecodeError("answer stopped after %d bytes" % len(self._buf), reason="truncated")
        else:
            err = DecodeError("no answer", reason="timeout")
        self._request = None
        self._buf = b""
        return err

    def _finish(self, rest):
        self._request = None
        self._buf = b""
        self._count("unexpected", len(rest))

    def feed(self, data):
        req = self._request
        if req is None:
            self._count("unexpected", len(data))
            return None
        buf = self._buf + bytes(data)
        slave, function = req.slave, req.function
        normal_len = req.response_length
        i = 0
        n = len(buf)
        while i < n - 1:
            if buf[i] != slave or buf[i + 1] not in (function, function | 0x80):
                i += 1
                continue
            if buf[i + 1] == function:
                if i + 2 < n and buf[i + 2] != req.byte_count:
                    i += 1
                    continue
                length = normal_len
            else:
                length = 5
            if n - i < length:
                break  # a candidate still arriving
            frame = buf[i:i + length]
            if crc16(frame[:-2]) != int.from_bytes(frame[-2:], "little"):
                self._bad_crc = True
                i += 1
                continue
            self._count("skipped", i)
            self._finish(buf[i + length:])
            if length == 5 and buf[i + 1] != function:
                raise ModbusException(frame[2], slave, function)
            return ReadResponse(slave, function, _values(req, frame[3:-2]))
        self._count("skipped", i)
        self._buf = buf[i:]
        return None


def _values(request, data):
    """Registers (big-endian 16-bit) or bits (LSB of the first byte is the first coil, spec 6.1) of an answer."""
    if request.function in BIT_FUNCTIONS:
        return tuple((data[k >> 3] >> (k & 7)) & 1 for k in range(request.count))
    return struct.unpack(">%dH" % request.count, data)


# --- register maps ------------------------------------------------------------------------------------------

_TYPES = {  # type -> (words, struct format of the big-endian value)
    "int16": (1, ">h"),
    "uint16": (1, ">H"),
    "int32": (2, ">i"),
    "uint32": (2, ">I"),
    "float32": (2, ">f"),
    "bool": (1, None),  # one coil or discrete input
}
WORD_ORDERS = ("big", "little")


@dataclass(frozen=True, slots=True)
class RegisterEntry:
    """One quantity in a slave's register map. ``word_order`` says which register holds the high word of a
    32-bit value: ``big`` (the first, the Modbus convention; "ABCD") or ``little`` (word-swapped; "CDAB"). The
    value is ``raw * scale``. In the bit tables (``coil``, ``discrete``) the type is ``bool`` and the value is
    true or false (SenML ``vb``)."""

    name: str
    address: int
    type: str = "uint16"
    word_order: str = "big"
    scale: float = 1
    unit: str = None
    table: str = "holding"

    @property
    def words(self):
        return _TYPES[self.type][0]

    @classmethod
    def from_dict(cls, d, file=None, key="registers"):
        """Build and validate an entry from config; errors are ``ConfigError`` naming the key."""
        try:
            table = d.get("table", "holding")
            default_type = "bool" if table in ("coil", "discrete") else "uint16"
            entry = cls(name=str(d["name"]), address=int(d["address"]), type=d.get("type", default_type),
                        word_order=d.get("word_order", "big"), scale=d.get("scale", 1), unit=d.get("unit"),
                        table=table)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError("bad register entry %r: %s" % (d, exc), file=file, key=key) from None
        where = "%s.%s" % (key, entry.name)
        if entry.type not in _TYPES:
            raise ConfigError("type must be one of %s" % ", ".join(_TYPES), file=file, key=where)
        if entry.word_order not in WORD_ORDERS:
            raise ConfigError("word_order must be big or little (word-swapped)", file=file, key=where)
        if entry.table not in TABLES:
            raise ConfigError("table must be one of %s" % ", ".join(TABLES), file=file, key=where)
        bits = TABLES[entry.table] in BIT_FUNCTIONS
        if bits != (entry.type == "bool"):
            raise ConfigError("type bool is for the coil and discrete tables, and only bool is" if bits else
                              "type bool is only for table = \"coil\" or \"discrete\"", file=file, key=where)
        if bits and (entry.scale != 1 or entry.unit is not None):
            raise ConfigError("a coil or discrete input is true or false: no scale, no unit", file=file, key=where)
        if not 0 <= entry.address <= 0x10000 - entry.words:
            raise ConfigError("address out of range", file=file, key=where)
        if (isinstance(entry.scale, bool) or not isinstance(entry.scale, (int, float)) or not entry.scale
                or not math.isfinite(entry.scale)):
            raise ConfigError("scale must be a finite non-zero number", file=file, key=where)
        return entry


def decode_value(entry, words):
    """The value of ``entry`` from its 1 or 2 registers (unsigned 16-bit ints), scaled; None if not a number. A
    ``bool`` entry (one coil or discrete input) is true or false."""
    if entry.type == "bool":
        return bool(words[0])
    if len(words) == 2 and entry.word_order == "little":
        words = (words[1], words[0])
    raw = struct.unpack(_TYPES[entry.type][1], struct.pack(">%dH" % len(words), *words))[0]
    if entry.type == "float32":
        if math.isnan(raw) or math.isinf(raw):
            return None  # meters send NaN for "not available"
        return raw * entry.scale
    return raw * entry.scale if entry.scale != 1 else raw


def decode_registers(entries, start, registers):
    """Measurements for ``entries`` from ``registers`` read from address ``start``. NaN/inf floats are omitted.

    Raises ``DecodeError(reason="short_read")`` if an entry lies outside what was read.
    """
    out = []
    for entry in entries:
        offset = entry.address - start
        if offset < 0 or offset + entry.words > len(registers):
            raise DecodeError("register %d not in the %d read from %d" % (entry.address, len(registers), start),
                              reason="short_read")
        value = decode_value(entry, registers[offset:offset + entry.words])
        if value is None:
            continue
        if entry.type != "bool":
            check(entry.name, value)  # a huge scale can push a register past int64 or a float32 to infinity
        resolution = None if entry.type in ("float32", "bool") or entry.scale == 1 else abs(entry.scale)
        out.append(Measurement(entry.name, value, entry.unit, resolution))
    return out


# --- planner --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Poll:
    """One request to send: a contiguous block of one table of one slave, and the entries it serves."""

    slave: int
    table: str
    address: int
    count: int
    entries: tuple

    def request(self):
        return ReadRequest(self.slave, TABLES[self.table], self.address, self.count)

    def decode(self, response):
        return decode_registers(self.entries, self.address, response.registers)


def plan_polls(register_maps, max_count=MAX_REGISTERS, max_gap=0):
    """Group each slave's entries into as few requests as possible.

    ``register_maps`` is ``{slave: [RegisterEntry, ...]}``. Entries of one table whose registers touch or overlap
    (or leave a hole of at most ``max_gap`` registers; 0 by default, because many devices answer exception 2 for
    unmapped registers) share one request of at most ``max_count`` registers (``MAX_BITS`` coils or inputs in the
    bit tables). Returns a list of ``Poll`` in slave, table, address order.
    """
    if not 1 <= max_count <= MAX_REGISTERS:
        raise ValueError("max_count must be 1..125")
    polls = []
    for slave in sorted(register_maps):
        entries = sorted(register_maps[slave], key=lambda e: (e.table, e.address, e.words))
        group = []
        start = end = None
        for e in entries:
            e_end = e.address + e.words
            most = MAX_BITS if TABLES[e.table] in BIT_FUNCTIONS else max_count
            if group and e.table == group[0].table and e.address <= end + max_gap and max(end, e_end) - start <= most:
                group.append(e)
                end = max(end, e_end)
                continue
            if group:
                polls.append(Poll(slave, group[0].table, start, end - start, tuple(group)))
            group, start, end = [e], e.address, e_end
        if group:
            polls.append(Poll(slave, group[0].table, start, end - start, tuple(group)))
    return polls


def cli_decode(text, mac=None, key=None):
    """``edge-gateway decode modbus 'HEX'``: a response frame; the registers come out as ``reg<N>`` (uint16), the
    coils or discrete inputs of a function 1 or 2 answer as ``bit<N>`` (0 or 1, eight per data byte).

    The request is inferred from the frame itself (slave, function and byte count; address 0)."""
    if isinstance(text, str):
        try:
            data = bytes.fromhex(text.replace(" ", "").replace(":", ""))
        except ValueError:
            raise DecodeError("not valid hex: %r" % (text[:80],), reason="bad_hex") from None
    else:
        data = bytes(text)
    if len(data) < 5:
        raise DecodeError("frame too short", reason="malformed")
    function = data[1] & 0x7F
    per_byte = 8 if function in BIT_FUNCTIONS else 0.5
    count = int(data[2] * per_byte) if not data[1] & 0x80 else 1
    try:
        request = ReadRequest(data[0], function, 0, max(count, 1))
    except ValueError as exc:
        raise DecodeError(str(exc), reason="malformed") from exc
    framer = ResponseFramer()
    framer.expect(request)
    response = framer.feed(data)
    if response is None:
        raise framer.timeout()
    label = "bit%d" if function in BIT_FUNCTIONS else "reg%d"
    return [Measurement(label % i, v) for i, v in enumerate(response.registers)]
