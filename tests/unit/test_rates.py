"""DailyRate (gateway/core/rates.py): bytes per day over a sliding window, silent until an hour is known."""

import pytest

from gateway.core.rates import DailyRate

pytestmark = pytest.mark.unit


def test_rate_per_day_needs_an_hour_then_follows_the_last_day():
    rate = DailyRate()
    assert rate.add(0.0, 5_000_000) is None  # the start-up writes are the baseline, not a rate
    assert rate.add(1800.0, 5_000_000 + 1000) is None
    assert rate.add(3600.0, 5_000_000 + 2000) == 48_000  # 2000 bytes an hour
    total, t = 5_000_000 + 2000, 3600.0
    for _ in range(2 * 288):  # two days at 10 bytes a second
        t += 300.0
        total += 3000
        last = rate.add(t, total)
    assert last == pytest.approx(864_000, rel=0.01)  # the first hour's slower pace has left the window
    assert len(rate._samples) <= 290
