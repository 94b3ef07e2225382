"""mcu/wallclock.py reads aiortc's clock faster, and must read the same time."""

from __future__ import annotations

from aiortc import clock

from mcu import wallclock


def test_milliseconds_since_1900_agree_with_aiortcs():
    for _ in range(100):
        before = clock.current_ms()
        ours = wallclock.current_ms()
        after = clock.current_ms()
        assert before <= ours <= after


def test_ntp_timestamps_agree_with_aiortcs():
    for _ in range(100):
        before = clock.current_ntp_time()
        ours = wallclock.current_ntp_time()
        after = clock.current_ntp_time()
        assert before <= ours <= after
        # At microsecond resolution, as aiortc's: a number its own clock could have read.
        assert clock.datetime_to_ntp(clock.datetime_from_ntp(ours)) == ours
