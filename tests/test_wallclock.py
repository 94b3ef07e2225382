"""mcu/rtc/wallclock.py reads aiortc's clock faster, and must read the same time."""

from __future__ import annotations

import pytest
from aiortc import clock

from mcu.rtc import wallclock


@pytest.mark.parametrize("reading", ["current_ms", "current_ntp_time"])
def test_a_reading_falls_between_two_of_aiortcs(reading: str):
    theirs, ours = getattr(clock, reading), getattr(wallclock, reading)
    for _ in range(100):
        before = theirs()
        now = ours()
        after = theirs()
        assert before <= now <= after


def test_ntp_timestamps_have_aiortcs_microsecond_resolution():
    for _ in range(100):
        ours = wallclock.current_ntp_time()
        # A number aiortc's own clock could have read: it survives aiortc's round trip.
        assert clock.datetime_to_ntp(clock.datetime_from_ntp(ours)) == ours
