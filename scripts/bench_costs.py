#!/usr/bin/env python3
"""What one participant of each kind costs an mcu room's server: the figures behind the room cap.

One fresh `mcu serve` (1280x720@30 composite, 16 tiles, a secret so that viewers
can be given the subscribe grant alone) per server setting; load peers join it
from ONE other process in stages, and the server's CPU is measured over a window
after each stage has settled (past the 2 s hold before a hidden publisher is
paused), with the default --unit of 8:

1. 8 camera publishers (pre-encoded VP8 320x240@15 and Opus; 3 of them talk), all on screen;
2. 8 more: 16 on screen;
3. 16 more, silent: 15 on screen and 17 off screen (the grid keeps one tile for "+N");
4. 16 viewers (subscribe grant only: no upstream, no tile);
5. 16 audio-only participants (a microphone, camera off as a browser without one says: `setMedia`).

Every participant receives the composite without decoding it. From the
differences: the cost of one publisher on screen, off screen, one viewer and one
audio-only participant, for the whole server and for its event loop thread (the
one thread every packet of the room goes through, so the one that bounds a room).

    .venv/bin/python scripts/bench_costs.py [--servers sender-control,no-sender-control] [--seconds 8]
                                           [--write docs/operations.md]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench_room import (
    CLK_TCK,
    FPS,
    REPO,
    SIZE,
    cpu_ticks,
    emit,
    free_port,
    machine,
    next_event,
    rerun_command,
    start_server,
    stop,
    tail,
    thread_ticks,
    wait_healthy,
    write_section,
)

SECRET = "bench-costs"
#: The stages, each measured once settled: (what joins, how many, in units of --unit, 8 by default).
#: The composite has 2 units of tiles: the first two stages fill it, the third overflows it.
STAGES = (("camera", 1), ("camera", 1), ("camera", 2), ("viewer", 2), ("audio", 2))
TALKERS = 3
SERVERS = {"sender-control": [], "no-sender-control": ["--no-sender-control"]}
BEGIN, END = "<!-- bench_costs:begin -->", "<!-- bench_costs:end -->"


# --- the load (a subprocess) ---------------------------------------------------------


async def run_load(url: str, unit: int, settle: float, seconds: float) -> None:
    """Join the stages one after the other; around each window say "window" and "end"."""
    from client.encoded import PreEncodedAudioTrack, PreEncodedVideoTrack
    from client.peer import Peer
    from signaling import grants
    from signaling.tokens import issue

    peers: list[Peer] = []
    try:
        for stage, (kind, units) in enumerate(STAGES):
            count = units * unit
            joining = []
            for _ in range(count):
                index = len(peers) + len(joining)
                name = f"{kind}{index}"
                allowed = {grants.SUBSCRIBE} if kind == "viewer" else grants.ALL_GRANTS
                token = issue(SECRET, "bench", name, 3600, allowed)
                level = 0.05 if index < TALKERS else 0.0
                audio = None if kind == "viewer" else PreEncodedAudioTrack(300.0 + 25 * (index % 40), amplitude=level)
                video = PreEncodedVideoTrack((128, 128, 128)) if kind == "camera" else None
                joining.append(
                    Peer(url, "bench", name, video=video, audio=audio, decode=False, chat=False, token=token)
                )
            for batch in range(0, count, 8):
                await asyncio.gather(*(peer.join(timeout=30) for peer in joining[batch : batch + 8]))
            for peer in joining if kind == "audio" else []:
                await peer.set_media(video=False, audio=True)  # what a page without a camera says
            peers += joining
            await peers[0].wait_for(lambda: all(p.video_frames for p in peers), timeout=60)
            await asyncio.sleep(settle)
            emit("window", stage=stage)
            await asyncio.sleep(seconds)
            emit("end", stage=stage)
    finally:
        await asyncio.wait_for(asyncio.gather(*(p.close() for p in peers), return_exceptions=True), 30)


# --- the driver ----------------------------------------------------------------------


@dataclass
class Stage:
    """One stage's window: the whole server's CPU and its event loop thread's, in % of one core."""

    cameras: int
    viewers: int
    audio_only: int
    server: float
    loop: float


@dataclass
class Series:
    server: str
    unit: int
    stages: list[Stage] = field(default_factory=list)
    failure: str = ""

    def costs(self) -> dict[str, tuple[float, float]]:
        """Per participant of each kind: (server %, event loop %) of one core, from the stages' differences."""
        s1, s2, s3, s4, s5 = ((s.server, s.loop) for s in self.stages)
        unit = self.unit
        on = tuple((b - a) / unit for a, b in zip(s1, s2))
        # Stage 3: 2 units - 1 on screen and 2 units + 1 off: one shown before left the grid for "+N".
        off = tuple((b - a + shown) / (2 * unit + 1) for a, b, shown in zip(s2, s3, on))
        viewer = tuple((b - a) / (2 * unit) for a, b in zip(s3, s4))
        audio = tuple((b - a) / (2 * unit) for a, b in zip(s4, s5))
        return {"publisher on screen": on, "publisher off screen": off, "viewer": viewer, "audio-only": audio}


async def run_series(server_name: str, args: argparse.Namespace, logs: Path) -> Series:
    series = Series(server_name, args.unit)
    port = free_port()
    server_log, load_log = logs / f"server-{server_name}.log", logs / f"load-{server_name}.log"
    server = load = None
    try:
        with server_log.open("wb") as log:
            server = await start_server(
                port, log, "--size", SIZE, "--fps", str(FPS), "--log-level", "WARNING",
                "--max-tiles", str(2 * args.unit), "--max-peers", "200", "--secret", SECRET, *SERVERS[server_name],
            )  # fmt: skip
        await wait_healthy(port, server)
        with load_log.open("wb") as log:
            load = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "_load", f"ws://127.0.0.1:{port}/ws", str(args.unit), str(args.settle),
                str(args.seconds),
                cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=log, start_new_session=True,
            )  # fmt: skip
        cameras = viewers = audio = 0
        try:
            for kind, units in STAGES:
                count = units * args.unit
                cameras += count * (kind == "camera")
                viewers += count * (kind == "viewer")
                audio += count * (kind == "audio")
                await next_event(load, timeout=120 + args.settle)
                started, ticks = time.monotonic(), cpu_ticks(server.pid)
                loop_before = thread_ticks([server.pid]).get((server.pid, server.pid), 0)
                await next_event(load, timeout=args.seconds + 30)
                elapsed = time.monotonic() - started
                loop_after = thread_ticks([server.pid]).get((server.pid, server.pid), 0)
                share = 100 / CLK_TCK / elapsed
                used = cpu_ticks(server.pid) - ticks
                series.stages.append(Stage(cameras, viewers, audio, used * share, (loop_after - loop_before) * share))
                print(f"  {server_name}: {series.stages[-1]}", file=sys.stderr, flush=True)
        except (RuntimeError, TimeoutError) as exc:
            series.failure = str(exc) or "timed out"
            print(f"  {server_name}: {series.failure}; load log:\n{tail(load_log)}", file=sys.stderr)
        return series
    finally:
        await stop(load, grace=40)
        await stop(server)


#: The share of a core the event loop thread may use at most: past it, packets queue and the room stutters.
LOOP_BUDGET = 90.0


def holds(series: Series) -> int | None:
    """Participants one room holds before its event loop thread reaches LOOP_BUDGET: the shown tiles'
    publishers (stage 2), then the dearest of an off-screen publisher, a viewer and an audio-only participant."""
    if len(series.stages) != len(STAGES):
        return None
    dearest = max(loop for _, loop in list(series.costs().values())[1:])
    shown = series.stages[1]
    return shown.cameras + int((LOOP_BUDGET - shown.loop) / dearest) if dearest > 0 else None


def stages_table(all_series: list[Series]) -> str:
    lines = [
        "| server | cameras (on / off screen) | viewers | audio-only | server CPU, % of one core "
        "| its event loop thread, % |",
        "|---|---|---|---|---|---|",
    ]
    for series in all_series:
        tiles = 2 * series.unit
        for s in series.stages:
            shown = s.cameras if s.cameras <= tiles else tiles - 1
            lines.append(
                f"| {series.server} | {s.cameras} ({shown} / {s.cameras - shown}) | {s.viewers} | {s.audio_only} "
                f"| {s.server:.1f} | {s.loop:.1f} |"
            )
        if series.failure:
            lines.append(f"| {series.server} | failed: {series.failure} | | | | |")
    return "\n".join(lines)


def costs_table(all_series: list[Series]) -> str:
    lines = [
        "| server | participant | server CPU each, % of one core | event loop thread each, % |",
        "|---|---|---|---|",
    ]
    for series in all_series:
        if len(series.stages) == len(STAGES):
            for kind, (total, loop) in series.costs().items():
                lines.append(f"| {series.server} | {kind} | {total:.2f} | {loop:.2f} |")
    return "\n".join(lines)


def section(all_series: list[Series], args: argparse.Namespace) -> str:
    return "\n".join(
        [
            BEGIN,
            f"Measured {datetime.date.today().isoformat()} on {machine()} with `scripts/bench_costs.py` ({SIZE}@{FPS} "
            f"composite, {2 * args.unit} tiles; every participant receives the composite; settle {args.settle:g} s, "
            f"window {args.seconds:g} s per stage):",
            "",
            stages_table(all_series),
            "",
            costs_table(all_series),
            "",
            *(
                f"{series.server}: one room holds about {count} participants before its event loop thread "
                f"reaches {LOOP_BUDGET:.0f} % of a core ({2 * series.unit} shown, the others at the dearest of the "
                "three other kinds)."
                for series in all_series
                if (count := holds(series)) is not None
            ),
            "",
            f"Re-run: `{rerun_command(__file__)}`",
            END,
        ]
    )


async def run_all(args: argparse.Namespace) -> list[Series]:
    with tempfile.TemporaryDirectory(prefix="bench_costs-") as logs:
        return [await run_series(name, args, Path(logs)) for name in args.servers]


def main() -> None:
    if sys.argv[1:2] == ["_load"]:
        url, unit, settle, seconds = sys.argv[2:6]
        asyncio.run(run_load(url, int(unit), float(settle), float(seconds)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--servers",
        type=lambda t: t.split(","),
        default=list(SERVERS),
        help="server settings among sender-control, no-sender-control (default both)",
    )
    parser.add_argument("--unit", type=int, default=8, help="participants per stage unit; tiles: 2 units (default 8)")
    parser.add_argument("--seconds", type=float, default=8, help="window per stage in s (default 8)")
    parser.add_argument("--settle", type=float, default=4, help="wait after a stage joined, in s (default 4)")
    parser.add_argument("--write", type=Path, help="replace the bench_costs section of this file (docs/operations.md)")
    args = parser.parse_args()
    if unknown := set(args.servers) - set(SERVERS):
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    all_series = asyncio.run(run_all(args))
    print(stages_table(all_series))
    print(costs_table(all_series))
    for series in all_series:
        print(f"{series.server}: holds about {holds(series)} participants (event loop ≤ {LOOP_BUDGET:.0f} %)")
    if args.write:
        write_section(args.write, section(all_series, args))
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
