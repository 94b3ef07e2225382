"""scripts/bench_network.py's reading of one run: what a switch cost, and the freezes after it took effect."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import bench_network  # noqa: E402


def test_a_move_down_costs_its_switch_and_freezes_count_once_it_took_effect() -> None:
    # 30 fps for 3 s, a move down at 3.0, the queue of the old tier draining: the next picture at
    # 4.6, then 15 fps with one gap of 0.8 s at 8 s.
    frames = [i / 30 for i in range(90)] + [4.6 + i / 15 for i in range(51)] + [8.8 + i / 15 for i in range(150)]
    result = bench_network.Result("300k", True, 18.0)
    bench_network.measure(result, frames, [(3.0, "small")], bench_network.PROFILES["300k"], 18.0)
    assert abs(result.switch_freeze - 1.6) < 1e-9
    assert abs(result.longest_freeze - 0.8667) < 1e-3  # from 8.0 - 1/15 to 8.8, not the switch's 1.6
    assert result.moves == ["small@3.0"] and result.end_tier == "small"


def test_without_a_move_freezes_count_from_the_settling_time() -> None:
    frames = [i / 30 for i in range(30 * 12) if not 6.0 < i / 30 < 7.2]
    result = bench_network.Result("clean", True, 12.0)
    bench_network.measure(result, frames, [], bench_network.PROFILES["clean"], 12.0)
    assert result.switch_freeze is None
    assert 1.2 < result.longest_freeze < 1.3 and result.freezes_per_minute > 0
