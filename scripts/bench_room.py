#!/usr/bin/env python3
"""Server cost of one room: a shared composite encode against one encode per peer.

For each mode and each number of peers N, a fresh `mcu serve` runs as a
subprocess on 127.0.0.1 (1280x720@30 composite) and N load peers join one room
from ONE other process (this script, run as `_load`), so that the server's CPU
is its own. The load peers send a pre-encoded clip (VP8 320x240@15 ≈ 300 kbit/s
plus Opus) and count what they receive without decoding it.

Over the window after the warm-up: the server's CPU (utime + stime of every
thread, from /proc, in % of one core), the composite frame rate and audio
packet rate that each peer actually received (mean and worst peer), the
downstream payload bitrate per peer, and the load process's own CPU.

    .venv/bin/python scripts/bench_room.py [--peers 2,4,8,16] [--seconds 20] [--warmup 5]
                                          [--write docs/benchmarks.md]

A run that needs more than CPU_CAP % of the server or whose peers fall under
the collapse thresholds is recorded as collapsed, and larger N of that mode are
skipped: the per-peer baseline would only saturate the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import colorsys
import datetime
import json
import os
import shlex
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Awaitable, Callable, Iterable, Protocol, Sequence, TypeVar

import aiohttp

from client.counters import Received

if TYPE_CHECKING:
    from client.peer import Peer
    from client.whep import WhepViewer

REPO = Path(__file__).resolve().parent.parent
SIZE, FPS = "1280x720", 30
MODES = {"shared": [], "per-peer": ["--encode-per-peer"], "mixed": []}
#: A large room (--peers 48,72,100): 16 tiles, with and without the server's sender control, side by side.
LARGE_MODES = {"sender-control": [], "no-sender-control": ["--no-sender-control"]}
#: Tiles of a large room's composite (`--max-tiles`): the issue's 16.
LARGE_TILES = 16
#: In a large room: this many peers talk all along (quietly); the last TURNS peers join silent, each
#: in a colour of its own, and take the floor one after the other once the window is over.
TALKERS, TURNS = 3, 5
TURN_COLOURS = ("red", "green", "blue", "yellow", "magenta")
#: The colour of every other peer: grey, whose chroma no turn colour comes near.
CROWD_COLOUR = (128, 128, 128)
TALKER_AMPLITUDE, LOUD_AMPLITUDE = 0.05, 0.5
#: A turn: loud this long, then silent this long before the next one. Each turn's peer has been hidden
#: since it joined, so it starts paused (with sender control); the one before stays shown (a recent speaker).
TURN_LOUD, TURN_GAP = 2.0, 2.5
#: A new speaker's picture not seen this long after it began talking counts as missed.
SIGHT_TIMEOUT = 4.0
LARGE_BEGIN, LARGE_END = "<!-- bench_room_large:begin -->", "<!-- bench_room_large:end -->"
#: The frame rate each built-in tier must hold (mcu/config.py); "mixed" peers ask for these.
TIER_FPS = {"low": 15, "high": FPS}
DEFAULT_MIX = ["low/vp8", "high/vp8", "low/h264", "high/h264"]
TIERS_BEGIN, TIERS_END = "<!-- bench_room_tiers:begin -->", "<!-- bench_room_tiers:end -->"
#: Above this the server has used up both cores of the reference machine.
CPU_CAP = 190.0
#: A peer under these rates means the room no longer works.
MIN_FPS = FPS / 2
MIN_AUDIO = 40.0
BEGIN, END = "<!-- bench_room:begin -->", "<!-- bench_room:end -->"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    mode: str
    peers: int
    server_cpu: float = 0.0
    fps_mean: float = 0.0
    fps_min: float = 0.0
    audio_mean: float = 0.0
    audio_min: float = 0.0
    kbps_mean: float = 0.0
    load_cpu: float = 0.0
    #: Share of the whole machine taken by the hypervisor over the window: on a
    #: shared VM this is why two runs of the same room differ.
    steal: float = 0.0
    failure: str = ""
    #: "mixed" mode: per "tier/codec" label, (peers, fps mean, fps min, kbit/s mean).
    groups: dict[str, tuple[int, float, float, float]] = field(default_factory=dict)

    @property
    def collapsed(self) -> bool:
        return bool(self.failure) or (
            self.server_cpu > CPU_CAP
            or self.fps_min < self.min_fps
            or self.audio_min < MIN_AUDIO
            or any(fps_min < TIER_FPS[label.split("/")[0]] / 2 for label, (_, _, fps_min, _) in self.groups.items())
        )

    @property
    def min_fps(self) -> float:
        """Half the rate of the slowest tier received (mixed tiers: low's 15 fps)."""
        tiers = {label.split("/")[0] for label in self.groups} or {"high"}
        return min(TIER_FPS[tier] for tier in tiers) / 2

    @property
    def status(self) -> str:
        if self.failure:
            return f"collapsed ({self.failure})"
        reasons = []
        if self.server_cpu > CPU_CAP:
            reasons.append(f"CPU > {CPU_CAP:.0f} %")
        if self.fps_min < self.min_fps:
            reasons.append(f"fps < {self.min_fps:.0f}")
        if self.audio_min < MIN_AUDIO:
            reasons.append(f"audio < {MIN_AUDIO:.0f}/s")
        for label, (_, _, fps_min, _) in self.groups.items():
            if fps_min < TIER_FPS[label.split("/")[0]] / 2:
                reasons.append(f"{label} fps < {TIER_FPS[label.split('/')[0]] / 2:.0f}")
        if reasons:
            return "collapsed (" + ", ".join(reasons) + ")"
        # A saturated load process limits what the peers can receive.
        return "ok, load process saturated" if self.load_cpu > 90 else "ok"


# --- the load generator (a subprocess) ---------------------------------------------


def peer_colour(index: int) -> tuple[int, int, int]:
    """Distinct, saturated colours for any number of peers (golden-ratio hues)."""
    r, g, b = colorsys.hsv_to_rgb((index * 0.618034) % 1, 0.8, 0.9)
    return round(r * 255), round(g * 255), round(b * 255)


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


class Window:
    """A measurement window of a load process: what each of its peers (or WHEP viewers) received, and its own CPU."""

    def __init__(self, peers: Sequence[Peer | WhepViewer]) -> None:
        self._peers = peers
        self._start = [Received.of(p) for p in peers]
        self._cpu = sum(os.times()[:2])
        self._began = time.monotonic()

    def report(self) -> dict[str, list[float] | float]:
        """Since the window opened: per peer fps, audio packets/s and payload kbit/s; the process's CPU in %."""
        wall = time.monotonic() - self._began
        spans = list(zip(self._start, [Received.of(p) for p in self._peers]))
        return {
            "fps": [end.fps(start) for start, end in spans],
            "audio": [end.audio_rate(start) for start, end in spans],
            "kbps": [end.payload_kbps(start) for start, end in spans],
            "cpu": (sum(os.times()[:2]) - self._cpu) / wall * 100,
        }


async def run_load(url: str, count: int, warmup: float, seconds: float, mix: list[str] | None = None) -> None:
    """Join `count` load peers, wait for media, then report one measurement window.

    With `mix` ("tier/codec" labels), peer i asks for the tier and offers only
    the codec of label i modulo its length.
    """
    from client.encoded import PreEncodedAudioTrack, PreEncodedVideoTrack
    from client.peer import Peer

    labels = [mix[i % len(mix)] if mix else "" for i in range(count)]
    peers = [
        Peer(
            url,
            "bench",
            f"load{i}",
            video=PreEncodedVideoTrack(peer_colour(i)),
            audio=PreEncodedAudioTrack(300.0 + 75 * i),
            decode=False,
            chat=False,  # media only: the room's cost without an SCTP association per peer
            tier=label.split("/")[0] if label else None,
            video_codec=label.split("/")[1] if label else None,
        )
        for i, label in enumerate(labels)
    ]
    try:
        for peer in peers:
            await peer.join(timeout=10)
        await peers[0].wait_for(lambda: all(p.video_frames and p.audio_frames for p in peers), timeout=30)
        await asyncio.sleep(warmup)
        window = Window(peers)
        emit("start")
        await asyncio.sleep(seconds)
        emit("result", **window.report(), labels=labels)
    finally:
        await asyncio.wait_for(asyncio.gather(*(p.close() for p in peers), return_exceptions=True), 15)


async def run_large_load(url: str, count: int, warmup: float, seconds: float) -> None:
    """A large room's load: `count` peers (the driver's observer makes one more), then turns at the floor.

    The peers join in small batches; once all receive, it says "ready" and waits for "go" on stdin
    (the driver's observer is in). Over the window, each peer's upload is split by what the server's
    `visibility` said (on or off screen). Then each turn peer, silent and hidden until then, talks
    loudly: "loud" gives the moment its first loud packet is due (time.monotonic(), one clock for
    every process of the machine) and its colour.
    """
    from loadgen import UploadByScreen, counters, screen_state

    from client.encoded import PreEncodedAudioTrack, PreEncodedVideoTrack, encode_audio_clip
    from client.peer import Peer
    from client.sources import COLORS

    turns = min(TURNS, count - TALKERS)
    first_turn = count - turns
    colours = [COLORS[TURN_COLOURS[i - first_turn]] if i >= first_turn else CROWD_COLOUR for i in range(count)]
    tones = [300.0 + 25 * (i % 40) for i in range(count)]
    audios = [PreEncodedAudioTrack(tones[i], amplitude=TALKER_AMPLITUDE if i < TALKERS else 0.0) for i in range(count)]
    peers = [
        Peer(
            url, "bench", f"load{i}", video=PreEncodedVideoTrack(colours[i]), audio=audios[i], decode=False, chat=False
        )
        for i in range(count)
    ]
    for i in range(first_turn, count):
        encode_audio_clip(tones[i], 1.0, LOUD_AMPLITUDE)  # encoded now: a turn starts without an encode
    loop = asyncio.get_running_loop()
    try:
        for batch in range(0, count, 8):
            await asyncio.gather(*(peer.join(timeout=30) for peer in peers[batch : batch + 8]))
        await peers[0].wait_for(lambda: all(p.video_frames and p.audio_frames for p in peers), timeout=60)
        emit("ready")
        await loop.run_in_executor(None, sys.stdin.readline)
        await asyncio.sleep(warmup)
        uploads = [UploadByScreen() for _ in peers]
        last = [counters(p) for p in peers]
        states = [screen_state(p) for p in peers]
        started, window = time.monotonic(), Window(peers)
        emit("start")
        while (now := time.monotonic()) < started + seconds:
            await asyncio.sleep(min(0.5, started + seconds - now))
            for i, peer in enumerate(peers):
                current = counters(peer)
                uploads[i].add(states[i], current.bytes_out - last[i].bytes_out, current.at - last[i].at)
                last[i], states[i] = current, screen_state(peer)
        emit(
            "result",
            **window.report(),
            up_on=[u.kbps("on") for u in uploads],
            up_off=[u.kbps("off") for u in uploads],
        )
        for i in range(first_turn, count):
            audios[i].set_amplitude(LOUD_AMPLITUDE)
            emit("loud", peer=peers[i].name, colour=colours[i], at=time.monotonic())
            await asyncio.sleep(TURN_LOUD)
            audios[i].set_amplitude(0.0)
            await asyncio.sleep(TURN_GAP)
        emit("done")
    finally:
        await asyncio.wait_for(asyncio.gather(*(p.close() for p in peers), return_exceptions=True), 30)


# --- the driver --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def steal_ticks() -> tuple[int, int]:
    """(steal, total) jiffies of the whole machine, from the first line of /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    return fields[7], sum(fields[:8])


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants: a server's workers and its rooms' video processes."""
    pids = [pid]
    for parent in pids:  # grows while it is walked
        try:
            for task in os.listdir(f"/proc/{parent}/task"):
                with open(f"/proc/{parent}/task/{task}/children") as children:
                    pids.extend(int(child) for child in children.read().split())
        except FileNotFoundError:
            continue  # it ended meanwhile
    return pids


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process and all its descendants (every thread), in clock ticks.

    The live ones are read one by one; those that ended and were waited for count in
    their parent's cutime + cstime, so a video process that ends in a window still counts.
    """
    total = 0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/stat") as stat:
                # The command name may contain spaces: fields are counted after its ')'.
                fields = stat.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += sum(int(value) for value in fields[11:15])
    return total


async def start_server(port: int, log: IO[Any] | int, *options: str) -> asyncio.subprocess.Process:
    """`mcu serve` on 127.0.0.1:`port` with `options`, its output to `log` (a file, or DEVNULL), in a session
    of its own: Ctrl-C reaches only the benchmark, which stops it in order (`stop`)."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mcu.server.cli", "serve", "--host", "127.0.0.1", "--port", str(port), *options,
        cwd=REPO, stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip


async def wait_healthy(port: int, server: asyncio.subprocess.Process, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if server.returncode is not None:
                raise RuntimeError(f"the server exited with status {server.returncode}")
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError("the server did not answer /healthz in time")


async def stop(process: asyncio.subprocess.Process | None, grace: float = 10) -> None:
    """Terminate one process we started, by its PID; kill it if it does not go in time."""
    if process is None or process.returncode is not None:
        return
    process.terminate()
    try:
        await asyncio.wait_for(process.wait(), grace)
    except asyncio.TimeoutError:
        process.kill()
        await asyncio.wait_for(process.wait(), 5)


async def next_line(process: asyncio.subprocess.Process, timeout: float, prefix: bytes) -> bytes:
    """The next line of `process`'s output that starts with `prefix`."""
    assert process.stdout is not None

    async def read() -> bytes:
        while line := await process.stdout.readline():
            if line.startswith(prefix):
                return line
        raise RuntimeError(f"process {process.pid} exited (status {await process.wait()})")

    return await asyncio.wait_for(read(), timeout)


async def next_event(process: asyncio.subprocess.Process, timeout: float) -> dict:
    """The next JSON event line of `process` (one that `emit`s: a load process, an observer)."""
    return json.loads(await next_line(process, timeout, b"{"))


def tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


async def run_one(mode: str, count: int, args: argparse.Namespace, logs: Path) -> Result:
    """One fresh server, one load process, one measurement window."""
    result = Result(mode, count)
    port = free_port()
    server_log, load_log = logs / f"server-{mode}-{count}.log", logs / f"load-{mode}-{count}.log"
    server = load = None
    try:
        with server_log.open("wb") as log:
            server = await start_server(
                port, log, "--size", SIZE, "--fps", str(FPS), "--log-level", "WARNING", *MODES[mode]
            )
        await wait_healthy(port, server)
        with load_log.open("wb") as log:
            load = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "_load", f"ws://127.0.0.1:{port}/ws", str(count),
                str(args.warmup), str(args.seconds), *([",".join(args.mix)] if mode == "mixed" else []),
                cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=log, start_new_session=True,
            )  # fmt: skip
        try:
            await next_event(load, timeout=10 * count + 40 + args.warmup)
            started, ticks, (steal, total) = time.monotonic(), cpu_ticks(server.pid), steal_ticks()
            report = await next_event(load, timeout=args.seconds + 20)
            elapsed, used = time.monotonic() - started, cpu_ticks(server.pid) - ticks
            steal_end, total_end = steal_ticks()
            result.steal = 100 * (steal_end - steal) / max(total_end - total, 1)
        except (RuntimeError, TimeoutError) as exc:
            result.failure = str(exc) or "timed out"
            print(f"  {mode} N={count}: {result.failure}; load log:\n{tail(load_log)}", file=sys.stderr)
            return result
        result.server_cpu = used / CLK_TCK / elapsed * 100
        result.fps_mean, result.fps_min = sum(report["fps"]) / count, min(report["fps"])
        result.audio_mean, result.audio_min = sum(report["audio"]) / count, min(report["audio"])
        result.kbps_mean = sum(report["kbps"]) / count
        result.load_cpu = report["cpu"]
        for label in sorted(set(report["labels"]) - {""}):
            mine = [i for i, other in enumerate(report["labels"]) if other == label]
            fps = [report["fps"][i] for i in mine]
            kbps = sum(report["kbps"][i] for i in mine) / len(mine)
            result.groups[label] = (len(mine), sum(fps) / len(fps), min(fps), kbps)
        await asyncio.wait_for(load.wait(), 20)
        return result
    finally:
        await stop(load)
        await stop(server)


@dataclass
class LargeResult:
    """One large room: what every peer received, what each sent on and off screen, how fast a new speaker shows."""

    mode: str
    peers: int
    server_cpu: float = 0.0
    #: The busiest threads of the server and its video process: (label, % of one core).
    threads: list[tuple[str, float]] = field(default_factory=list)
    fps: list[float] = field(default_factory=list)
    audio: list[float] = field(default_factory=list)
    #: Upload per peer (kbit/s, transport bytes) over the window while on screen, and while off screen.
    up_on: list[float] = field(default_factory=list)
    up_off: list[float] = field(default_factory=list)
    #: Per turn, seconds from the new speaker's first loud packet to its colour in the observer's picture.
    sights: list[float | None] = field(default_factory=list)
    load_cpu: float = 0.0
    steal: float = 0.0
    #: What the server made and sent, by its own counters: composite frames per second over the window,
    #: and the rate it sent each receiver (kbit/s, its link's `sentBitrate` at the window's end).
    server_fps: float = 0.0
    sent_kbps: list[float] = field(default_factory=list)
    failure: str = ""

    def targets(self) -> dict[str, bool]:
        """Issue 22's targets: every peer ≥ 29 fps and 50 audio packets/s (49.5: one packet of rounding in a
        window), server ≤ 1.2 cores, an off-screen publisher ≤ 64 kbit/s up, new speaker ≤ 0.5 s median, ≤ 1 s."""
        seen = [s for s in self.sights if s is not None]
        return {
            "fps": bool(self.fps) and min(self.fps) >= 29,
            "audio": bool(self.audio) and min(self.audio) >= 49.5,
            "CPU": 0 < self.server_cpu <= 120,
            "off-screen upload": bool(self.up_off) and max(self.up_off) <= 64,
            "new speaker": bool(seen)
            and len(seen) == len(self.sights)
            and statistics.median(seen) <= 0.5
            and max(seen) <= 1.0,
        }


def thread_ticks(pids: list[int]) -> dict[tuple[int, int], int]:
    """utime + stime of every thread of `pids`, by (pid, tid)."""
    ticks = {}
    for pid in pids:
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/stat") as file:
                    fields = file.read().rsplit(")", 1)[1].split()
                ticks[pid, int(tid)] = int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return ticks


def command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def thread_label(pid: int, tid: int, server: int) -> str:
    """The process's role and the thread: "server main", "picture 1234", "server 1235 (name)" (Python's
    threads keep the process's name)."""
    role = "server" if pid == server else "picture" if "mcu.media.video_process" in command(pid) else str(pid)
    if tid == pid:
        return f"{role} main"
    try:
        with open(f"/proc/{pid}/task/{tid}/comm") as file:
            name = file.read().strip()
    except OSError:
        name = "?"
    return f"{role} {tid}" if name == "python" else f"{role} {tid} ({name})"


def thread_shares(before: dict[tuple[int, int], int], after: dict[tuple[int, int], int], elapsed: float, server: int):
    """The threads that used at least 1 % of a core over the window, busiest first."""
    shares = [
        (thread_label(pid, tid, server), (after[pid, tid] - ticks) / CLK_TCK / elapsed * 100)
        for (pid, tid), ticks in before.items()
        if (pid, tid) in after
    ]
    return sorted((s for s in shares if s[1] >= 1), key=lambda s: -s[1])


def shows_colour(frame, colour: tuple[int, int, int], tiles: int) -> bool:
    """Whether a tile of the grid composite has `colour`'s chroma at its centre (luma varies: the clip's texture)."""
    from client.sources import rgb_to_yuv
    from compositor.layout import grid_layout

    planes = frame.to_ndarray(format="yuv420p")
    height, width = frame.height, frame.width
    u = planes[height : height + height // 4].reshape(height // 2, width // 2)
    v = planes[height + height // 4 :].reshape(height // 2, width // 2)
    _, want_u, want_v = rgb_to_yuv(colour)
    for cell in grid_layout(tiles, width, height):
        x, y = (cell.x + cell.width // 2) // 2, (cell.y + cell.height // 2) // 2
        block = (slice(y - 4, y + 4), slice(x - 4, x + 4))
        if abs(u[block].mean() - want_u) < 20 and abs(v[block].mean() - want_v) < 20:
            return True
    return False


async def first_sight(observer, colour: tuple[int, int, int], since: float, tiles: int) -> float | None:
    """Seconds from `since` (time.monotonic()) to the first picture the observer decoded with `colour` in a tile."""
    checked = None
    while (now := time.monotonic()) < since + SIGHT_TIMEOUT:
        frame = observer.video_frame
        if frame is not checked:
            checked = frame
            if shows_colour(frame, colour, tiles):
                return now - since
        await asyncio.sleep(0.005)
    return None


async def run_large(mode: str, count: int, args: argparse.Namespace, logs: Path) -> LargeResult:
    """One fresh server with `count` participants: count - 1 load peers and a decoding observer (this process)."""
    from client.peer import Peer

    result = LargeResult(mode, count)
    port = free_port()
    url = f"ws://127.0.0.1:{port}/ws"
    server_log, load_log = logs / f"server-{mode}-{count}.log", logs / f"load-{mode}-{count}.log"
    server = load = observer = None
    try:
        with server_log.open("wb") as log:
            server = await start_server(
                port, log, "--size", SIZE, "--fps", str(FPS), "--log-level", "WARNING",
                "--max-tiles", str(args.max_tiles), "--max-peers", str(count), *LARGE_MODES[mode],
            )  # fmt: skip
        await wait_healthy(port, server)
        with load_log.open("wb") as log:
            load = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "_large", url, str(count - 1), str(args.warmup), str(args.seconds),
                cwd=REPO, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
                start_new_session=True,
            )  # fmt: skip
        try:
            await next_event(load, timeout=3 * count + 90)  # every load peer receives
            observer = Peer(url, "bench", "observer", chat=False)  # joins last: hidden, sends nothing
            await observer.join(timeout=30)
            await observer.wait_for(lambda: observer.video_frame is not None, timeout=30)
            assert load.stdin is not None
            load.stdin.write(b"go\n")
            await load.stdin.drain()
            await next_event(load, timeout=args.warmup + 30)
            started, ticks, (steal, total) = time.monotonic(), cpu_ticks(server.pid), steal_ticks()
            threads = thread_ticks(process_tree(server.pid))
            frames = (await room_stats(port))["videoFrames"]
            report = await next_event(load, timeout=args.seconds + 30)
            elapsed, used = time.monotonic() - started, cpu_ticks(server.pid) - ticks
            stats = await room_stats(port)
            result.server_fps = (stats["videoFrames"] - frames) / elapsed
            result.sent_kbps = [
                link["sentBitrate"] / 1000 for link in stats["links"].values() if link.get("sentBitrate") is not None
            ]
            result.threads = thread_shares(threads, thread_ticks(process_tree(server.pid)), elapsed, server.pid)
            steal_end, total_end = steal_ticks()
            result.steal = 100 * (steal_end - steal) / max(total_end - total, 1)
            result.server_cpu = used / CLK_TCK / elapsed * 100
            result.fps, result.audio, result.load_cpu = report["fps"], report["audio"], report["cpu"]
            result.up_on = [k for k in report["up_on"] if k is not None]
            result.up_off = [k for k in report["up_off"] if k is not None]
            while (event := await next_event(load, timeout=TURN_LOUD + TURN_GAP + 30))["event"] == "loud":
                result.sights.append(await first_sight(observer, tuple(event["colour"]), event["at"], args.max_tiles))
        except (RuntimeError, TimeoutError) as exc:
            result.failure = str(exc) or "timed out"
            print(f"  {mode} N={count}: {result.failure}; load log:\n{tail(load_log)}", file=sys.stderr)
        return result
    finally:
        if observer is not None:
            await observer.close()
        await stop(load, grace=40)
        await stop(server)


async def room_stats(port: int, room: str = "bench") -> dict:
    """The room's stats as the server counts them (its HTTP API; no --secret, so no token)."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/api/rooms/{room}") as response:
            return (await response.json())["stats"]


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def format_large_table(results: list[LargeResult]) -> str:
    lines = [
        "| server | N | server CPU, % of one core | fps min / median | audio pkt/s min / median "
        "| upload on screen, kbit/s median | upload off screen, kbit/s median / max "
        "| new speaker's picture, s median / worst | server made, fps | server sent each peer, kbit/s min / median "
        "| load process CPU % | steal % | targets not met |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.failure:
            lines.append(f"| {r.mode} | {r.peers} | | | | | | | | | | | failed: {r.failure} |")
            continue
        seen = [s for s in r.sights if s is not None]
        missed = len(r.sights) - len(seen)
        sight = f"{_median(seen):.2f} / {max(seen, default=float('nan')):.2f}"
        sight += f" ({missed} missed)" if missed else ""
        unmet = ", ".join(name for name, met in r.targets().items() if not met) or "none"
        lines.append(
            f"| {r.mode} | {r.peers} | {r.server_cpu:.1f} | {min(r.fps):.1f} / {_median(r.fps):.1f} "
            f"| {min(r.audio):.1f} / {_median(r.audio):.1f} | {_median(r.up_on):.0f} "
            f"| {_median(r.up_off):.0f} / {max(r.up_off, default=float('nan')):.0f} | {sight} "
            f"| {r.server_fps:.1f} | {min(r.sent_kbps, default=float('nan')):.0f} / {_median(r.sent_kbps):.0f} "
            f"| {r.load_cpu:.1f} | {r.steal:.1f} | {unmet} |"
        )
    return "\n".join(lines)


def format_threads(results: list[LargeResult], top: int = 8) -> str:
    """Per run, the busiest threads of the server (its main thread is the event loop) and its video process."""
    return "\n".join(
        f"- {r.mode}, N={r.peers}: " + ", ".join(f"{label} {share:.1f}" for label, share in r.threads[:top])
        for r in results
        if not r.failure
    )


def large_section(results: list[LargeResult], args: argparse.Namespace) -> str:
    return "\n".join(
        [
            LARGE_BEGIN,
            "## A hundred in a room",
            "",
            f"Measured {datetime.date.today().isoformat()} on {machine()}. Each row is a fresh `mcu serve` "
            f"({SIZE}@{FPS} composite, `--max-tiles {args.max_tiles}`: {args.max_tiles - 1} tiles and one for the "
            "rest) with N "
            "participants: N - 1 load peers in one separate process (pre-encoded VP8 320x240@15 ≈ 300 kbit/s and Opus, "
            "received without decoding) and one observer in the driver's process that decodes the composite. "
            f"{TALKERS} load peers talk quietly all along, the others are silent; the last {TURNS} to join are "
            "silent and hidden until their turn. `sender-control` is the default server; `no-sender-control` "
            "is `mcu serve --no-sender-control` (every hidden publisher still uploads and is decoded). "
            f"Warm-up {args.warmup:g} s, window {args.seconds:g} s: server CPU is utime + stime of the server "
            "and its video process over the window; fps and audio packets/s are what each peer received "
            "(worst and median peer); the server's own side is the composite frames it made per second and the "
            "rate it sent each receiver (its RTCP-report window at the end); upload is each peer's transport "
            "bytes (SRTP, RTCP, DTLS) per second "
            "while the server said it was on screen, and while it said it was off screen (its `visibility` "
            "message), median over the peers (and the worst off-screen one). After the window each turn peer "
            f"in turn talks loudly for {TURN_LOUD:g} s: the new speaker's picture is the time from its first "
            "loud packet to the first composite picture the observer decoded with its colour in a tile "
            "(speaker detection, the new scene, the resume and its keyframe, the composite's encode and "
            f"transport, and the observer's decode); not seen within {SIGHT_TIMEOUT:g} s counts as missed. "
            "Targets (issue 22): every peer ≥ 29 fps and ≥ 50 audio packets/s, server ≤ 120 % of a core, "
            "an off-screen publisher ≤ 64 kbit/s up, new speaker ≤ 0.5 s median and ≤ 1 s worst.",
            "",
            format_large_table(results),
            "",
            "Busiest threads over the window (% of one core; `server main` is the event loop: RTP, SRTP, "
            "signalling; `picture main` reads the upstream frames; the others are the audio clock, the picture "
            "clock, decoders and encoders):",
            "",
            format_threads(results),
            "",
            f"Re-run: `{rerun_command()}`",
            LARGE_END,
        ]
    )


def format_table(results: list[Result]) -> str:
    lines = [
        "| mode | N | server CPU, % of one core | fps mean | fps min | audio pkt/s mean | audio pkt/s min "
        "| downstream kbit/s per peer | load process CPU % | steal % | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.failure:
            lines.append(f"| {r.mode} | {r.peers} | | | | | | | | | {r.status} |")
            continue
        lines.append(
            f"| {r.mode} | {r.peers} | {r.server_cpu:.1f} | {r.fps_mean:.1f} | {r.fps_min:.1f} "
            f"| {r.audio_mean:.1f} | {r.audio_min:.1f} | {r.kbps_mean:.0f} | {r.load_cpu:.1f} | {r.steal:.1f} "
            f"| {r.status} |"
        )
    return "\n".join(lines)


def ratio_line(results: list[Result], peers: int = 8) -> str:
    by_mode = {r.mode: r for r in results if r.peers == peers}
    shared, per_peer = by_mode.get("shared"), by_mode.get("per-peer")
    if not by_mode and not any(r.collapsed for r in results):
        return f"N={peers} was not part of this run: no per-peer / shared ratio."
    if shared is None or shared.failure or shared.server_cpu <= 0:
        return f"No usable shared-encoder run at N={peers}."
    if per_peer is None or per_peer.failure:
        return f"The per-peer baseline did not run at N={peers} (it collapsed at a smaller N)."
    ratio = per_peer.server_cpu / shared.server_cpu
    suffix = " (the per-peer run collapsed: a lower bound)" if per_peer.collapsed else ""
    line = f"Server CPU at N={peers}, per-peer / shared: {ratio:.2f}×{suffix}."
    if per_peer.fps_mean < shared.fps_mean - 1 and per_peer.fps_mean > 0:
        # A saturated baseline delivers fewer frames for its CPU: compare the cost
        # of a delivered composite frame as well.
        per_frame = (per_peer.server_cpu / per_peer.fps_mean) / (shared.server_cpu / shared.fps_mean)
        line += (
            f" The per-peer run saturated the machine at {per_peer.fps_mean:.1f} fps; per delivered"
            f" frame, per-peer / shared: {per_frame:.2f}×."
        )
    return line


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, nproc {os.cpu_count()}"


def rerun_command(script_file: str = __file__) -> str:
    """The command line that ran this, for the docs (`script_file`: the script run, this one by default)."""
    python = Path(sys.executable)
    if python.is_relative_to(REPO):
        python = python.relative_to(REPO)
    script = Path(script_file).resolve().relative_to(REPO)
    return shlex.join([str(python), str(script), *sys.argv[1:]])


def section(results: list[Result], args: argparse.Namespace) -> str:
    return "\n".join(
        [
            BEGIN,
            "## One room: shared composite encode vs one encode per peer",
            "",
            f"Measured {datetime.date.today().isoformat()} on {machine()}. Each row is a fresh `mcu serve` "
            f"({SIZE}@{FPS} composite) with N load peers in one separate process, each sending a pre-encoded "
            "VP8 320x240@15 clip (≈300 kbit/s) and Opus, and receiving without decoding. "
            f"Warm-up {args.warmup:g} s, window {args.seconds:g} s. Server CPU is utime + stime of the server "
            "process and its video processes (all threads) over the window; fps and audio are what each "
            "peer received (mean and worst peer); downstream is encoded payload without RTP overhead; steal "
            "is the share of the machine "
            "the hypervisor took over the window (these VMs are shared: with steal above a few percent, "
            "expect fps and CPU to be worse than on a quiet machine). The load peers all talk at once at "
            "the same level. A run is collapsed above "
            f"{CPU_CAP:.0f} % CPU, under {MIN_FPS:.0f} fps or under {MIN_AUDIO:.0f} audio packets/s for any peer; "
            "larger N of that mode are then skipped.",
            "",
            format_table(results),
            "",
            ratio_line(results),
            "",
            f"Re-run: `{rerun_command()}`",
            END,
        ]
    )


def format_tiers_table(results: list[Result]) -> str:
    """Mixed tiers and codecs: one row per tier/codec group of each run."""
    rows = [
        "| N | server CPU, % of one core | tier/codec | peers | fps mean | fps min | kbit/s mean per peer "
        "| steal % | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for label, (peers, fps_mean, fps_min, kbps) in r.groups.items() or {"-": (0, 0.0, 0.0, 0.0)}.items():
            rows.append(
                f"| {r.peers} | {r.server_cpu:.1f} | {label} | {peers} | {fps_mean:.1f} | {fps_min:.1f} | {kbps:.0f} "
                f"| {r.steal:.1f} | {r.status} |"
            )
    return "\n".join(rows)


def tiers_section(results: list[Result], args: argparse.Namespace) -> str:
    return "\n".join(
        [
            TIERS_BEGIN,
            "## One room, mixed output tiers and codecs",
            "",
            f"Measured {datetime.date.today().isoformat()} on {machine()}. A fresh `mcu serve` (tiers high = "
            f"{SIZE}@{FPS}, 1.5 Mbit/s, and low = 640x360@15, 400 kbit/s) with N load peers in one process, as "
            f"above; the peers ask in turn for {', '.join(args.mix)} (tier / the only video codec offered). "
            "The server runs one encoder per tier and codec in use, whatever N; the low canvas is the high one "
            "scaled down. fps is what the peers of each group received; a group must hold half its tier's rate. "
            f"Warm-up {args.warmup:g} s, window {args.seconds:g} s.",
            "",
            format_tiers_table(results),
            "",
            f"Re-run: `{rerun_command()}`",
            TIERS_END,
        ]
    )


def write_section(path: Path, text: str) -> None:
    """Replace the marked section of `path` (or add it; create the file if missing)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "# Benchmarks\n\nMeasured figures of the MCU; each section names the script and command that "
            "re-run it.\n\n" + text + "\n"
        )
        return
    current = path.read_text()
    begin, end = text.split("\n", 1)[0], text.rsplit("\n", 1)[1]
    if begin in current and end in current:
        before, rest = current.split(begin, 1)
        after = rest.split(end, 1)[1]
        path.write_text(before + text + after)
    else:
        path.write_text(current.rstrip("\n") + "\n\n" + text + "\n")


class Run(Protocol):
    """One measured run of a series: a mode at one number of peers."""

    @property
    def collapsed(self) -> bool: ...


R = TypeVar("R", bound=Run)
T = TypeVar("T")


async def run_reported(mode: str, count: int, run: Awaitable[T], table: Callable[[list[T]], str]) -> T:
    """`run` (`mode` with `count` peers), announced on stderr and its row (the last line of its `table`) shown
    as it ends."""
    print(f"{mode} N={count} ...", file=sys.stderr, flush=True)
    result = await run
    print(f"  {table([result]).splitlines()[-1]}", file=sys.stderr, flush=True)
    return result


async def run_series(
    modes: Iterable[str],
    counts: list[int],
    run: Callable[[str, int], Awaitable[R]],
    table: Callable[[list[R]], str],
    keep_going: bool = False,
) -> list[R]:
    """Each mode at each count in turn (`run_reported`).

    A mode's larger counts are skipped once one collapsed, unless `keep_going`: they would only saturate the machine.
    """
    results: list[R] = []
    for mode in modes:
        for count in counts:
            result = await run_reported(mode, count, run(mode, count), table)
            results.append(result)
            if result.collapsed and not keep_going:
                break
    return results


async def run_all(args: argparse.Namespace) -> list[Result | LargeResult]:
    results: list[Result | LargeResult] = []
    with tempfile.TemporaryDirectory(prefix="bench_room-") as logs:
        # Large rooms: with and without sender control side by side at each N, none skipped.
        for count in args.peers if any(mode in LARGE_MODES for mode in args.modes) else []:
            for mode in (m for m in args.modes if m in LARGE_MODES):
                large = await run_reported(mode, count, run_large(mode, count, args, Path(logs)), format_large_table)
                results.append(large)
        modes = [m for m in args.modes if m in MODES]
        results += await run_series(modes, args.peers, lambda m, n: run_one(m, n, args, Path(logs)), format_table)
    return results


def numbers(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def main() -> None:
    if sys.argv[1:2] == ["_large"]:
        url, count, warmup, seconds = sys.argv[2:6]
        asyncio.run(run_large_load(url, int(count), float(warmup), float(seconds)))
        return
    if sys.argv[1:2] == ["_load"]:
        url, count, warmup, seconds = sys.argv[2:6]
        mix = sys.argv[6].split(",") if len(sys.argv) > 6 else None
        asyncio.run(run_load(url, int(count), float(warmup), float(seconds), mix))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--peers", type=numbers, help="numbers of peers (default 2,4,8,16; 48,72,100 with the large-room modes)"
    )
    parser.add_argument("--seconds", type=float, default=20, help="measurement window in s (default 20)")
    parser.add_argument("--warmup", type=float, default=5, help="warm-up after all peers receive, in s (default 5)")
    parser.add_argument(
        "--modes",
        type=lambda t: t.split(","),
        default=["shared", "per-peer"],
        help="modes to run among shared, per-peer, mixed, sender-control, no-sender-control (default "
        "shared,per-peer); mixed: peers on tiers and codecs by --mix; sender-control and no-sender-control: "
        f"a large room, {LARGE_TILES} tiles, with and without the server's sender control",
    )
    parser.add_argument(
        "--mix",
        type=lambda t: t.split(","),
        default=DEFAULT_MIX,
        help=f"mixed mode: tier/codec given to the peers in turn (default {','.join(DEFAULT_MIX)})",
    )
    parser.add_argument(
        "--max-tiles", type=int, default=LARGE_TILES, help=f"large-room modes: tiles of the composite ({LARGE_TILES})"
    )
    parser.add_argument(
        "--write", type=Path, help="replace the bench_room section of this file (e.g. docs/benchmarks.md)"
    )
    args = parser.parse_args()
    if unknown := set(args.modes) - set(MODES) - set(LARGE_MODES):
        parser.error(f"unknown modes: {', '.join(sorted(unknown))}")
    if args.peers is None:
        args.peers = [48, 72, 100] if set(args.modes) <= set(LARGE_MODES) else [2, 4, 8, 16]
    try:
        results = asyncio.run(run_all(args))
    except KeyboardInterrupt:
        sys.exit(130)
    large = [r for r in results if isinstance(r, LargeResult)]
    mixed = [r for r in results if r.mode == "mixed"]
    results = [r for r in results if r.mode in MODES and r.mode != "mixed"]
    if large:
        print(format_large_table(large))
        print(format_threads(large))
    if results:
        print(format_table(results))
        print(ratio_line(results))
    if mixed:
        print(format_tiers_table(mixed))
    if args.write:
        if results:
            write_section(args.write, section(results, args))
        if mixed:
            write_section(args.write, tiers_section(mixed, args))
        if large:
            write_section(args.write, large_section(large, args))
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
