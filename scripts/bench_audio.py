#!/usr/bin/env python3
"""Audio that scales: server cost of audio-only rooms, K loudest talkers against everyone personal.

For each mode and each number of peers N, a fresh `mcu serve` runs as a
subprocess on 127.0.0.1 and N load peers join one room from load processes of
their own (`_load`, at most 40 peers each), so that the server's CPU is its own.
Every load peer sends a pre-encoded Opus tone (each its own frequency, all
talking at once: the worst case for the mixer) and no video; the server's
composite is made as cheap as it goes (160x96 at 1 fps of placeholders), so
what is measured is the audio path. The peers count the audio packets they
receive without decoding them.

Over the window after the warm-up: the server's CPU (every thread, from /proc,
in % of one core) and that of its audio thread alone, the Opus encodes per
audio tick (from the room's counters in the HTTP API), and the audio packet
rate that each peer received (mean and worst peer).

    .venv/bin/python scripts/bench_audio.py [--peers 10,20,40,80] [--seconds 15] [--warmup 5]
                                           [--write docs/benchmarks.md]

Modes: `k3` is the default server (the 3 loudest talkers get a personal
mix-minus and encode, everyone else shares one) with peers that send the
RFC 6464 level header as browsers do (so the server decodes only who may be
heard); `k3-no-header` the same with peers that do not (every peer decoded);
`personal` is `--audio-talkers 0` (a personal mix and encode for every listener);
`kN` is `--audio-talkers N` with the header (`--modes k1,k2,k3,k4,k6`: what a talker costs).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import re
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_room import (  # noqa: E402  (a sibling script, not a package)
    CLK_TCK,
    REPO,
    cpu_ticks,
    emit,
    free_port,
    machine,
    next_event,
    run_reported,
    start_server,
    stop,
    tail,
    wait_healthy,
    write_section,
)

#: Server flags, and whether the load peers send the RFC 6464 level header (as browsers do).
MODES = {"k3": ([], True), "k3-no-header": ([], False), "personal": (["--audio-talkers", "0"], True)}
PEERS_PER_LOAD = 40
MIN_AUDIO = 45.0
BEGIN, END = "<!-- bench_audio:begin -->", "<!-- bench_audio:end -->"
#: `kN` for any other N: the server with `--audio-talkers N` (to weigh the cost of a talker).
MODE_PATTERN = re.compile(r"k(\d+)")
#: Janus 1.1.2 AudioBridge on this machine, same clip and method (/work/shared/notes/media-facts.md).
JANUS = {10: 11.3, 20: 19.6, 40: 41.5, 80: 83.5}


def mode_settings(mode: str) -> tuple[list[str], bool]:
    """The server flags and the level header of `mode` (one of MODES, or kN)."""
    if mode in MODES:
        return MODES[mode]
    match = MODE_PATTERN.fullmatch(mode)
    if match is None:
        raise ValueError(f"unknown mode {mode!r}: one of {', '.join(MODES)} or kN")
    return ["--audio-talkers", match.group(1)], True


@dataclass
class Result:
    mode: str
    peers: int
    server_cpu: float = 0.0
    audio_thread_cpu: float = 0.0
    encodes_per_tick: float = 0.0
    decodes_per_tick: float = 0.0
    audio_mean: float = 0.0
    audio_min: float = 0.0
    load_cpu: float = 0.0
    failure: str = ""

    @property
    def status(self) -> str:
        if self.failure:
            return f"failed ({self.failure})"
        if self.audio_min < MIN_AUDIO:
            return f"degraded (a peer under {MIN_AUDIO:.0f} packets/s)"
        return "ok, load processes saturated" if self.load_cpu > 90 else "ok"


async def run_load(url: str, first: int, count: int, seconds: float, send_levels: bool) -> None:
    """Join `count` audio-only load peers, wait for media, report one window (on a 'go' line)."""
    from client.encoded import PreEncodedAudioTrack
    from client.peer import Peer

    peers = [
        Peer(url, "bench", f"load{i}", audio=PreEncodedAudioTrack(200.0 + 37 * i, amplitude=0.1,
             send_levels=send_levels), decode=False, chat=False)
        for i in range(first, first + count)
    ]  # fmt: skip
    try:
        for peer in peers:
            await peer.join(timeout=20)
        await peers[0].wait_for(lambda: all(p.audio_frames for p in peers), timeout=60)
        emit("ready")
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # the driver's "go"
        times = os.times()
        start = time.monotonic(), times.user + times.system, [p.audio_frames for p in peers]
        await asyncio.sleep(seconds)
        times = os.times()
        wall = time.monotonic() - start[0]
        emit(
            "result",
            audio=[(p.audio_frames - a) / wall for p, a in zip(peers, start[2])],
            cpu=(times.user + times.system - start[1]) / wall * 100,
        )
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # stay until the driver is done
    finally:
        await asyncio.wait_for(asyncio.gather(*(p.close() for p in peers), return_exceptions=True), 30)


def rerun_command() -> str:
    script = Path(__file__).resolve().relative_to(REPO)
    return shlex.join([".venv/bin/python", str(script), *sys.argv[1:]])


async def room_counters(port: int) -> tuple[int, int, float, int]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/api/rooms/bench") as response:
            stats = (await response.json())["stats"]
    return stats["audioMixes"], stats["audioEncodes"], stats["audioCpuSeconds"], stats["audioDecodes"]


async def run_one(mode: str, count: int, args: argparse.Namespace, logs: Path) -> Result:
    result = Result(mode, count)
    port = free_port()
    server = None
    loads: list[asyncio.subprocess.Process] = []
    load_logs: list[Path] = []
    try:
        with (logs / f"server-{mode}-{count}.log").open("wb") as log:
            server = await start_server(
                port, log, "--size", "160x96", "--fps", "1", "--max-peers", str(count), "--log-level", "WARNING",
                *mode_settings(mode)[0],
            )  # fmt: skip
        await wait_healthy(port, server)
        for first in range(0, count, PEERS_PER_LOAD):
            load_logs.append(logs / f"load-{mode}-{count}-{first}.log")
            with load_logs[-1].open("wb") as log:
                loads.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        __file__,
                        "_load",
                        f"ws://127.0.0.1:{port}/ws",
                        str(first),
                        str(min(PEERS_PER_LOAD, count - first)),
                        str(args.seconds),
                        str(int(mode_settings(mode)[1])),
                        cwd=REPO,
                        stdin=asyncio.subprocess.PIPE,
                        stdout=asyncio.subprocess.PIPE,
                        stderr=log,
                        start_new_session=True,
                    )  # fmt: skip
                )
        try:
            for load in loads:
                await next_event(load, timeout=2 * count + 60)
            await asyncio.sleep(args.warmup)
            for load in loads:
                assert load.stdin is not None
                load.stdin.write(b"go\n")
            started, ticks = time.monotonic(), cpu_ticks(server.pid)
            mixes, encodes, audio_seconds, decodes = await room_counters(port)
            reports = [await next_event(load, timeout=args.seconds + 30) for load in loads]
            elapsed = time.monotonic() - started
            used = cpu_ticks(server.pid) - ticks
            mixes_end, encodes_end, audio_seconds_end, decodes_end = await room_counters(port)
            for load in loads:
                assert load.stdin is not None
                load.stdin.write(b"done\n")
        except (RuntimeError, TimeoutError) as exc:
            result.failure = str(exc) or "timed out"
            logs_tail = "\n".join(tail(log) for log in load_logs)
            print(f"  {mode} N={count}: {result.failure}; load logs:\n{logs_tail}", file=sys.stderr)
            return result
        result.server_cpu = used / CLK_TCK / elapsed * 100
        result.audio_thread_cpu = (audio_seconds_end - audio_seconds) / elapsed * 100
        result.encodes_per_tick = (encodes_end - encodes) / max(mixes_end - mixes, 1)
        result.decodes_per_tick = (decodes_end - decodes) / max(mixes_end - mixes, 1)
        audio = [rate for report in reports for rate in report["audio"]]
        result.audio_mean, result.audio_min = sum(audio) / len(audio), min(audio)
        result.load_cpu = max(report["cpu"] for report in reports)
        await asyncio.wait_for(asyncio.gather(*(load.wait() for load in loads)), 40)
        return result
    finally:
        for load in loads:
            await stop(load)
        await stop(server)


def format_table(results: list[Result]) -> str:
    lines = [
        "| mode | N | server CPU, % of one core | audio thread CPU % | Opus encodes per tick | peers decoded per tick "
        "| audio pkt/s mean "
        "| audio pkt/s min | busiest load process CPU % | Janus AudioBridge CPU % | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        janus = f"{JANUS[r.peers]:.1f}" if r.peers in JANUS else ""
        if r.failure:
            lines.append(f"| {r.mode} | {r.peers} | | | | | | | | {janus} | {r.status} |")
            continue
        lines.append(
            f"| {r.mode} | {r.peers} | {r.server_cpu:.1f} | {r.audio_thread_cpu:.1f} | {r.encodes_per_tick:.2f} "
            f"| {r.decodes_per_tick:.2f} "
            f"| {r.audio_mean:.1f} | {r.audio_min:.1f} | {r.load_cpu:.1f} | {janus} | {r.status} |"
        )
    return "\n".join(lines)


def section(results: list[Result], args: argparse.Namespace) -> str:
    return "\n".join(
        [
            BEGIN,
            "## Audio-only rooms: K loudest talkers vs a personal mix for everyone",
            "",
            f"Measured {datetime.date.today().isoformat()} on {machine()}. Each row is a fresh `mcu serve` with N "
            f"audio-only load peers (at most {PEERS_PER_LOAD} per load process), each sending a pre-encoded Opus "
            "tone of its own, all at once, and counting the packets it receives without decoding. `k3`: the "
            "default server, the 3 loudest get a personal mix-minus and encode and the others share one; "
            "`k3-no-header`: the same, but the peers send no RFC 6464 level header, so the server decodes every "
            "peer to know its level (with the header, as browsers send it, it decodes only the talkers and "
            "those who may become one); "
            "`personal`: `--audio-talkers 0`, a mix and an encode for every listener. The composite is "
            "160x96@1 fps of placeholders, so the video path costs next to nothing. Server CPU is every thread "
            "of the server process and its video process over the window; the audio thread (decode, mix, "
            "encode) is also shown alone (its thread CPU time, the room's `audioCpuSeconds`); the rest is "
            "mostly RTP/SRTP/DTLS on the event loop, which grows with N whatever the mode. "
            f"Warm-up {args.warmup:g} s, window {args.seconds:g} s. The Janus column is Janus 1.1.2 AudioBridge "
            "(C) measured on this machine with the same method and clip (/work/shared/notes/media-facts.md), "
            "for reference.",
            "",
            format_table(results),
            "",
            f"Re-run: `{rerun_command()}`",
            END,
        ]
    )


async def run_all(args: argparse.Namespace) -> list[Result]:
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench_audio-") as logs:
        for count in args.peers:
            for mode in args.modes:
                run = run_one(mode, count, args, Path(logs))
                results.append(await run_reported(mode, count, run, format_table))
    results.sort(key=lambda r: (args.modes.index(r.mode), r.peers))
    return results


def main() -> None:
    if sys.argv[1:2] == ["_load"]:
        url, first, count, seconds, send_levels = sys.argv[2:7]
        asyncio.run(run_load(url, int(first), int(count), float(seconds), send_levels == "1"))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=lambda t: [int(v) for v in t.split(",")], default=[10, 20, 40, 80])
    parser.add_argument("--seconds", type=float, default=15, help="measurement window in s (default 15)")
    parser.add_argument("--warmup", type=float, default=5, help="warm-up after all peers receive, in s (default 5)")
    parser.add_argument(
        "--modes", type=lambda t: t.split(","), default=list(MODES), help="k3,personal; kN: --audio-talkers N"
    )
    parser.add_argument("--write", type=Path, help="replace (or add) this benchmark's section of a Markdown file")
    args = parser.parse_args()
    results = asyncio.run(run_all(args))
    print(format_table(results))
    print(json.dumps([r.__dict__ for r in results]), file=sys.stderr)
    if args.write:
        write_section(args.write, section(results, args))


if __name__ == "__main__":
    main()
