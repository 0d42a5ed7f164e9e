"""Bytes on the wire and on the socket per reading, and the CPU the compression costs: part of ``edge-gateway
bench`` (``tools/bench.py``)."""

import os
import random
import statistics
import time

from gateway.adapters import keys
from gateway.app.config import BatchSection
from gateway.core import senml, wire
from gateway.core.clock import FakeClock
from gateway.core.model import Reading
from gateway.core.pipeline import Pipeline

GW = "gw-bench"


def bench_wire_bytes():
    key = keys.SigningKey.from_seed(bytes(range(32)))
    out = {}
    for label, base, res in (("fridge_0.01C", 4.0, 0.01), ("room_0.01C", 21.0, 0.01), ("room_0.1C", 21.0, 0.1)):
        rng = random.Random(1)
        value, readings = base, []
        for i in range(100):
            value = round(value + rng.choice((-1, 0, 1)) * res, 2)
            readings.append(Reading("a4:c1:38:00:00:01", "temp", value, "Cel", 1_767_225_600 + i, res))
        records = senml.encode_records(readings, (), GW + "/", time_quantum=1.0)
        data = wire.sign(wire.encode_payload(GW, 12, 3456, True, records), key)
        out[label] = round(len(data) / 100, 2)
    return out


def _random_walk(sensors, quantities, seconds, seed=2):
    """``sensors`` BLE thermometers at 1 Hz: ``quantities`` of (name, unit, start, resolution), each a random walk
    of one resolution step per second, as a calm room gives."""
    rng = random.Random(seed)
    last = {}
    for t in range(seconds):
        for s in range(sensors):
            mac = "a4:c1:38:%02x:%02x:%02x" % (s >> 16, (s >> 8) & 255, s & 255)
            for name, unit, start, res in quantities:
                v = last.get((s, name), start + rng.randint(-300, 300) * res)
                v = last[(s, name)] = round(v + rng.choice((-1, 0, 1)) * res, 2)
                yield Reading(mac, name, v, unit, 1_767_225_600 + t, res)


ROOM = (("temperature", "Cel", 21.0, 0.01), ("humidity", "%RH", 45.0, 0.01))


def bench_socket_bytes(seconds=30):
    """Bytes on the socket per reading (request line, headers and body: the HTTP uplink's own count of what it
    wrote, before TLS) to a real loopback receiver, which inflates, verifies and stores every batch.

    * ``single``: the 100 readings of ``bench_wire_bytes``'s fridge, one POST.
    * ``200x2``: 200 sensors x 2 quantities at 1 Hz for ``seconds`` s through the agent's ``Pipeline`` at the
      default ``[batch]`` settings (batches as the agent cuts them), one POST per batch.
    * ``200x2_batch_N``: the same readings in batches of N (what a shorter cut gives: 40-80 at 400 readings/s with
      the default linger and hold), deflated and plain.
    Body-only figures (``*_body``) leave out the HTTP request line and headers (~170 bytes per POST)."""
    import tempfile as _tempfile

    from backend.receiver import Receiver, ReceiverServer
    from gateway.adapters.keys import TrustStore
    key = keys.SigningKey.from_seed(bytes(range(32)))
    signer = wire.Signer(key)
    out = {}
    with _tempfile.TemporaryDirectory(prefix="edge-gateway-bench-wire-") as tmp:
        rx = Receiver(os.path.join(tmp, "rx.sqlite"), TrustStore({"keys": [key.jwk(GW)]}))
        server = ReceiverServer(rx).start()
        try:
            _socket_cases(server.url, signer, seconds, out)
            stats = rx.stats()
            out["receiver_rejected"] = stats["rejected"]
        finally:
            server.stop()
            rx.close()
    return out


def _socket_cases(url, signer, seconds, out):
    """The cases of ``bench_socket_bytes``, each sent to the receiver at ``url``; the figures go into ``out``."""
    from gateway.adapters.uplink.http import HttpUplink
    seq = [0]

    def deliver(label, batches, readings, compress=True):
        up = HttpUplink(url, compress=compress)
        try:
            for data in batches:
                seq[0] += 1
                up.send(data)
        finally:
            up.close()
        c = up.counters
        out[label] = round(c["bytes_sent"] / readings, 2)
        out[label + "_body"] = round(c["body_bytes"] / readings, 2)

    def sealed(readings):
        seq[0] += 1
        records = senml.encode_records(readings, (), GW + "/", time_quantum=1.0)
        return signer(wire.encode_payload(GW, 12, seq[0], True, records))

    rng = random.Random(1)
    value, fridge = 4.0, []
    for i in range(100):
        value = round(value + rng.choice((-1, 0, 1)) * 0.01, 2)
        fridge.append(Reading("a4:c1:38:00:00:01", "temp", value, "Cel", 1_767_225_600 + i, 0.01))
    deliver("single", [sealed(fridge)], 100)
    deliver("single_plain", [sealed(fridge)], 100, compress=False)

    pipeline = Pipeline(gw=GW, boot=13, signer=signer, clock=FakeClock(mono=0.0, wall=0.0), batch=BatchSection())
    batches, n, sizes = [], 0, []
    readings = list(_random_walk(200, ROOM, seconds))
    for r in readings:
        for b in pipeline.accept(r, r.t):
            batches.append(b.data)
            sizes.append(b.readings)
    batches += [b.data for b in pipeline.flush(readings[-1].t)]
    n = len(readings)
    deliver("200x2", batches, n)
    deliver("200x2_plain", batches, n, compress=False)
    out["200x2_readings_per_batch"] = round(statistics.median(sizes)) if sizes else None
    for size in (10, 40, 100, 400, 1000):
        chunks = [sealed(readings[i:i + size]) for i in range(0, size * (4000 // size), size)]
        deliver("200x2_batch_%d" % size, chunks, size * len(chunks))
        deliver("200x2_batch_%d_plain" % size, chunks, size * len(chunks), compress=False)


def bench_compress_cpu(reps=200):
    """CPU seconds per 1,000 readings to deflate (uplink, level 6; the store's level 1 beside it) and to inflate
    (receiver) a 1,000-reading batch of the 200x2 case."""
    from backend.receiver import inflate
    from gateway.adapters.uplink.base import deflated
    key = keys.SigningKey.from_seed(bytes(range(32)))
    readings = list(_random_walk(200, ROOM, 3))[:1000]
    data = wire.sign(wire.encode_payload(GW, 1, 1, True, senml.encode_records(readings, (), GW + "/")), key)
    packed = deflated(data)

    def cpu(fn):
        start = time.process_time()
        for _ in range(reps):
            fn()
        return (time.process_time() - start) / reps

    return {"deflate_level6_cpu_s_per_1k": cpu(lambda: deflated(data)),
            "deflate_level1_cpu_s_per_1k": cpu(lambda: deflated(data, 1)),
            "inflate_cpu_s_per_1k": cpu(lambda: inflate(packed, wire.MAX_BATCH_BYTES))}
