"""The BLE adapter recovery policy (drivers/ble/recovery.py): power-cycle a silent adapter a bounded number of
times, then report once that it needs a reset; adverts end the episode. Run end to end against the mocked BlueZ in
tests/integration/test_ble_e2e.py."""

import pytest

from drivers.ble.recovery import ADAPTER_STATES, AdapterRecovery

pytestmark = pytest.mark.unit


def test_power_cycles_are_bounded_then_the_adapter_needs_a_reset_reported_once():
    r = AdapterRecovery(max_power_cycles=2)
    r.scanning()
    assert [r.failed() for _ in range(4)] == ["power_cycle", "power_cycle", "restart", "restart"]
    assert r.state == "needs_reset"
    assert [r.needs_reset_now() for _ in range(3)] == [True, False, False]
    r.scanning()  # a scan restart does not hide it
    assert r.state == "needs_reset" and r.recovering


def test_adverts_end_the_episode_and_the_count_starts_again():
    r = AdapterRecovery(max_power_cycles=2)
    r.scanning()
    assert not r.adverts()  # adverts while all is well: no episode
    r.failed()
    r.scanning()
    assert r.recovering and r.adverts() and not r.recovering
    assert r.state == "scanning" and r.cycles == 0
    assert r.failed() == "power_cycle"  # a new episode gets its full budget


def test_without_power_cycles_the_scan_is_only_restarted():
    r = AdapterRecovery(power_cycle=False)
    assert [r.failed() for _ in range(5)] == ["restart"] * 5
    assert r.state == "silent" and not r.needs_reset_now()
    r.scanning()
    assert r.state == "scanning"
    assert set(ADAPTER_STATES) >= {"starting", "scanning", "silent", "power_cycling", "needs_reset"}
