"""A small, deterministic mutation fuzzer for every parser that meets untrusted bytes.

Each ``Target`` names one entry point (``wire.verify``, a decoder, a framer, the receiver's request path ...), the
typed errors it is allowed to raise, and a corpus of valid inputs to start from. ``run`` feeds it mutated inputs
(bit flips, byte changes, truncation, duplication, splicing, random bytes, interesting integers) drawn from a
seeded ``random.Random``, so a run is reproducible from its seed. Any other exception is a finding: it is recorded
with the input in hex, and the run goes on.

The CI tier (``tests/integration/test_fuzz.py``) runs every target for a few thousand inputs with fixed seeds. The long run is
``edge-gateway fuzz --inputs 2000000`` (``docs/security.md`` records its result).

Targets are registered in ``tools.fuzz_targets``; the command is ``tools.fuzz_cmd``.
"""

import random
import time
from dataclasses import dataclass, field

INTERESTING = (b"\x00", b"\xff", b"\x7f", b"\x80", b"\x1b\xff\xff\xff\xff\xff\xff\xff\xff",
               b"\x3b\xff\xff\xff\xff\xff\xff\xff\xff", b"\xfb\x7f\xf8\x00\x00\x00\x00\x00\x00",
               b"\xf9\x7c\x00", b"\x9f", b"\xbf", b"\x5f", b"\x7f", b"\xff", b"\xc4", b"\xd8\x1c", b"\xd8\x1d",
               b"\r\n", b"$", b"*", b",", b"=", b"9" * 40, b"-", b"nan", b"inf", b"1e999")


@dataclass(frozen=True)
class Target:
    """One fuzzed entry point: ``run(data)`` may return anything or raise one of ``allowed``."""
    name: str
    run: object
    corpus: tuple
    allowed: tuple
    max_len: int = 4096


@dataclass
class Finding:
    target: str
    error: str
    data: bytes

    def as_dict(self):
        return {"target": self.target, "error": self.error, "input_hex": self.data.hex()}


@dataclass
class Result:
    target: str
    inputs: int = 0
    typed_errors: int = 0
    accepted: int = 0
    seconds: float = 0.0
    findings: list = field(default_factory=list)

    def as_dict(self):
        return {"target": self.target, "inputs": self.inputs, "typed_errors": self.typed_errors,
                "accepted": self.accepted, "seconds": round(self.seconds, 3),
                "findings": [f.as_dict() for f in self.findings]}


def mutate(rng, corpus, max_len):
    """One input: a corpus item changed by one to four random mutations (or, rarely, random bytes)."""
    if not corpus or rng.random() < 0.05:
        return rng.randbytes(rng.randrange(0, 64))
    data = bytearray(rng.choice(corpus))
    for _ in range(rng.randrange(1, 5)):
        op = rng.randrange(9)
        n = len(data)
        if op == 0 and n:  # flip a bit
            i = rng.randrange(n)
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:  # set a byte
            data[rng.randrange(n)] = rng.randrange(256)
        elif op == 2 and n:  # truncate
            del data[rng.randrange(n):]
        elif op == 3 and n:  # delete a run
            i = rng.randrange(n)
            del data[i:i + rng.randrange(1, 9)]
        elif op == 4:  # insert an interesting token
            i = rng.randrange(n + 1)
            data[i:i] = rng.choice(INTERESTING)
        elif op == 5 and n:  # duplicate a run
            i = rng.randrange(n)
            j = min(n, i + rng.randrange(1, 33))
            data[i:i] = data[i:j] * rng.randrange(1, 4)
        elif op == 6:  # splice with another corpus item
            other = rng.choice(corpus)
            if other:
                i = rng.randrange(len(other))
                data[rng.randrange(n + 1):] = other[i:]
        elif op == 7:  # append random bytes
            data += rng.randbytes(rng.randrange(1, 9))
        elif n:  # replace a byte with a boundary value
            data[rng.randrange(n)] = rng.choice((0, 1, 0x17, 0x18, 0x1f, 0x7f, 0x80, 0xfe, 0xff))
    return bytes(data[:max_len])


def run(target, inputs, seed=0, seconds=None, max_findings=20):
    """Feed ``target`` ``inputs`` mutated inputs (or stop after ``seconds``). Returns a ``Result``."""
    rng = random.Random("%s:%d" % (target.name, seed))
    result = Result(target.name)
    start = time.monotonic()
    deadline = None if seconds is None else start + seconds
    corpus = tuple(bytes(c) for c in target.corpus)
    for i in range(inputs):
        if deadline is not None and i % 256 == 0 and time.monotonic() > deadline:
            break
        data = corpus[i] if i < len(corpus) else mutate(rng, corpus, target.max_len)
        result.inputs += 1
        try:
            target.run(data)
        except target.allowed:
            result.typed_errors += 1
        except Exception as exc:  # noqa: BLE001 - the point of a fuzzer: any other exception is a finding
            if len(result.findings) < max_findings:
                result.findings.append(Finding(target.name, "%s: %s" % (type(exc).__name__, exc), data))
        else:
            result.accepted += 1
    result.seconds = time.monotonic() - start
    return result
