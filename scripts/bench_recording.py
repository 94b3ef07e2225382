#!/usr/bin/env python3
"""What recording costs: server CPU of one 8-peer room with and without recording, in one run.

One `mcu serve` (1280x720@30, --record-dir in a temporary directory) and one
load process with 8 peers (scripts/bench_room.py's `_load`: a pre-encoded clip
up, the composite counted down without decoding) stay up for the whole run.
Windows with and without recording alternate (off, on, on, off, ...), the
recording started and stopped through the HTTP API before each window, so
that the machine's drift and noise fall on both sides alike. Each window's
server CPU (utime + stime of every thread, from /proc, % of one core) is
kept; the overhead is the difference of the medians, relative to the room
without recording. The spread of the windows of one side is the noise.

    .venv/bin/python scripts/bench_recording.py [--peers 8] [--rounds 4] [--window 10]
                                               [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_room  # noqa: E402

BEGIN, END = "<!-- bench_recording:begin -->", "<!-- bench_recording:end -->"
SETTLE = 2.0


async def window(pid: int, seconds: float) -> float:
    """Server CPU over `seconds`, % of one core."""
    ticks, start = bench_room.cpu_ticks(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return (bench_room.cpu_ticks(pid) - ticks) / bench_room.CLK_TCK / (time.monotonic() - start) * 100


async def run(args: argparse.Namespace) -> dict:
    port = bench_room.free_port()
    order = [on for i in range(args.rounds) for on in ((False, True) if i % 2 == 0 else (True, False))]
    # The load stays until it is stopped at the end; this only bounds it if the driver dies.
    total = len(order) * (args.window + SETTLE) * 5 + 120
    with tempfile.TemporaryDirectory() as records:
        server = await bench_room.start_server(
            port, asyncio.subprocess.DEVNULL, "--size", bench_room.SIZE, "--fps", str(bench_room.FPS),
            "--record-dir", records, "--log-level", "WARNING",
        )  # fmt: skip
        load = None
        try:
            await bench_room.wait_healthy(port, server)
            load = await asyncio.create_subprocess_exec(
                sys.executable,
                __file__.replace("bench_recording", "bench_room"),
                "_load",
                f"ws://127.0.0.1:{port}/ws",
                str(args.peers),
                str(args.warmup),
                str(total),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                cwd=bench_room.REPO,
            )
            event = await bench_room.next_event(load, 90)
            assert event["event"] == "start", event
            url = f"http://127.0.0.1:{port}/api/rooms/bench/recording"
            results: dict[bool, list[float]] = {False: [], True: []}
            sizes = []
            async with aiohttp.ClientSession() as http:
                for recording in order:
                    if recording:
                        async with http.post(url) as reply:
                            assert reply.status == 201, await reply.text()
                    await asyncio.sleep(SETTLE)
                    cpu = await window(server.pid, args.window)
                    results[recording].append(cpu)
                    if recording:
                        async with http.delete(url) as reply:
                            assert reply.status == 200, await reply.text()
                            sizes.append((await reply.json())["duration"])
                    print(f"recording={'on ' if recording else 'off'} server CPU {cpu:6.1f} %", flush=True)
            files = sorted(Path(records).iterdir())
            assert len(files) == args.rounds, files
            megabytes = sum(f.stat().st_size for f in files) / 1e6
            recorded = sum(sizes)
        finally:
            await bench_room.stop(load)
            await bench_room.stop(server)
    off, on = statistics.median(results[False]), statistics.median(results[True])
    return {
        "off": results[False],
        "on": results[True],
        "overhead": on - off,
        "relative": (on - off) / off * 100,
        "noise": (max(results[False]) - min(results[False])) / 2,
        "bitrate": megabytes * 8 / recorded if recorded else 0.0,
    }


def section(result: dict, args: argparse.Namespace) -> str:
    def cells(values: list[float]) -> str:
        return ", ".join(f"{v:.1f}" for v in values)

    off, on = statistics.median(result["off"]), statistics.median(result["on"])
    return "\n".join(
        [
            BEGIN,
            f"Measured {datetime.date.today().isoformat()} on {bench_room.machine()}: one room of {args.peers} load "
            f"peers, composite {bench_room.SIZE}@{bench_room.FPS}, {args.rounds} windows of {args.window:.0f} s "
            "each way, alternating.",
            "",
            "| | server CPU per window, % of one core | median |",
            "|---|---|---|",
            f"| without recording | {cells(result['off'])} | {off:.1f} |",
            f"| recording | {cells(result['on'])} | {on:.1f} |",
            "",
            f"Overhead: **{result['overhead']:+.1f} points, {result['relative']:+.1f} % of the room's CPU** "
            f"(target ≤ 5 %). Noise: the windows without recording spread ±{result['noise']:.1f} points around "
            f"their middle, so a difference smaller than that is not a measurement. The files averaged "
            f"{result['bitrate']:.2f} Mbit/s.",
            "",
            f"Re-run: `.venv/bin/python scripts/bench_recording.py --peers {args.peers} --rounds {args.rounds} "
            f"--window {args.window:.0f} --write docs/benchmarks.md`",
            END,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4, help="windows each way (default 4)")
    parser.add_argument("--window", type=float, default=10.0, help="seconds per window (default 10)")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--write", type=Path, help="replace the recording section of this Markdown file")
    args = parser.parse_args()
    os.chdir(bench_room.REPO)
    result = asyncio.run(run(args))
    text = section(result, args)
    print(text)
    if args.write:
        content = args.write.read_text()
        if BEGIN in content:
            content = content[: content.index(BEGIN)] + text + content[content.index(END) + len(END) :]
        else:
            content = content.rstrip("\n") + "\n\n## Recording\n\n" + text + "\n"
        args.write.write_text(content)


if __name__ == "__main__":
    main()
