#!/usr/bin/env python3
"""How many rooms of 6 peers one machine holds: `mcu serve --workers 1` against `--workers 2`.

For each number of workers W a fresh `mcu serve --workers W` runs (W = 1 is
the in-process server; W ≥ 2 a front and W worker processes). Rooms are added
one at a time, each with its own load process (this script as `_room`) holding
6 load peers that send a pre-encoded clip (as scripts/bench_room.py: VP8
320x240@15 ≈ 300 kbit/s plus Opus, RFC 6464 levels) and count what they
receive without decoding. After each new room has warmed up, every room is
measured over one window: the composite frame rate and audio packet rate each
peer received. A room count *fits* while every peer of every room gets at
least MIN_FPS_SHARE of the composite rate and MIN_AUDIO audio packets/s; the
first count that does not ends the series. Server CPU (front, workers and picture
processes, utime + stime from /proc) and the load processes' CPU are counted apart.

    .venv/bin/python scripts/bench_workers.py [--workers 1,2] [--max-rooms 8] [--seconds 8] [--warmup 4] [--windows 3]
                                             [--size 640x360 --fps 15] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_room import (  # noqa: E402 - a sibling script
    REPO,
    Window,
    cpu_ticks,
    emit,
    free_port,
    machine,
    next_event,
    peer_colour,
    start_server,
    stop,
    tail,
    wait_healthy,
    write_section,
)

CLK_TCK = os.sysconf("SC_CLK_TCK")
PEERS_PER_ROOM = 6
#: A room works while its worst peer gets this share of the composite rate and this many audio packets/s.
MIN_FPS_SHARE = 0.9
MIN_AUDIO = 45.0
BEGIN, END = "<!-- bench_workers:begin -->", "<!-- bench_workers:end -->"


# --- one room's load peers (a subprocess) ------------------------------------------


async def run_room(url: str, room: str, index: int) -> None:
    """Join 6 load peers to `room`; on each "measure S" line of stdin, report the next S seconds."""
    from client.encoded import PreEncodedAudioTrack, PreEncodedVideoTrack
    from client.peer import Peer

    peers = [
        Peer(
            url,
            room,
            f"{room}-{i}",
            video=PreEncodedVideoTrack(peer_colour(index * PEERS_PER_ROOM + i)),
            audio=PreEncodedAudioTrack(300.0 + 75 * i),
            decode=False,
            chat=False,
        )
        for i in range(PEERS_PER_ROOM)
    ]
    try:
        for peer in peers:
            await peer.join(timeout=20)
        await peers[0].wait_for(lambda: all(p.video_frames and p.audio_frames for p in peers), timeout=40)
        emit("ready")
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            seconds = float(line.split()[1])
            window = Window(peers)
            await asyncio.sleep(seconds)
            emit("result", **window.report())
    finally:
        await asyncio.wait_for(asyncio.gather(*(p.close() for p in peers), return_exceptions=True), 15)


# --- the driver --------------------------------------------------------------------


#: Other processes' CPU (% of one core) above which a run's figures are flagged as not comparable.
OTHERS_LIMIT = 25


@dataclass
class Step:
    """All rooms measured together once a new one has joined."""

    rooms: int
    fps_min: float = 0.0
    fps_mean: float = 0.0
    audio_min: float = 0.0
    server_cpu: float = 0.0
    load_cpu: float = 0.0
    #: What every other process of the machine used over the window (busy CPU from /proc/stat, minus
    #: the server and the load processes), % of one core: the load average would count this run's own.
    others_cpu: float = 0.0
    failure: str = ""


@dataclass
class Series:
    workers: int
    steps: list[Step] = field(default_factory=list)

    def held(self, fps: int) -> int:
        """Rooms held: the last count before the first that failed."""
        held = 0
        for step in self.steps:
            if not fits(step, fps):
                break
            held = step.rooms
        return held


def fits(step: Step, fps: int) -> bool:
    return not step.failure and step.fps_min >= MIN_FPS_SHARE * fps and step.audio_min >= MIN_AUDIO


async def server_pids(port: int, server: asyncio.subprocess.Process) -> list[int]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/healthz") as response:
        state = await response.json()
    return [server.pid, *(w["pid"] for w in state.get("workers", []))]


async def run_series(workers: int, args: argparse.Namespace, logs: Path) -> Series:
    series = Series(workers)
    port = free_port()
    rooms: list[asyncio.subprocess.Process] = []
    server = None
    try:
        with (logs / f"server-{workers}.log").open("wb") as log:
            server = await start_server(
                port, log, "--workers", str(workers), "--size", args.size, "--fps", str(args.fps),
                "--log-level", "WARNING", "--max-peers", "64",
            )  # fmt: skip
        await wait_healthy(port, server, timeout=60)
        pids = await server_pids(port, server)
        for count in range(1, args.max_rooms + 1):
            index = count - 1
            load_log = logs / f"room-{workers}-{count}.log"
            with load_log.open("wb") as log:
                rooms.append(await asyncio.create_subprocess_exec(
                    sys.executable, __file__, "_room", f"ws://127.0.0.1:{port}/ws", f"room{index}", str(index),
                    cwd=REPO, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
                    start_new_session=True,
                ))  # fmt: skip
            try:
                await next_event(rooms[-1], timeout=120)
                await asyncio.sleep(args.warmup)
                windows = [await measure(rooms, pids, count, args.seconds) for _ in range(args.windows)]
            except (RuntimeError, TimeoutError, OSError) as exc:
                series.steps.append(Step(count, failure=str(exc) or "timed out"))
                print(f"  W={workers} rooms={count}: {series.steps[-1].failure}\n{tail(load_log)}", file=sys.stderr)
                break
            # A shared machine's neighbours come and go: the median window (by worst-peer fps) stands for the step.
            step = sorted(windows, key=lambda w: w.fps_min)[len(windows) // 2]
            series.steps.append(step)
            print(f"  {format_row(workers, step, args.fps)}", file=sys.stderr, flush=True)
            if not fits(step, args.fps):
                break
        return series
    finally:
        for room in rooms:
            await stop(room, grace=15)
        await stop(server, grace=15)


async def measure(rooms: list[asyncio.subprocess.Process], pids: list[int], count: int, seconds: float) -> Step:
    """Every room over one window of `seconds`."""
    # The front's tree: its workers (restarted ones too) and their rooms' video processes.
    ticks, busy = cpu_ticks(pids[0]), machine_busy_ticks()
    began = time.monotonic()
    for room in rooms:
        room.stdin.write(f"measure {seconds}\n".encode())  # type: ignore[union-attr]
    reports = [await next_event(room, timeout=seconds + 30) for room in rooms]
    step = Step(count)
    elapsed = time.monotonic() - began
    step.server_cpu = (cpu_ticks(pids[0]) - ticks) / CLK_TCK / elapsed * 100
    machine_cpu = (machine_busy_ticks() - busy) / CLK_TCK / elapsed * 100
    fps = [f for r in reports for f in r["fps"]]
    step.fps_min, step.fps_mean = min(fps), sum(fps) / len(fps)
    step.audio_min = min(a for r in reports for a in r["audio"])
    step.load_cpu = sum(r["cpu"] for r in reports)
    step.others_cpu = max(machine_cpu - step.server_cpu - step.load_cpu, 0.0)
    return step


def machine_busy_ticks() -> int:
    """Every core's busy time (user, nice, system, irq, softirq, steal) since boot, in clock ticks."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return user + nice + system + irq + softirq + steal


def rerun_command() -> str:
    python = Path(sys.executable)
    if python.is_relative_to(REPO):
        python = python.relative_to(REPO)
    return shlex.join([str(python), str(Path(__file__).resolve().relative_to(REPO)), *sys.argv[1:]])


def format_row(workers: int, s: Step, fps: int) -> str:
    status = s.failure or ("fits" if fits(s, fps) else "does not fit")
    return (
        f"| {workers} | {s.rooms} | {s.rooms * PEERS_PER_ROOM} | {s.fps_mean:.1f} | {s.fps_min:.1f} "
        f"| {s.audio_min:.1f} | {s.server_cpu:.0f} | {s.load_cpu:.0f} | {s.others_cpu:.0f} | {status} |"
    )


def table(all_series: list[Series], fps: int) -> str:
    lines = [
        "| workers | rooms | peers | fps mean | fps min | audio pkt/s min | server CPU % | load CPU % "
        "| others' CPU % | status |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [format_row(s.workers, step, fps) for s in all_series for step in s.steps]
    return "\n".join(lines)


def verdict(all_series: list[Series], fps: int) -> str:
    held = {s.workers: s.held(fps) for s in all_series}
    text = ", ".join(f"{w} worker{'s' if w > 1 else ''}: {n} room{'s' if n != 1 else ''}" for w, n in held.items())
    if held.get(1) and 2 in held:
        ratio = held[2] / held[1]
        text += f"; 2 workers / 1 worker = {ratio:.2f}× (target ≥ 1.8×: {'met' if ratio >= 1.8 else 'not met'})"
    floor = f"≥ {MIN_FPS_SHARE * fps:.1f} fps and ≥ {MIN_AUDIO:.0f} audio packets/s"
    return f"Rooms held at {floor} for every peer: {text}."


def caveat(all_series: list[Series]) -> list[str]:
    """A warning when other processes took a noticeable share of the machine during the run."""
    peak = max((step.others_cpu for s in all_series for step in s.steps), default=0.0)
    if peak <= OTHERS_LIMIT:
        return []
    return [
        "",
        f"**Not a valid capacity figure:** other processes used up to {peak:.0f} % of a core during "
        "this run; they took CPU from the server and the load peers, so the rooms held are a lower bound "
        "and the two series are not comparable. Re-run on a quiet machine.",
    ]


def section(all_series: list[Series], args: argparse.Namespace) -> str:
    return "\n".join(
        [
            BEGIN,
            "## Workers: rooms of 6 peers with 1 and 2 worker processes",
            "",
            f"Measured {datetime.date.today().isoformat()} on {machine()}. A fresh `mcu serve --workers W` "
            f"({args.size}@{args.fps} composite) per W; rooms added one by one, each with its own load process of 6 "
            "pre-encoded load peers (receiving without decoding); after each new room a warm-up of "
            f"{args.warmup:g} s, then every room measured over {args.windows} windows of {args.seconds:g} s, the "
            "median window (by worst-peer fps) kept: the machine is shared. Server CPU is the front, its "
            "workers and their rooms' video processes (W = 1: the one server process and its picture "
            "processes), load CPU all load processes, both in % of one core; they share "
            "the machine's cores, so the load's CPU is taken from what the server could use. Others' CPU is "
            "what every other process used over the same window (/proc/stat's busy time minus both).",
            "",
            table(all_series, args.fps),
            "",
            verdict(all_series, args.fps),
            *caveat(all_series),
            "",
            f"Re-run: `{rerun_command()}`",
            "",
            "### Beyond one machine",
            "",
            "A room never spans processes, so what one worker holds is what one core holds, and a machine "
            "holds about (cores - its share of packet work) times that. Past one machine, nodes share the Redis "
            "room directory (docs/operations.md): a room is placed on the least loaded live node at its first "
            "join, and only signaling crosses nodes (one relayed WebSocket per client whose join reached another "
            "node); media goes straight from the client to the node that hosts its room. Redis work grows with "
            "rooms and nodes (one key each, renewed every second by its owner), not with media. What does not "
            "grow: one room's size, bound by one process; a larger meeting would need cascading (one room's "
            "composite sent into another as a participant), which this server does not do. Failover is bounded "
            "by the lease: tests/test_nodes.py measures the time from SIGKILL of a node to its room's composite "
            "back on another node, and tests/test_workers.py the same for a worker (`.venv/bin/python -m pytest "
            "-s tests/test_nodes.py tests/test_workers.py` prints both).",
            END,
        ]
    )


async def run_all(args: argparse.Namespace) -> list[Series]:
    with tempfile.TemporaryDirectory(prefix="bench_workers-") as logs:
        results = []
        for workers in args.workers:
            print(f"workers={workers} ...", file=sys.stderr, flush=True)
            results.append(await run_series(workers, args, Path(logs)))
        return results


def main() -> None:
    if sys.argv[1:2] == ["_room"]:
        url, room, index = sys.argv[2:5]
        asyncio.run(run_room(url, room, int(index)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=lambda t: [int(v) for v in t.split(",")], default=[1, 2])
    parser.add_argument("--max-rooms", type=int, default=8, help="stop adding rooms here (default 8)")
    parser.add_argument("--seconds", type=float, default=8, help="measurement window in s (default 8)")
    parser.add_argument("--warmup", type=float, default=4, help="after each new room, in s (default 4)")
    parser.add_argument("--windows", type=int, default=3, help="windows per step; the median one counts (default 3)")
    parser.add_argument("--size", default="640x360", help="composite size (default 640x360)")
    parser.add_argument("--fps", type=int, default=15, help="composite frame rate (default 15)")
    parser.add_argument("--write", type=Path, help="replace the bench_workers section of this file")
    args = parser.parse_args()
    results = asyncio.run(run_all(args))
    print(table(results, args.fps))
    print(verdict(results, args.fps))
    if args.write:
        write_section(args.write, section(results, args))
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
