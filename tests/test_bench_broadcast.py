"""scripts/bench_broadcast.py in its smallest run: one counting viewer, a room of two more participants, the RTMP
and HLS row, one round of the stream's cost, a short window, and the latency of every path (participant, WHEP,
RTMP read back, HLS read back and as a player shows it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COLUMNS = [
    "viewers",
    "server CPU, % of one core",
    "added per viewer (or participant), %",
    "viewers' fps min / median",
    "viewers' audio pkt/s min / median",
    "per viewer kbit/s median",
    "participants' fps min / median",
    "server made, fps",
    "viewers' tiers at the end",
    "viewers' process CPU %",
    "load avg",
    "steal %",
    "status",
]


pytestmark = pytest.mark.skipif(
    shutil.which("ffmpeg") is None, reason="ffmpeg takes the RTMP stream (scripts/test installs it)"
)


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_one_viewer_for_three_seconds_fills_the_table_and_the_section(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n")
    run = subprocess.run(
        [sys.executable, "scripts/bench_broadcast.py", "--viewers", "0,1", "--seconds", "3", "--warmup", "1",
         "--participants", "2", "--stream-rounds", "1", "--hls-segments", "1", "--write", str(doc)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    header = next(line for line in lines if line.startswith("| viewers |"))
    assert cells(header) == COLUMNS
    row = dict(zip(COLUMNS, cells(next(line for line in lines if line.startswith("| 1 |")))))
    # The viewer received the composite and the mix, and the room went on.
    assert float(row["viewers' fps min / median"].split(" / ")[0]) > 0
    assert float(row["viewers' audio pkt/s min / median"].split(" / ")[0]) > 0
    assert float(row["participants' fps min / median"].split(" / ")[0]) > 0
    assert float(row["server CPU, % of one core"]) > 0 and float(row["server made, fps"]) > 0
    assert row["viewers' tiers at the end"] in ("high 1", "low 1", "audio 1"), row
    outputs = dict(zip(COLUMNS, cells(next(line for line in lines if line.startswith("| 0 + RTMP + HLS |")))))
    assert float(outputs["participants' fps min / median"].split(" / ")[0]) > 0 and outputs["status"] == "ok"
    # A room of two more participants: what each costs, against a viewer.
    larger = dict(zip(COLUMNS, cells(next(line for line in lines if line.startswith("| 0, room of 10 |")))))
    assert larger["added per viewer (or participant), %"].endswith(" per participant"), larger
    assert float(larger["participants' fps min / median"].split(" / ")[0]) > 0
    # The stream's cost: a window without it and one with it live, the room's video encoders the same in both
    # (a participant receives H.264, so the stream's tier is already encoded).
    windows = [cells(line) for line in lines if line.startswith(("| 1 | off |", "| 2 | on |"))]
    assert len(windows) == 2, lines
    assert windows[0][4] == windows[1][4] and "h264" in windows[0][4], windows
    assert windows[1][5] == "live" and windows[0][5] == "-", windows
    assert any(line.startswith("An RTMP stream of a tier whose H.264 encoder already runs added") for line in lines)
    # Every receiver read the stamper's capture times: the RTMP stream and the HLS read back too.
    for receiver in ("WHEP", "participant", "RTMP", "HLS (1 s segments)", "HLS player (1 s segments)"):
        latency = cells(next(line for line in lines if line.startswith(f"| {receiver} |")))
        assert int(latency[3]) > 0 and 0 < float(latency[1]) < 10000, latency
    text = doc.read_text()
    assert "<!-- bench_broadcast:begin -->" in text and "<!-- bench_broadcast:end -->" in text
    assert header in text
