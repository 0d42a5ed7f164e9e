"""Our hand-written Modbus RTU master against an independent slave: pymodbus 3.16's serial server on a real pty
pair (socat), three slaves on one line (tests/support/pymodbus_slave.py). Checked: every type pymodbus encodes
(coils, discrete inputs, signed and unsigned 16/32-bit, both word orders, float32, scale) decodes to the value it
encoded; exception responses (2: illegal data address, 6: server device busy) are counted per slave and never stop
the healthy slave; a slow slave within the timeout gives its values, one slower than the timeout is counted
(``timeout``, its late answers ``unexpected`` or ``garbage``) and never gives a wrong value; a slave that stops
answering backs off and is read again once it answers again."""

import asyncio

import pytest

from drivers.sources import build_source
from gateway.core.clock import SystemClock
from tests.support import async_wait_until
from tests.support.pymodbus_slave import ModbusLine, expected, register_map

pytestmark = pytest.mark.timeout(90)


def _source(port, **options):
    spec = {"type": "serial", "name": "bus", "port": port, "baud": 19200, "protocol": "modbus", "poll_s": 0.2,
            "backoff_s": 0.2, "backoff_max_s": 1.0,
            "slaves": [{"id": 1, "name": "dev1", "registers": register_map()},
                       {"id": 2, "name": "dev2", "registers": [{"name": "unmapped", "address": 100}]},
                       {"id": 3, "name": "dev3", "registers": [{"name": "busy", "address": 0, "table": "input"}]}]}
    spec.update(options)
    return build_source(spec, SystemClock("synced"))


def _run(source, driver):
    """Run ``source`` on a fresh event loop while ``driver(readings)`` runs; returns the readings."""
    readings = []

    async def main():
        task = asyncio.create_task(source.run(readings.append))
        try:
            await driver(readings)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    asyncio.run(main())
    return readings


def _check_values(readings):
    """Every dev1 reading equals what pymodbus encoded; returns {name: count}."""
    want = expected()
    seen = {}
    for r in readings:
        assert r.sensor == "dev1", r
        if isinstance(want[r.name], bool):
            assert r.value is want[r.name], r
        else:
            assert r.value == pytest.approx(want[r.name], rel=1e-9), r
        seen[r.name] = seen.get(r.name, 0) + 1
    return seen


def _all_read(readings, times=1):
    seen = {}
    for r in readings:
        seen[r.name] = seen.get(r.name, 0) + 1
    return len(seen) == len(expected()) and min(seen.values()) >= times


def test_values_and_exceptions_from_pymodbus(tmp_path):
    with ModbusLine(str(tmp_path)) as line:
        source = _source(line.port)
        errors = source.protocol.errors

        async def driver(readings):
            await async_wait_until(lambda: _all_read(readings, 3) and errors.get("slave3.exception_6", 0) >= 2,
                                   30, "three cycles of every value and two busy answers")
        readings = _run(source, driver)
    _check_values(readings)
    assert {r.unit for r in readings if r.name == "temp"} == {"Cel"}
    assert errors["slave2.exception_2"] >= 1 and errors["slave3.exception_6"] >= 2
    assert not any(k.startswith("slave1.") for k in errors), errors  # the healthy slave never failed
    assert not {"timeout", "bad_crc", "truncated"} & set(errors), errors


def test_slow_slave_within_and_beyond_the_timeout(tmp_path):
    with ModbusLine(str(tmp_path / "a"), delay=0.3) as line:  # answers after 0.3 s; we wait 1.5 s
        source = _source(line.port, timeout_s=1.5)

        async def driver(readings):
            await async_wait_until(lambda: _all_read(readings, 2), 40, "every value twice from a slow slave")
            _check_values(readings)
        _run(source, driver)
        assert "slave1.timeout" not in source.protocol.errors
    with ModbusLine(str(tmp_path / "b"), delay=0.5) as line:  # answers after 0.5 s; we wait 0.15 s
        source = _source(line.port, timeout_s=0.15)
        errors = source.protocol.errors

        async def driver(readings):
            await async_wait_until(lambda: errors.get("slave1.timeout", 0) >= 3
                                   and errors.get("slave3.exception_6", 0) >= 2, 40,
                                   "three timeouts of the slow slave while the busy one keeps answering")
            _check_values(readings)  # a late answer never becomes a wrong value
        _run(source, driver)
        assert errors.get("unexpected", 0) + errors.get("garbage", 0) > 0  # the late answers, counted


def test_slave_that_stops_answering_comes_back(tmp_path):
    with ModbusLine(str(tmp_path)) as line:
        source = _source(line.port)
        errors = source.protocol.errors
        state = source.protocol.scheduler.states

        async def driver(readings):
            await async_wait_until(lambda: _all_read(readings), 30, "every value once")
            line.pause()
            await async_wait_until(lambda: errors.get("slave1.timeout", 0) >= 2, 30, "two timeouts of the stopped slave")
            assert state[1].failures >= 2 and state[1].backing_off
            before = len(readings)
            line.resume()
            await async_wait_until(lambda: state[1].failures == 0 and len(readings) > before + 2 * len(expected()),
                                   30, "the slave read again after it came back")
            _check_values(readings)
        _run(source, driver)
        assert errors.get("slave3.exception_6", 0) >= 1  # the other slaves kept their schedule meanwhile
