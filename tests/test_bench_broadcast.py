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
         "--rounds", "1", "--toggle-viewers", "2", "--participants", "2", "--hls-segments", "1", "--write", str(doc)],
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
    # The toggled runs: windows without, with and without 2 viewers, 2 more participants, an RTMP stream.
    tables = [i for i, line in enumerate(lines) if line.startswith("| window | ")]
    assert [cells(lines[i])[1] for i in tables] == ["2 viewers", "2 participants", "RTMP stream"], tables
    for i in tables:
        windows = [cells(line) for line in lines[i + 2 : i + 5]]
        assert [w[1] for w in windows] == ["off", "on", "off"], windows
        assert all(float(w[3].split(" / ")[0]) > 0 for w in windows), windows  # the room went on
    viewers_on = cells(lines[tables[0] + 3])
    assert float(viewers_on[4].split(" / ")[0]) > 0, viewers_on  # the viewers received the composite
    stream = [cells(line) for line in lines[tables[2] + 2 : tables[2] + 5]]
    # The stream's tier was encoded in H.264 before it started: it added no video encoder.
    assert stream[0][5] == stream[1][5] == stream[2][5] and "h264/high" in stream[0][5], stream
    assert [w[6] for w in stream] == ["-", "live", "-"], stream
    assert any(line.startswith("RTMP stream added") and "no video encode" in line for line in lines), lines
    assert any(line.startswith("A viewer against a participant: a participant") for line in lines), lines
    # Every receiver read the stamper's capture times: the RTMP stream and the HLS read back too.
    for receiver in ("WHEP", "participant", "RTMP", "HLS (1 s segments)", "HLS player (1 s segments)"):
        latency = cells(next(line for line in lines if line.startswith(f"| {receiver} |")))
        assert int(latency[3]) > 0 and 0 < float(latency[1]) < 10000, latency
    text = doc.read_text()
    assert "<!-- bench_broadcast:begin -->" in text and "<!-- bench_broadcast:end -->" in text
    assert header in text
