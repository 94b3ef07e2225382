#!/usr/bin/env python3
"""Broadcast: what WHEP viewers of one room cost the server, and how late they see it.

For each number of viewers N, a fresh `mcu serve` runs on 127.0.0.1 (1280x720@30
composite) with an 8-peer room: load peers in one process sending a pre-encoded
clip (VP8 320x240@15 ≈ 300 kbit/s and Opus) and counting what they receive
without decoding it, as `scripts/bench_room.py`'s. Then N WHEP viewers of the
room (`client/whep.py`, `decode=False`: they count the composite's frames and the
mix's packets, so 40 of them fit beside the server) in one more process.

Over the window after the warm-up: the server's CPU (utime + stime of the server
and its video process, every thread, from /proc, in % of one core) and its
busiest threads; what each viewer received (composite frames and audio packets
a second, worst and median) and what the room's participants received; the
viewers' process's own CPU.

Then the latency: a participant sends `client/stamp.py`'s stamped frames (its
capture time drawn in the picture), and in one more process a WHEP viewer and a
participant (the normal WebSocket path) both decode the composite and read the
stamp in its tile: glass to glass, capture to decoded arrival, median and p95,
on one machine's clock.

With `--outputs` (the default) one more row runs the room with no viewer but an
RTMP stream (to a Debian `ffmpeg -listen 1` that discards it) and HLS on, and the
latency run reads both back as well: the RTMP stream in the latency process
(PyAV listening), the HLS playlist from the server (PyAV's HLS demuxer), once
per HLS segment length (`--hls-segments`), also as a player shows it.

Fresh servers of the same room differ by several % of a core here, more than a
viewer costs. So the costs of one viewer, one participant and one RTMP stream
come from toggled runs (`--rounds`): one server and one room, windows without and
with 10 or 40 viewers, 10 more participants, or (in a second server, whose room
already encodes H.264 for a participant) an RTMP stream, in turn.

    .venv/bin/python scripts/bench_broadcast.py [--viewers 0,1,10,40] [--seconds 20] [--warmup 5]
        [--rounds 3] [--toggle-viewers 10,40] [--participants 10] [--hls-segments 2,1]
        [--no-latency] [--no-outputs] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_room import (  # noqa: E402
    CLK_TCK,
    REPO,
    Window,
    cpu_ticks,
    emit,
    free_port,
    machine,
    next_event,
    peer_colour,
    process_tree,
    rerun_command,
    run_reported,
    run_series,
    start_server,
    steal_ticks,
    stop,
    tail,
    thread_shares,
    thread_ticks,
    wait_healthy,
    write_section,
)

ROOM = "bench"
SIZE, FPS = "1280x720", 30
#: Participants of the room: load peers (in the latency run: a stamper, load peers and the observer).
PARTICIPANTS = 8
#: The stamper's picture size and rate (it is fitted into its tile of the composite).
STAMP_SIZE, STAMP_FPS = (320, 240), 15
#: Above this the server has used up both cores of the reference machine.
CPU_CAP = 190.0
#: A viewer or participant under these rates means the broadcast no longer works.
MIN_FPS, MIN_AUDIO = FPS / 2, 40.0
#: LiveKit Egress's admission control budgets this many CPUs for one room-composite stream.
EGRESS_CPUS = 3
#: Server CPU, % of one core, by which two runs of the same room differ on the shared reference machine.
NOISE = 5.0
BEGIN, END = "<!-- bench_broadcast:begin -->", "<!-- bench_broadcast:end -->"
#: The RTMP stream's path on its listener (a key, as an ingest URL has).
RTMP_PATH = "live/bench-key"


# --- the load processes (subprocesses) -----------------------------------------------------------------------


async def obey(open_window: Callable[[], None], report: Callable[[], dict[str, Any]]) -> None:
    """Answer the driver on stdin until it closes it: "window" opens the measurement window, "report" sends
    what was seen since. The driver opens every process's window at once, so that they measure the same span."""
    loop = asyncio.get_running_loop()
    while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
        if line == "window":
            open_window()
            emit("start")
        elif line == "report":
            emit("result", **report())


async def obey_windows(receivers: list[Any]) -> None:
    """`obey` for load receivers: each window counts what they received since it opened (`Window`)."""
    window = Window(receivers)

    def open_window() -> None:
        nonlocal window
        window = Window(receivers)

    await obey(open_window, lambda: window.report())


async def run_room(url: str, count: int, stamper: bool, h264: bool = False) -> None:
    """`count` load peers of the room (the first a stamper, if asked), and with `h264` one more participant that
    receives the composite in H.264 and sends audio alone (the tier's H.264 encoder runs); "ready" once all of
    them receive."""
    from client.encoded import PreEncodedAudioTrack, PreEncodedVideoTrack
    from client.peer import Peer
    from client.stamp import StampedVideoTrack

    def video(i: int) -> Any:
        return StampedVideoTrack(*STAMP_SIZE, STAMP_FPS) if stamper and i == 0 else PreEncodedVideoTrack(peer_colour(i))

    peers = [
        Peer(
            url, ROOM, f"load{i}", video=video(i), audio=PreEncodedAudioTrack(300.0 + 75 * i), decode=False, chat=False
        )
        for i in range(count)
    ]
    if h264:
        audio = PreEncodedAudioTrack(200.0)
        peers.append(Peer(url, ROOM, "h264", audio=audio, decode=False, chat=False, video_codec="h264"))
    try:
        for peer in peers:
            await peer.join(timeout=10)
        await peers[0].wait_for(lambda: all(p.video_frames and p.audio_frames for p in peers), timeout=30)
        emit("ready")
        await obey_windows(peers)
    finally:
        await asyncio.wait_for(asyncio.gather(*(p.close() for p in peers), return_exceptions=True), 15)


async def run_viewers(endpoint: str, count: int) -> None:
    """`count` counting WHEP viewers of the room; "ready" once all of them receive."""
    from client.whep import WhepViewer

    viewers = [WhepViewer(endpoint, decode=False) for _ in range(count)]
    try:
        for batch in range(0, count, 8):
            await asyncio.gather(*(viewer.start() for viewer in viewers[batch : batch + 8]))
        deadline = time.monotonic() + 30
        while not all(v.video_frames and v.audio_frames for v in viewers):
            if time.monotonic() > deadline:
                raise TimeoutError("some viewers received nothing in 30 s")
            await asyncio.sleep(0.1)
        emit("ready")
        await obey_windows(viewers)
    finally:
        await asyncio.wait_for(asyncio.gather(*(v.close() for v in viewers), return_exceptions=True), 30)


class StampReader:
    """The stamper's capture times read in every decoded composite picture of one receiver."""

    def __init__(self) -> None:
        self.latencies: list[int] = []
        self._last: int | None = None
        #: Where the stamper's picture may be: its fitted rect in each cell of grids of 1 to PARTICIPANTS + 1
        #: tiles (the receivers do not know the scene), the one last found first.
        self._rects: list[tuple[int, int, int, int]] = []

    def on_frame(self, frame: Any, shown: int | None = None) -> None:
        """Read `frame`'s stamp; it counts as seen now, or at `shown` (ms, the stamp's clock) if given."""
        from client.stamp import latency_ms, luma_of, now_ms, read_stamp
        from compositor.layout import fit, grid_layout

        arrival = now_ms() if shown is None else shown
        luma = luma_of(frame)
        if not self._rects:
            cells = [cell for n in range(1, PARTICIPANTS + 2) for cell in grid_layout(n, frame.width, frame.height)]
            self._rects = list(
                dict.fromkeys((r.x, r.y, r.width, r.height) for r in (fit(*STAMP_SIZE, c) for c in cells))
            )
        for index, (x, y, w, h) in enumerate(self._rects):
            stamp = read_stamp(luma[y : y + h, x : x + w])
            if stamp is not None:
                if index:
                    self._rects.insert(0, self._rects.pop(index))
                if stamp != self._last:  # one source frame shows on several ticks: its first arrival counts
                    self._last = stamp
                    self.latencies.append(latency_ms(stamp, arrival))
                return


def read_back(
    source: str,
    reader: StampReader,
    stopping: threading.Event,
    options: dict[str, str],
    player: StampReader | None = None,
) -> None:
    """In a thread: open `source` with PyAV (an RTMP listener, an HLS playlist) and read the stamp of every
    decoded picture, until `stopping` is set (or the source ends).

    With `player`, each picture is also read as a player shows it: one that starts with the first picture it
    decodes (PyAV's HLS demuxer starts 3 segments behind the live edge, as RFC 8216 6.3.3 asks of players) and
    then plays at the stream's pace, never before the picture has come (a late one is shown on arrival).
    """
    import av

    from client.stamp import now_ms

    while not stopping.is_set():
        try:
            with av.open(source, options=options, timeout=(30.0, 5.0)) as container:
                start: tuple[int, float] | None = None  # (ms shown, stream time) of the first picture
                for frame in container.decode(video=0):
                    reader.on_frame(frame)
                    if player is not None and frame.time is not None:
                        arrival = now_ms()
                        if start is None:
                            start = (arrival, frame.time)
                        player.on_frame(frame, max(arrival, start[0] + round(1000 * (frame.time - start[1]))))
                    if stopping.is_set():
                        return
        except (av.FFmpegError, OSError):
            time.sleep(0.5)  # not there yet (the playlist comes with its third segment), or the far end went


async def run_latency(url: str, endpoint: str, rtmp: str, hls: str) -> None:
    """A participant that sends nothing and a WHEP viewer, both decoding the composite and reading the stamps;
    with `rtmp` and `hls` (URLs, or "-"), the room's RTMP stream (listened for here) and HLS read back too."""
    import aiortc.rtcrtpreceiver as rtcrtpreceiver

    from client.peer import Peer
    from client.whep import WhepViewer

    observer = Peer(url, ROOM, "observer", chat=False)
    viewer = WhepViewer(endpoint)
    readers = {"participant": StampReader(), "WHEP": StampReader()}
    stopping = threading.Event()
    for name, source, options in (("RTMP", rtmp, {"listen": "1"}), ("HLS", hls, {})):
        if source != "-":
            readers[name] = StampReader()
            player = None
            if name == "HLS":
                player = readers["HLS player"] = StampReader()
            thread = threading.Thread(
                target=read_back, args=(source, readers[name], stopping, options, player), daemon=True
            )
            thread.start()
    owners: dict[int, StampReader] = {}
    recv = rtcrtpreceiver.RemoteStreamTrack.recv

    async def reading_recv(self: Any) -> Any:
        # Every decoded picture of either receiver passes here, as its client gets it.
        frame = await recv(self)
        if self.kind == "video":
            if id(self) not in owners:
                ours = viewer.pc is not None and any(t.receiver.track is self for t in viewer.pc.getTransceivers())
                owners[id(self)] = readers["WHEP" if ours else "participant"]
            owners[id(self)].on_frame(frame)
        return frame

    rtcrtpreceiver.RemoteStreamTrack.recv = reading_recv  # type: ignore[method-assign]
    try:
        await observer.join(timeout=20)
        await viewer.start()
        await observer.wait_for(lambda: all(r.latencies for r in readers.values()), timeout=60)
        emit("ready")

        def open_window() -> None:
            for reader in readers.values():
                reader.latencies.clear()

        await obey(open_window, lambda: {name: r.latencies for name, r in readers.items()})
    finally:
        stopping.set()
        await asyncio.wait_for(asyncio.gather(viewer.close(), observer.close(), return_exceptions=True), 15)


# --- the driver ----------------------------------------------------------------------------------------------


@dataclass
class Result:
    viewers: int
    #: Whether the room also pushed an RTMP stream and wrote its HLS.
    outputs: bool = False
    server_cpu: float = 0.0
    #: The busiest threads of the server and its video process: (label, % of one core).
    threads: list[tuple[str, float]] = field(default_factory=list)
    fps: list[float] = field(default_factory=list)
    audio: list[float] = field(default_factory=list)
    kbps: list[float] = field(default_factory=list)
    #: What the room's participants received over the same window.
    room_fps: list[float] = field(default_factory=list)
    room_audio: list[float] = field(default_factory=list)
    #: Composite frames the server made a second over the window (its own count).
    server_fps: float = 0.0
    #: The viewers' tiers at the window's end, as the server's tier controllers left them ("audio": audio only).
    viewer_tiers: dict[str, int] = field(default_factory=dict)
    #: CPU of the viewers' process (None without viewers).
    load_cpu: float | None = None
    load_average: float = 0.0
    steal: float = 0.0
    #: The latency run: per receiver ("WHEP", "participant"), glass-to-glass ms of each stamp read.
    latencies: dict[str, list[int]] = field(default_factory=dict)
    failure: str = ""

    def problems(self) -> list[str]:
        """Why the run does not count as a working broadcast (empty: it does)."""
        if self.failure:
            return [self.failure]
        found = []
        if self.server_cpu > CPU_CAP:
            found.append(f"CPU > {CPU_CAP:.0f} %")
        for who, fps, audio in (("viewer", self.fps, self.audio), ("participant", self.room_fps, self.room_audio)):
            if fps and min(fps) < MIN_FPS:
                found.append(f"{who} fps < {MIN_FPS:.0f}")
            if audio and min(audio) < MIN_AUDIO:
                found.append(f"{who} audio < {MIN_AUDIO:.0f}/s")
        return found

    @property
    def collapsed(self) -> bool:
        return bool(self.problems())


class Processes:
    """The processes of one run, each driven on its stdin (`obey`) and reporting JSON events on its stdout."""

    def __init__(self, logs: Path, name: str) -> None:
        self._logs, self._name = logs, name
        self.all: dict[str, asyncio.subprocess.Process] = {}

    def log(self, role: str) -> Path:
        return self._logs / f"{role}-{self._name}.log"

    async def start(self, role: str, *args: str) -> asyncio.subprocess.Process:
        with self.log(role).open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable, __file__, f"_{role}", *args, cwd=REPO, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=log, start_new_session=True,
            )  # fmt: skip
        self.all[role] = process
        return process

    async def end(self, role: str) -> None:
        """Close one process's stdin (its peers or viewers leave) and wait for it to go."""
        await self._leave(self.all.pop(role))

    @staticmethod
    async def _leave(process: asyncio.subprocess.Process) -> None:
        """Close its stdin, so that its viewers end their sessions (WHEP DELETE) and its peers leave, and give it
        30 s to do so: a viewer killed with its process stays on the server until its connection times out."""
        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 30)
        except asyncio.TimeoutError:
            await stop(process)

    async def tell(self, line: str, timeout: float) -> dict[str, dict]:
        """Send `line` to every process; the next event of each, by role."""
        for process in self.all.values():
            assert process.stdin is not None
            process.stdin.write(line.encode() + b"\n")
            await process.stdin.drain()
        events = await asyncio.gather(*(next_event(p, timeout) for p in self.all.values()))
        return dict(zip(self.all, events))

    def failure(self, exc: Exception) -> str:
        logs = "\n".join(f"{role} log:\n{tail(self.log(role))}" for role in self.all)
        print(f"  {self._name}: {exc or 'timed out'}\n{logs}", file=sys.stderr)
        return str(exc) or "timed out"

    async def stop(self) -> None:
        """Each one leaves (its stdin closed), stopped if it lingers."""
        await asyncio.gather(*(self._leave(p) for p in self.all.values()))


async def start_stream(port: int, url: str) -> None:
    """Ask the server to push the room's composite to `url` (its HTTP API; the server retries until it answers)."""
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{port}/api/rooms/{ROOM}/streams", json={"url": url}) as response:
            if response.status >= 300:
                raise RuntimeError(f"startStream refused: {response.status} {await response.text()}")


def hls_live(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/hls/{ROOM}/index.m3u8", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


async def outputs_live(port: int, timeout: float = 40) -> None:
    """Until the room's RTMP stream is live and its HLS playlist is served."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            async with session.get(f"http://127.0.0.1:{port}/api/rooms/{ROOM}/streams") as response:
                streams = (await response.json())["streams"]
            if streams and all(s["state"] == "live" for s in streams) and await asyncio.to_thread(hls_live, port):
                return
            await asyncio.sleep(0.5)
    raise TimeoutError("the RTMP stream or the HLS playlist did not go live")


async def run_one(
    count: int,
    args: argparse.Namespace,
    logs: Path,
    latency: bool = False,
    outputs: bool = False,
    hls_segment: float | None = None,
) -> Result:
    """One fresh server, its room, `count` counting viewers (or the latency's receivers), one
    window; with `outputs`, an RTMP stream and HLS as well (the latency run reads them back)."""
    result = Result(count, outputs=outputs, load_average=os.getloadavg()[0])
    port, rtmp_port = free_port(), free_port()
    url, endpoint = f"ws://127.0.0.1:{port}/ws", f"http://127.0.0.1:{port}/whep/{ROOM}"
    rtmp = f"rtmp://127.0.0.1:{rtmp_port}/{RTMP_PATH}"
    name = ("latency" if latency else f"{count}") + ("-outputs" if outputs else "")
    processes = Processes(logs, name)
    server = listener = None
    hls_dir = tempfile.TemporaryDirectory(prefix="bench_broadcast-hls-")
    try:
        with processes.log("server").open("wb") as log:
            server = await start_server(
                port,
                log,
                "--size",
                SIZE,
                "--fps",
                str(FPS),
                "--log-level",
                "WARNING",
                *([] if args.adapt else ["--no-adapt"]),
                *(["--hls", hls_dir.name] if outputs else []),
                *(["--hls-segment", f"{hls_segment:g}"] if outputs and hls_segment else []),
            )
        await wait_healthy(port, server)
        try:
            room = await processes.start("room", url, str(PARTICIPANTS - int(latency)), str(int(latency)), "0")
            await next_event(room, timeout=60)
            if outputs and not latency:
                # A far end that takes the stream and throws it away: its CPU is not the server's.
                with processes.log("rtmp").open("wb") as log:
                    listener = await asyncio.create_subprocess_exec(
                        "ffmpeg", "-nostdin", "-loglevel", "error", "-listen", "1", "-i", rtmp, "-c", "copy",
                        "-f", "null", "-", stdout=log, stderr=log, start_new_session=True,
                    )  # fmt: skip
            if outputs:
                await start_stream(port, rtmp)
            if latency:
                hls = f"http://127.0.0.1:{port}/hls/{ROOM}/index.m3u8"
                readers = (rtmp, hls) if outputs else ("-", "-")
                await next_event(await processes.start("latency", url, endpoint, *readers), timeout=90)
            elif count:
                await next_event(await processes.start("viewers", endpoint, str(count)), timeout=3 * count + 60)
            if outputs and not latency:
                await outputs_live(port)
            await asyncio.sleep(args.warmup)
            await processes.tell("window", timeout=20)
            started, ticks, (steal, total) = time.monotonic(), cpu_ticks(server.pid), steal_ticks()
            threads = thread_ticks(process_tree(server.pid))
            frames = (await describe_room(port))["stats"]["videoFrames"]
            await asyncio.sleep(args.seconds)
            elapsed, used = time.monotonic() - started, cpu_ticks(server.pid) - ticks
            room_now = await describe_room(port)
            result.server_fps = (room_now["stats"]["videoFrames"] - frames) / elapsed
            result.viewer_tiers = viewer_tiers(room_now)
            result.threads = thread_shares(threads, thread_ticks(process_tree(server.pid)), elapsed, server.pid)
            steal_end, total_end = steal_ticks()
            reports = await processes.tell("report", timeout=20)
        except (RuntimeError, TimeoutError) as exc:
            result.failure = processes.failure(exc)
            return result
        result.server_cpu = used / CLK_TCK / elapsed * 100
        result.steal = 100 * (steal_end - steal) / max(total_end - total, 1)
        result.room_fps, result.room_audio = reports["room"]["fps"], reports["room"]["audio"]
        if "viewers" in reports:
            viewers = reports["viewers"]
            result.fps, result.audio, result.kbps = viewers["fps"], viewers["audio"], viewers["kbps"]
            result.load_cpu = viewers["cpu"]
        if "latency" in reports:
            result.latencies = {name: values for name, values in reports["latency"].items() if name != "event"}
            if hls_segment:  # the HLS rows say their segments' length
                result.latencies = {
                    (f"{name} ({hls_segment:g} s segments)" if name.startswith("HLS") else name): values
                    for name, values in result.latencies.items()
                }
        return result
    finally:
        await processes.stop()
        await stop(server)
        await stop(listener)
        hls_dir.cleanup()


@dataclass
class Span:
    """One window of a toggled run: the room with what is measured (viewers, participants, a stream) or without."""

    on: bool
    server_cpu: float = 0.0
    #: What the room's participants (and the viewers, when on) received a second over the window.
    room_fps: list[float] = field(default_factory=list)
    fps: list[float] = field(default_factory=list)
    #: The room's video encoders (codec/tier) and its streams' states at the window's end.
    encoders: list[str] = field(default_factory=list)
    states: list[str] = field(default_factory=list)
    load_average: float = 0.0


@dataclass
class Toggle:
    """What one toggled run measured: `units` of it (viewers, participants, streams) on and off in turn."""

    name: str
    units: int
    spans: list[Span] = field(default_factory=list)
    failure: str = ""

    def added(self) -> list[float]:
        """Each window with it on, over the mean of the windows without it on either side (% of one core)."""
        added = []
        for i, span in enumerate(self.spans):
            around = [x.server_cpu for x in self.spans[max(0, i - 1) : i + 2] if not x.on]
            if span.on and around:
                added.append(span.server_cpu - statistics.mean(around))
        return added

    def per_unit(self) -> float | None:
        added = self.added()
        return statistics.median(added) / self.units if added else None

    def room(self) -> float | None:
        """The room's CPU without it: the median of the windows without it."""
        off = [x.server_cpu for x in self.spans if not x.on]
        return statistics.median(off) if off else None


async def room_streams(port: int) -> list[dict]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/api/rooms/{ROOM}/streams") as response:
            return (await response.json())["streams"]


async def stop_streams(port: int, timeout: float = 20) -> None:
    """Stop every stream of the room (its HTTP API), until none is left."""
    async with aiohttp.ClientSession() as session:
        for stream in await room_streams(port):
            async with session.delete(f"http://127.0.0.1:{port}/api/rooms/{ROOM}/streams/{stream['id']}"):
                pass
    deadline = time.monotonic() + timeout
    while await room_streams(port):
        if time.monotonic() > deadline:
            raise TimeoutError("the RTMP stream did not stop")
        await asyncio.sleep(0.2)


async def stream_live(port: int, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while not (streams := await room_streams(port)) or any(s["state"] != "live" for s in streams):
        if time.monotonic() > deadline:
            raise TimeoutError("the RTMP stream did not go live")
        await asyncio.sleep(0.2)


async def listen_rtmp(log: Path, url: str) -> asyncio.subprocess.Process:
    """A far end that takes one RTMP stream and throws it away: its CPU is not the server's."""
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            "ffmpeg", "-nostdin", "-loglevel", "error", "-listen", "1", "-i", url, "-c", "copy", "-f", "null", "-",
            stdout=out, stderr=out, start_new_session=True,
        )  # fmt: skip


async def measure_span(
    on: bool, processes: Processes, server: asyncio.subprocess.Process, port: int, seconds: float
) -> Span:
    span = Span(on, load_average=os.getloadavg()[0])
    await processes.tell("window", timeout=20)
    started, ticks = time.monotonic(), cpu_ticks(server.pid)
    await asyncio.sleep(seconds)
    span.server_cpu = (cpu_ticks(server.pid) - ticks) / CLK_TCK / (time.monotonic() - started) * 100
    span.encoders = (await describe_room(port))["stats"]["videoEncoders"]
    span.states = [s["state"] for s in await room_streams(port)]
    reports = await processes.tell("report", timeout=20)
    span.room_fps = reports["room"]["fps"] + reports.get("extra", {}).get("fps", [])
    span.fps = reports.get("viewers", {}).get("fps", [])
    return span


async def run_toggles(args: argparse.Namespace, logs: Path, stream: bool) -> list[Toggle]:
    """One server and its room; windows without and with each thing measured, in turn, `args.rounds` of each.

    Without `stream`: the viewers of `args.toggle_viewers` and `args.participants` more participants. With it:
    an RTMP stream of the high tier, in a room where a participant receives H.264 (so that tier's H.264
    encoder already runs). The server's CPU drifts by several % of a core between fresh servers on this shared
    machine, and within one over minutes: each window with the thing on is read against those beside it.
    """
    port, rtmp_port = free_port(), free_port()
    url, endpoint = f"ws://127.0.0.1:{port}/ws", f"http://127.0.0.1:{port}/whep/{ROOM}"
    rtmp = f"rtmp://127.0.0.1:{rtmp_port}/{RTMP_PATH}"
    processes = Processes(logs, "stream" if stream else "toggles")
    if stream:
        toggles = [Toggle("RTMP stream", 1)]
    else:
        toggles = [Toggle(f"{n} viewers", n) for n in args.toggle_viewers]
        toggles += [Toggle(f"{n} participants", n) for n in args.participants]
    server = listener = None

    async def switch_on(toggle: Toggle) -> None:
        nonlocal listener
        if toggle.name == "RTMP stream":
            listener = await listen_rtmp(processes.log("rtmp"), rtmp)
            await start_stream(port, rtmp)
            await stream_live(port)
        elif toggle.name.endswith("viewers"):
            viewers = await processes.start("viewers", endpoint, str(toggle.units))
            await next_event(viewers, timeout=3 * toggle.units + 60)
        else:
            await next_event(await processes.start("extra", url, str(toggle.units), "0", "0"), timeout=90)

    async def switch_off(toggle: Toggle) -> None:
        if toggle.name == "RTMP stream":
            await stop_streams(port)
            await stop(listener)
        else:
            await processes.end("viewers" if toggle.name.endswith("viewers") else "extra")

    try:
        with processes.log("server").open("wb") as log:
            server = await start_server(
                port, log, "--size", SIZE, "--fps", str(FPS), "--log-level", "WARNING",
                *([] if args.adapt else ["--no-adapt"]),
            )  # fmt: skip
        await wait_healthy(port, server)
        await next_event(await processes.start("room", url, str(PARTICIPANTS), "0", str(int(stream))), timeout=60)
        await asyncio.sleep(args.warmup)
        for toggle in toggles:
            print(f"{toggle.name}, {args.rounds} rounds ...", file=sys.stderr, flush=True)
            try:
                for _ in range(args.rounds):
                    for on in (False, True):
                        if on:
                            await switch_on(toggle)
                            await asyncio.sleep(args.warmup)
                        toggle.spans.append(await measure_span(on, processes, server, port, args.seconds))
                        print(f"  {format_spans(toggle).splitlines()[-1]}", file=sys.stderr, flush=True)
                        if on:
                            await switch_off(toggle)
                            await asyncio.sleep(args.warmup)
                toggle.spans.append(await measure_span(False, processes, server, port, args.seconds))
            except (RuntimeError, TimeoutError) as exc:
                toggle.failure = processes.failure(exc)
                break
        return toggles
    except (RuntimeError, TimeoutError) as exc:
        toggles[0].failure = processes.failure(exc)
        return toggles
    finally:
        await processes.stop()
        await stop(server)
        await stop(listener)


def format_spans(toggle: Toggle) -> str:
    lines = [
        f"| window | {toggle.name} | server CPU, % of one core | participants' fps min / median "
        "| viewers' fps min / median | video encoders | streams | load avg |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, w in enumerate(toggle.spans, 1):
        lines.append(
            f"| {i} | {'on' if w.on else 'off'} | {w.server_cpu:.1f} | {_min_median(w.room_fps)} "
            f"| {_min_median(w.fps)} | {', '.join(w.encoders)} | {', '.join(w.states) or '-'} "
            f"| {w.load_average:.1f} |"
        )
    return "\n".join(lines)


def toggle_line(toggle: Toggle) -> str:
    """What one unit of it costs, from the windows with it against those beside them."""
    if toggle.failure:
        return f"{toggle.name}: stopped early: {toggle.failure}"
    added, room, each = toggle.added(), toggle.room(), toggle.per_unit()
    if each is None or room is None:
        return f"{toggle.name}: no window with it and one without."
    line = (
        f"{toggle.name} added {statistics.median(added):+.1f} % of a core (median of {len(added)} windows, each "
        f"against the mean of the windows without them on either side: {', '.join(f'{a:+.1f}' for a in added)}) "
        f"to the room's {room:.1f} %"
    )
    if toggle.units > 1:
        line += f": {each:.2f} % each"
    if toggle.name == "RTMP stream":
        line += (
            f", {100 * each / room:+.1f} % of the room's CPU (target: at most +10 %). "
            + ("The room's video encoders were the same in every window: the stream added no video encode."
               if all(w.encoders == toggle.spans[0].encoders for w in toggle.spans)
               else "The room's video encoders changed between windows: see the table.")
        )  # fmt: skip
    return line + ("" if line.endswith(".") else ".")


def viewer_against_participant(toggles: list[Toggle]) -> str:
    """What a viewer costs the server against what a participant does (the issue's target: at most half)."""
    viewers = [t for t in toggles if t.name.endswith("viewers") and t.per_unit() is not None]
    participants = [t for t in toggles if t.name.endswith("participants") and t.per_unit() is not None]
    if not viewers or not participants:
        return "A viewer against a participant needs the toggled windows of both."
    participant = participants[-1].per_unit()
    assert participant is not None
    parts = [
        f"at {t.units} viewers one costs {t.per_unit():.2f} %, {100 * (t.per_unit() or 0) / participant:.0f} % of "
        "a participant"
        for t in viewers
    ]
    return (
        f"A viewer against a participant: a participant (one of {participants[-1].units} more, each sending VP8 "
        f"and Opus as the load peers do: decoded, composed, mixed, sent the composite and its mix) costs the server "
        f"{participant:.2f} % of a core; " + "; ".join(parts) + " (target: at most half)."
    )


async def describe_room(port: int) -> dict:
    """The room as the server's HTTP API describes it (no --secret, so no token): participants and stats."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/api/rooms/{ROOM}") as response:
            return await response.json()


def viewer_tiers(room: dict) -> dict[str, int]:
    """How many viewers are on each tier: the receivers' links that are no participant's."""
    participants = {p["peerId"] for p in room["participants"]}
    links = room["stats"]["links"]
    return dict(collections.Counter(str(link["tier"]) for peer, link in links.items() if peer not in participants))


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _kbps(values: list[float]) -> str:
    return f"{_median(values):.0f}" if values else "-"


def _min_median(values: list[float], digits: int = 1) -> str:
    return f"{min(values):.{digits}f} / {_median(values):.{digits}f}" if values else "-"


def label(result: Result) -> str:
    return f"{result.viewers} + RTMP + HLS" if result.outputs else str(result.viewers)


def baseline(results: list[Result]) -> float | None:
    """The server's CPU with the room of PARTICIPANTS alone: no viewer, no output."""
    plain = (r for r in results if r.viewers == 0 and not r.outputs)
    return next((r.server_cpu for r in plain if not r.failure), None)


def format_table(results: list[Result]) -> str:
    base = baseline(results)
    lines = [
        "| viewers | server CPU, % of one core | added per viewer, % | viewers' fps min / median "
        "| viewers' audio pkt/s min / median | per viewer kbit/s median | participants' fps min / median "
        "| server made, fps | viewers' tiers at the end | viewers' process CPU % | load avg | steal % | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.failure:
            lines.append(f"| {label(r)} | | | | | | | | | | {r.load_average:.1f} | | failed: {r.failure} |")
            continue
        added = f"{(r.server_cpu - base) / r.viewers:.2f}" if base is not None and r.viewers else "-"
        if r.outputs and base is not None:
            added = f"{r.server_cpu - base:+.1f} for both outputs"
        load = f"{r.load_cpu:.1f}" if r.load_cpu is not None else "-"
        status = "collapsed (" + ", ".join(r.problems()) + ")" if r.collapsed else "ok"
        tiers = ", ".join(f"{tier} {n}" for tier, n in sorted(r.viewer_tiers.items())) or "-"
        lines.append(
            f"| {label(r)} | {r.server_cpu:.1f} | {added} | {_min_median(r.fps)} | {_min_median(r.audio)} "
            f"| {_kbps(r.kbps)} | {_min_median(r.room_fps)} | {r.server_fps:.1f} | {tiers} | {load} "
            f"| {r.load_average:.1f} | {r.steal:.1f} | {status} |"
        )
    return "\n".join(lines)


def format_threads(results: list[Result], top: int = 6) -> str:
    """Per run, the busiest threads of the server (its main thread is the event loop) and its video process."""
    return "\n".join(
        f"- N={label(r)}: " + ", ".join(f"{name} {share:.1f}" for name, share in r.threads[:top])
        for r in results
        if not r.failure
    )


def _p95(values: list[int]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def format_latency(results: list[Result]) -> str:
    """Per latency run, a row per receiver: glass to glass, median and p95."""
    lines = [
        "| receiver | glass to glass, ms median | p95 | stamps read | server CPU, % of one core | load avg |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        if result.failure:
            lines.append(f"| failed: {result.failure} | | | | | |")
        for name, values in result.latencies.items():
            median = f"{statistics.median(values):.0f}" if values else "-"
            p95 = f"{_p95(values):.0f}" if values else "-"
            lines.append(
                f"| {name} | {median} | {p95} | {len(values)} | {result.server_cpu:.1f} | {result.load_average:.1f} |"
            )
    return "\n".join(lines)


def anchor_line(results: list[Result]) -> str:
    """Our cost of one stream against LiveKit Egress's admission budget for one room composite."""
    by_count = {r.viewers: r for r in results if not r.failure and not r.outputs}
    if 0 not in by_count or 1 not in by_count:
        return "The anchor needs the 0- and 1-viewer rows: not both in this run."
    added = by_count[1].server_cpu - by_count[0].server_cpu
    noise = ": within the spread of this machine's runs" if abs(added) < NOISE else ""
    line = (
        f"Anchor: LiveKit Egress budgets {EGRESS_CPUS} CPUs ({EGRESS_CPUS * 100} % of a core) for one room-composite "
        "stream in its admission control, as it renders the room in a headless Chrome and encodes it, on top of "
        f"the room's own cost. Here the whole server, the room and one viewer, used {by_count[1].server_cpu:.1f} % "
        f"of a core, against {by_count[0].server_cpu:.1f} % without the viewer ({added:+.1f} %{noise}), since the "
        "viewer is sent the composite the room's tier already encodes (no decode, no encode of its own)"
    )
    if many := max((n for n in by_count if n > 1), default=None):
        extra = by_count[many].server_cpu - by_count[0].server_cpu
        line += f"; {many} viewers added {extra:.1f} % ({extra / many:.2f} % each)"
    return line + "."


def section(runs: Runs, args: argparse.Namespace) -> str:
    results = runs.results
    parts = [
        BEGIN,
        "## Broadcast: WHEP viewers of one room",
        "",
        f"Measured {datetime.date.today().isoformat()} on {machine()} by `scripts/bench_broadcast.py`. Each row "
        f"is a fresh `mcu serve` ({SIZE}@{FPS} composite{'' if args.adapt else ', `--no-adapt`'}) "
        f"with a room of {PARTICIPANTS} peers (load peers in one "
        "process: pre-encoded VP8 320x240@15 ≈ 300 kbit/s and Opus, received without decoding) and N WHEP "
        "viewers in one more process (`client/whep.py` with `decode=False`: each counts the composite's frames "
        "and the mix's packets without decoding them, so that 40 fit beside the server). "
        f"Warm-up {args.warmup:g} s, window {args.seconds:g} s. Server CPU is utime + stime of the server and its "
        "video process (all threads) over the window; added per viewer is the row's CPU over the 0-viewer row's, "
        "divided by N; fps and audio are what each viewer and each participant received (worst and median); the "
        "viewers' process CPU is the load's own. The server made is its composite frames a second; the viewers' "
        "tiers are where its tier controllers left them at the window's end (with adaptation on, a viewer whose "
        "reports show a queue, as a starved load process's do, is moved to a lower tier: one more encode, and "
        "its lower frame rate). Load avg is the 1-minute load average when the row started and "
        "steal the share of the machine the hypervisor took in the window: they say how busy this shared "
        "2-core VM was. "
        f"A row is collapsed above {CPU_CAP:.0f} % CPU, or under {MIN_FPS:.0f} fps or {MIN_AUDIO:.0f} audio "
        "packets/s for any viewer or participant.",
        "",
        format_table(results),
        "",
        anchor_line(results),
        "",
        "Busiest threads over the window (% of one core; `server main` is the event loop: RTP, SRTP, signalling, "
        "the fan-out to every receiver; `picture main` reads the upstream frames; the others are the audio clock, "
        "the picture clock, decoders and encoders):",
        "",
        format_threads(results),
    ]
    if runs.latency:
        parts += [
            "",
            f"Glass to glass: a fresh server and the room again, one of its {PARTICIPANTS - 1} load peers a stamper "
            f"(a live VP8 {STAMP_SIZE[0]}x{STAMP_SIZE[1]}@{STAMP_FPS} source that draws its capture time, in ms, as "
            "a checked barcode: `client/stamp.py`), and in one more process a participant that sends nothing (the "
            f"room's {PARTICIPANTS}th; the normal WebSocket path) and a WHEP viewer, both decoding the composite "
            "and reading the stamp in its tile. Each stamp's first decoded arrival counts, over the window: capture "
            "to decoded picture, on the machine's one clock. With the outputs, the room also pushes RTMP to a "
            "listener in that process (PyAV), and the process reads the room's HLS from the server (PyAV's HLS "
            "demuxer, from 3 segments behind the live edge, as RFC 8216 6.3.3 asks players to start): RTMP and "
            "HLS are each picture's decoded arrival there, HLS once its segment is listed. `HLS player` is when a "
            "player shows it: one that starts with the first picture it decodes, 3 segments behind, then plays at "
            "the stream's pace (as ffplay, VLC or a browser's video element do, without catching up); its delay is "
            "the same for every picture, set when it starts, between 3 and 4 segments' length. One latency run per "
            f"HLS segment length ({', '.join(f'{v:g} s' for v in args.hls_segments)}: `mcu serve --hls-segment`).",
            "",
            format_latency(runs.latency),
        ]
    parts += [
        "",
        "The `+ RTMP + HLS` row: the room with no viewer, pushing RTMP to a Debian `ffmpeg -listen 1` that "
        "discards it (its CPU is not counted) and writing its HLS (`--hls`): the room's peers send and receive "
        "VP8, so both outputs add the H.264 encode of the composite's tier (shared by both) and one AAC encode "
        "of the mix.",
    ]
    if runs.toggles:
        parts += [
            "",
            "### What one more viewer, participant or stream costs: windows with and without it, in one room",
            "",
            "The rows above each start a fresh server, and the same room's CPU differs by several % of a core "
            "between fresh servers on this shared machine (and drifts within one over minutes): too much to read "
            "the cost of one viewer from them. So each cost below comes from one server and one room of "
            f"{PARTICIPANTS} load peers, measured in {args.seconds:g} s windows without and with the thing, in "
            f"turn ({args.rounds} of each, {args.warmup:g} s of settling after each change, and a last window "
            "without): each window with it is read against the mean of the windows without it on either side. "
            "Viewers are one process of counting WHEP viewers (as above), started and ended between windows; "
            "participants are one more process of load peers joining the same room and leaving it. The RTMP "
            "stream runs in a second server whose room has one more participant, which sends audio alone and "
            "receives the composite in H.264, so the high tier's H.264 encoder runs before the stream starts; the "
            "stream (of that tier, to a Debian `ffmpeg -listen 1` that discards it) is started and stopped "
            "through the HTTP API. The video encoders and streams are the room's at each window's end.",
        ]
        for toggle in runs.toggles:
            parts += ["", format_spans(toggle), "", toggle_line(toggle)]
        parts += ["", viewer_against_participant(runs.toggles)]
    parts += [
        "",
        f"Re-run: `{rerun_command(__file__)}`",
        END,
    ]
    return "\n".join(parts)


@dataclass
class Runs:
    results: list[Result]
    #: The latency runs, one per HLS segment length (without the outputs: one).
    latency: list[Result] = field(default_factory=list)
    #: The toggled runs: viewers and participants in one server, the RTMP stream in another.
    toggles: list[Toggle] = field(default_factory=list)


async def run_all(args: argparse.Namespace) -> Runs:
    outputs = args.outputs and shutil.which("ffmpeg") is not None
    if args.outputs and not outputs:
        print("bench_broadcast: no ffmpeg to take the RTMP stream: the outputs' rows are left out", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench_broadcast-") as logs:
        runs = Runs(
            await run_series(
                ["viewers"], args.viewers, lambda _, n: run_one(n, args, Path(logs)), format_table, keep_going=True
            )
        )
        if outputs:
            row = await run_reported("outputs", 0, run_one(0, args, Path(logs), outputs=True), format_table)
            runs.results.append(row)
        if args.rounds and (args.toggle_viewers or args.participants):
            runs.toggles += await run_toggles(args, Path(logs), stream=False)
        if args.rounds and outputs:
            runs.toggles += await run_toggles(args, Path(logs), stream=True)
        if args.latency:
            for segment in args.hls_segments if outputs else [None]:
                run = run_one(1, args, Path(logs), latency=True, outputs=outputs, hls_segment=segment)
                runs.latency.append(await run_reported("latency", 1, run, format_latency))
    return runs


def numbers(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main() -> None:
    role = sys.argv[1:2]
    if role in (["_room"], ["_extra"]):  # the room's load peers; more of them, switched on and off
        url, count, stamper, h264 = sys.argv[2:6]
        asyncio.run(run_room(url, int(count), stamper == "1", h264 == "1"))
        return
    if role == ["_viewers"]:
        endpoint, count = sys.argv[2:4]
        asyncio.run(run_viewers(endpoint, int(count)))
        return
    if role == ["_latency"]:
        url, endpoint, rtmp, hls = sys.argv[2:6]
        asyncio.run(run_latency(url, endpoint, rtmp, hls))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--viewers", type=numbers, default=[0, 1, 10, 40], help="numbers of viewers (0,1,10,40)")
    parser.add_argument("--seconds", type=float, default=20, help="measurement window in s (default 20)")
    parser.add_argument("--warmup", type=float, default=5, help="warm-up once everyone receives, in s (default 5)")
    parser.add_argument(
        "--latency", action=argparse.BooleanOptionalAction, default=True, help="the glass-to-glass run (default on)"
    )
    parser.add_argument(
        "--adapt",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="let the server move each receiver between tiers as its link allows (default on); --no-adapt keeps "
        "the viewers on the composite's tier: the fan-out's cost alone, where a loaded machine's lag in the "
        "viewers' process would read as congestion and add the encodes of lower tiers",
    )
    parser.add_argument(
        "--outputs",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a row with an RTMP stream (to a local ffmpeg) and HLS on, and their latency read back (default on)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="the costs of one viewer, participant and stream: windows without and with them in one room, in "
        "turn, this many of each (default 3; 0: not run)",
    )
    parser.add_argument(
        "--toggle-viewers", type=numbers, default=[10, 40], help="viewers switched on and off (default 10,40)"
    )
    parser.add_argument(
        "--participants", type=numbers, default=[10], help="participants switched on and off (default 10)"
    )
    parser.add_argument(
        "--hls-segments",
        type=lambda text: [float(v) for v in text.split(",") if v],
        default=[2.0, 1.0],
        help="the latency run once per HLS segment length (`mcu serve --hls-segment`; default 2,1)",
    )
    parser.add_argument("--write", type=Path, help="replace the bench_broadcast section of this file")
    args = parser.parse_args()
    try:
        runs = asyncio.run(run_all(args))
    except KeyboardInterrupt:
        sys.exit(130)
    print(format_table(runs.results))
    print(anchor_line(runs.results))
    print(format_threads(runs.results))
    for toggle in runs.toggles:
        print(format_spans(toggle))
        print(toggle_line(toggle))
    if runs.toggles:
        print(viewer_against_participant(runs.toggles))
    if runs.latency:
        print(format_latency(runs.latency))
    if args.write:
        write_section(args.write, section(runs, args))
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
