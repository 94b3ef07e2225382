"""scripts/bench_broadcast.py in its smallest run: one counting viewer, the RTMP and HLS row, a short window, and
the latency of every path (participant, WHEP, RTMP read back, HLS read back)."""

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
    "added per viewer, %",
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
        [sys.executable, "scripts/bench_broadcast.py", "--viewers", "1", "--seconds", "3", "--warmup", "1",
         "--write", str(doc)],
        cwd=REPO, capture_output=True, text=True, timeout=180,
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
    # Every receiver read the stamper's capture times: the RTMP stream and the HLS read back too.
    for receiver in ("WHEP", "participant", "RTMP", "HLS"):
        latency = cells(next(line for line in lines if line.startswith(f"| {receiver} |")))
        assert int(latency[3]) > 0 and 0 < float(latency[1]) < 10000, latency
    text = doc.read_text()
    assert "<!-- bench_broadcast:begin -->" in text and "<!-- bench_broadcast:end -->" in text
    assert header in text
