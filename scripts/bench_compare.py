#!/usr/bin/env python3
"""MCU, SFU and mesh side by side: what each costs the server and a client, N = 2 to 16.

For each mode and each N, in one run: a fresh `mcu serve` (1280x720@30
composite in mcu rooms) and, each in a process of its own so that /proc gives
each its own CPU,

- N-2 load peers (scripts/loadgen.py: pre-encoded clips, receive without decoding);
- one stamper: a live VP8 320x240@15 source that draws its capture time into
  the picture (client/stamp.py);
- one observer, joining last: it decodes everything it receives, as a
  low-power client would, and reads the stamps back on the same machine clock.

Over the measurement window: server CPU, observer CPU, load and stamper CPU
(apart), the observer's upload and download (DTLS bytes on the wire), the added
latency of the stamper's frames from capture to decoded arrival at the observer
(median and p95; in an mcu room the stamper's tile is found in the grid), and
the observer's time from its join to the first picture of the stamper.

    .venv/bin/python scripts/bench_compare.py [--peers 2,4,8,12,16] [--modes mcu,sfu,mesh]
        [--seconds 15] [--warmup 3] [--quick] [--write docs/benchmarks.md] [--plots docs/plots]

A run whose observer gets less than half the video it should, or whose
server needs more than CPU_CAP % of the machine, is marked collapsed, and
larger N of that mode are skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# The helpers of the other bench scripts (this directory is on sys.path when a script runs).
from bench_room import (  # noqa: E402
    cpu_ticks,
    emit,
    free_port,
    machine,
    next_event,
    next_line,
    run_series,
    start_server,
    steal_ticks,
    stop,
    wait_healthy,
    write_section,
)

ROOM = "bench"
MODES = ("mcu", "sfu", "mesh")
SIZE, FPS = (1280, 720), 30
CLIP_FPS = 15
#: The stamper's picture size (it is fitted into its tile in an mcu room).
STAMP_SIZE = (320, 240)
#: Above this the server has used up both cores of the reference machine.
CPU_CAP = 190.0
BEGIN, END = "<!-- bench_compare:begin -->", "<!-- bench_compare:end -->"
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOADGEN = REPO / "scripts" / "loadgen.py"


def mode_options(mode: str) -> dict[str, Any]:
    return {"mode": mode} if mode != "mcu" else {}


# --- the stamper and the observer (subprocesses) -------------------------------------------------------------


async def run_stamper(url: str, mode: str) -> None:
    """Join with the stamped source and stay until SIGTERM."""
    from client.encoded import PreEncodedAudioTrack
    from client.peer import Peer
    from client.stamp import StampedVideoTrack

    stop_event = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop_event.set)
    video, audio = StampedVideoTrack(*STAMP_SIZE, CLIP_FPS), PreEncodedAudioTrack(1000.0)
    peer = Peer(url, ROOM, "stamper", video=video, audio=audio, decode=False, chat=False, **mode_options(mode))
    try:
        await peer.join(timeout=20)
        emit("joined")
        await stop_event.wait()
    finally:
        await asyncio.wait_for(peer.close(), 10)


class StampReader:
    """Reads the stamper's capture time in every decoded picture the observer receives."""

    def __init__(self, mode: str, peers: int) -> None:
        self._mode, self._peers = mode, peers
        self.started = time.monotonic()
        self.first_picture: float | None = None
        self.first_stamp: float | None = None
        self.latencies: list[int] = []
        self.reads = 0
        self._last_stamp: int | None = None
        #: sfu/mesh: per remote track, whether it carries stamps (None: not known yet) and frames tried.
        self._tracks: dict[int, list[Any]] = {}
        #: mcu: the tiles to look in, the one last found first.
        self._rects: list[tuple[int, int, int, int]] = []

    def on_frame(self, track: Any, frame: Any) -> None:
        from client.stamp import latency_ms, luma_of, now_ms, read_stamp

        arrival = now_ms()
        if self.first_picture is None:
            self.first_picture = time.monotonic()
        luma = luma_of(frame)
        if self._mode == "mcu":
            stamp = self._read_composite(luma, frame.width, frame.height)
        else:
            state = self._tracks.setdefault(id(track), [None, 0])
            if state[0] is False:
                return
            stamp = read_stamp(luma)
            state[1] += 1
            if stamp is not None:
                state[0] = True
            elif state[0] is None and state[1] >= 30:
                state[0] = False  # 2 s of pictures and never a stamp: another peer's track
        if stamp is None:
            return
        self.reads += 1
        if self.first_stamp is None:
            self.first_stamp = time.monotonic()
        if stamp != self._last_stamp:  # a composite shows one source frame on several ticks: its first arrival
            self._last_stamp = stamp
            self.latencies.append(latency_ms(stamp, arrival))

    def _read_composite(self, luma: Any, width: int, height: int) -> int | None:
        from client.stamp import read_stamp
        from compositor.layout import fit, grid_layout

        if not self._rects:
            cells = grid_layout(self._peers, width, height)
            self._rects = [(r.x, r.y, r.width, r.height) for r in (fit(*STAMP_SIZE, cell) for cell in cells)]
        for index, (x, y, w, h) in enumerate(self._rects):
            stamp = read_stamp(luma[y : y + h, x : x + w])
            if stamp is not None:
                if index:
                    self._rects.insert(0, self._rects.pop(index))
                return stamp
        return None


async def run_observer(url: str, mode: str, peers: int, warmup: float, seconds: float) -> None:
    """Join last, decode everything, read stamps; report one window."""
    import aiortc.rtcrtpreceiver as rtcrtpreceiver
    from loadgen import counters, peer_colour, rates

    from client.encoded import PreEncodedAudioTrack, PreEncodedVideoTrack
    from client.peer import Peer

    reader = StampReader(mode, peers)
    recv = rtcrtpreceiver.RemoteStreamTrack.recv

    async def reading_recv(self: Any) -> Any:
        # Every decoded picture of every remote track passes here, in any mode, as the client gets it.
        frame = await recv(self)
        if self.kind == "video":
            reader.on_frame(self, frame)
        return frame

    rtcrtpreceiver.RemoteStreamTrack.recv = reading_recv  # type: ignore[method-assign]
    peer = Peer(url, ROOM, "observer", video=PreEncodedVideoTrack(peer_colour(99)), audio=PreEncodedAudioTrack(220.0),
                decode=True, chat=False, **mode_options(mode))  # fmt: skip
    try:
        reader.started = time.monotonic()
        await peer.join(timeout=30)
        await peer.wait_for(lambda: reader.first_stamp is not None, timeout=30)
        await asyncio.sleep(warmup)
        emit("start")
        first = counters(peer)
        reader.latencies.clear()
        await asyncio.sleep(seconds)
        last = counters(peer)
        window = rates(first, last)
        emit(
            "result",
            latencies=reader.latencies,
            first_picture_ms=(reader.first_picture - reader.started) * 1000,
            first_stamp_ms=(reader.first_stamp - reader.started) * 1000,
            **window,
        )
    finally:
        await asyncio.wait_for(peer.close(), 10)


# --- the driver ----------------------------------------------------------------------------------------------


@dataclass
class Result:
    mode: str
    peers: int
    server_cpu: float = 0.0
    observer_cpu: float = 0.0
    load_cpu: float = 0.0
    stamper_cpu: float = 0.0
    up_kbps: float = 0.0
    down_kbps: float = 0.0
    fps_in: float = 0.0
    streams: int = 0
    latency_median: float = 0.0
    latency_p95: float = 0.0
    latency_samples: int = 0
    first_picture_ms: float = 0.0
    load_average: float = 0.0
    steal: float = 0.0
    failure: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def expected_fps(self) -> float:
        return FPS if self.mode == "mcu" else CLIP_FPS * (self.peers - 1)

    @property
    def collapsed(self) -> bool:
        return bool(self.failure) or self.server_cpu > CPU_CAP or self.fps_in < self.expected_fps / 2

    @property
    def status(self) -> str:
        if self.failure:
            return f"collapsed ({self.failure})"
        reasons = []
        if self.server_cpu > CPU_CAP:
            reasons.append(f"server CPU > {CPU_CAP:.0f} %")
        if self.fps_in < self.expected_fps / 2:
            reasons.append(f"observer got {self.fps_in:.0f} of {self.expected_fps:.0f} fps")
        return f"collapsed ({', '.join(reasons)})" if reasons else "ok"


async def run_one(mode: str, count: int, args: argparse.Namespace, logs: Path) -> Result:
    """One fresh server, the load, the stamper and the observer; one window."""
    result = Result(mode, count, load_average=os.getloadavg()[0])
    port = free_port()
    url = f"ws://127.0.0.1:{port}/ws"
    processes: dict[str, asyncio.subprocess.Process] = {}

    async def start(name: str, *command: str) -> asyncio.subprocess.Process:
        with (logs / f"{name}-{mode}-{count}.log").open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                *command, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=log,
                start_new_session=True,  # Ctrl-C reaches only this script, which stops them in order
            )  # fmt: skip
        processes[name] = process
        return process

    try:
        with (logs / f"server-{mode}-{count}.log").open("wb") as log:
            server = processes["server"] = await start_server(
                port, log, "--size", f"{SIZE[0]}x{SIZE[1]}", "--fps", str(FPS), "--mode", mode, "--log-level", "WARNING"
            )
        await wait_healthy(port, server)
        if count > 2:
            load = await start("load", sys.executable, str(LOADGEN), url, "--room", ROOM, "--peers",
                               str(count - 2), "--mode", mode, "--ramp", "0.1", "--display", "plain",
                               "--interval", "100000")  # fmt: skip
            await next_line(load, timeout=10 * count + 30, prefix=b"ready:")
        stamper = await start("stamper", sys.executable, __file__, "_stamper", url, mode)
        await next_event(stamper, timeout=30)
        observer = await start("observer", sys.executable, __file__, "_observer", url, mode, str(count),
                               str(args.warmup), str(args.seconds))  # fmt: skip
        measured = [name for name in ("server", "observer", "load", "stamper") if name in processes]
        await next_event(observer, timeout=60 + args.warmup)
        ticks = {name: cpu_ticks(processes[name].pid) for name in measured}
        started, (steal, total) = time.monotonic(), steal_ticks()
        report = await next_event(observer, timeout=args.seconds + 20)
        elapsed = time.monotonic() - started
        used = {name: cpu_ticks(processes[name].pid) - ticks[name] for name in measured}
        steal_end, total_end = steal_ticks()
    except (RuntimeError, TimeoutError, asyncio.TimeoutError) as exc:
        result.failure = str(exc) or "timed out"
        print(f"  {mode} N={count}: {result.failure}; logs in {logs}", file=sys.stderr)
        return result
    finally:
        for name in ("observer", "stamper", "load", "server"):
            await stop(processes.get(name))
    cpu = {name: ticks_used / CLK_TCK / elapsed * 100 for name, ticks_used in used.items()}
    result.server_cpu, result.observer_cpu = cpu["server"], cpu["observer"]
    result.load_cpu, result.stamper_cpu = cpu.get("load", 0.0), cpu["stamper"]
    result.steal = 100 * (steal_end - steal) / max(total_end - total, 1)
    result.up_kbps, result.down_kbps = report["kbps_out"], report["kbps_in"]
    result.fps_in, result.streams = report["fps_in"], report["streams"]
    latencies = sorted(report["latencies"])
    result.latency_samples = len(latencies)
    if latencies:
        result.latency_median = statistics.median(latencies)
        result.latency_p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
    result.first_picture_ms = report["first_stamp_ms"]
    return result


def format_table(results: list[Result]) -> str:
    lines = [
        "| mode | N | server CPU % | observer CPU % | load peers CPU % (N-2) | stamper CPU % | observer up kbit/s "
        "| observer down kbit/s | observer fps in (streams) | latency median ms | latency p95 ms | first picture ms "
        "| load avg | steal % | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.failure:
            lines.append(f"| {r.mode} | {r.peers} |" + " |" * 12 + f" {r.status} |")
            continue
        lines.append(
            f"| {r.mode} | {r.peers} | {r.server_cpu:.1f} | {r.observer_cpu:.1f} | {r.load_cpu:.1f} "
            f"| {r.stamper_cpu:.1f} | {r.up_kbps:.0f} | {r.down_kbps:.0f} | {r.fps_in:.1f} ({r.streams}) "
            f"| {r.latency_median:.0f} | {r.latency_p95:.0f} | {r.first_picture_ms:.0f} | {r.load_average:.2f} "
            f"| {r.steal:.1f} | {r.status} |"
        )
    return "\n".join(lines)


def series(results: list[Result], mode: str, measure: str, collapsed: bool = False) -> tuple[list[int], list[float]]:
    """N and one measure of a mode's rows that held (collapsed=True: of those that collapsed but measured)."""
    rows = [r for r in results if r.mode == mode and not r.failure and r.collapsed == collapsed]
    return [r.peers for r in rows], [getattr(r, measure) for r in rows]


def targets(results: list[Result]) -> list[str]:
    """The issue's three targets, each checked against this run's rows."""
    lines = []
    held = {r.peers: r for r in results if r.mode == "mcu" and not r.collapsed}  # a starved observer decodes less
    if 2 in held and 16 in held:
        low, high = held[2], held[16]
        ratio = high.observer_cpu / max(low.observer_cpu, 1e-9)
        verdict = "met" if ratio <= 1.2 else "**not met**"
        line = (f"- MCU observer CPU at N = 16 / N = 2: {high.observer_cpu:.1f} / {low.observer_cpu:.1f} % = "
                f"{ratio:.2f}× (target ≤ 1.2×): {verdict}.")  # fmt: skip
        if abs(high.fps_in - low.fps_in) > 0.1 * FPS:
            # The CPU compares like with like only if the observer decoded as many frames at both N.
            per_frame = (high.observer_cpu / max(high.fps_in, 1e-9)) / (low.observer_cpu / max(low.fps_in, 1e-9))
            line += (f" But the observer decoded {low.fps_in:.1f} fps at N = 2 and {high.fps_in:.1f} at N = 16: "
                     f"per decoded frame the ratio is {per_frame:.2f}× "
                     f"({'met' if per_frame <= 1.2 else 'not met'}); a run on a quiet machine settles it.")  # fmt: skip
        lines.append(line)
    else:
        lines.append("- MCU observer CPU at N = 16 vs N = 2: not both measured without collapse in this run.")
    for mode, measure, what in (
        ("sfu", "observer_cpu", "SFU observer CPU"),
        ("mesh", "up_kbps", "Mesh upload per client"),
    ):
        n, values = series(results, mode, measure)
        if len(n) >= 2:
            grows = all(b > a for a, b in zip(values, values[1:]))
            text = " → ".join(f"{v:.0f} (N={k})" for k, v in zip(n, values))
            lines.append(f"- {what} grows with N: {text}: {'met' if grows else '**not met**'}.")
        else:
            lines.append(f"- {what} grows with N: fewer than two N measured without collapse in this run.")
    return lines


MEASURES = {
    "server_cpu": ("Server CPU", "% of one core"),
    "observer_cpu": ("Observer client CPU (decodes all it receives)", "% of one core"),
    "up_kbps": ("Upload per client (observer)", "kbit/s"),
    "down_kbps": ("Download per client (observer)", "kbit/s"),
    "latency_median": ("Added video latency, capture to decoded arrival (median; dashed: p95)", "ms"),
    "first_picture_ms": ("Time from join to the first picture of another peer", "ms"),
}


def plot(results: list[Result], directory: Path) -> list[Path]:
    """One PNG per measure against N, one line per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for measure, (title, unit) in MEASURES.items():
        figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
        for mode in MODES:
            n, values = series(results, mode, measure)
            if not n:
                n, values = series(results, mode, measure, collapsed=True)
            if not n:
                continue
            line = axes.plot(n, values, marker="o", label=mode)[0]
            if measure == "latency_median":
                axes.plot(*series(results, mode, "latency_p95"), linestyle="--", color=line.get_color())
            # Rows that collapsed: a cross, no line (the figure of a starved run is not the mode's cost).
            axes.plot(*series(results, mode, measure, collapsed=True), marker="x", linestyle="", color=line.get_color())
        axes.set_title(title, fontsize=10)
        axes.set_xlabel("peers in the room (N)")
        axes.set_ylabel(unit)
        axes.set_xticks(sorted({r.peers for r in results}))
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        path = directory / f"compare-{measure.replace('_', '-')}.png"
        figure.savefig(path)
        plt.close(figure)
        paths.append(path)
    return paths


def prose(results: list[Result]) -> list[str]:
    """What the plots show, in words, from this run's numbers."""

    def span(mode: str, measure: str, unit: str) -> str:
        rows = [r for r in results if r.mode == mode and not r.failure]
        if not rows:
            return f"{mode}: not measured"
        text = " → ".join(f"{getattr(r, measure):.0f}{'*' if r.collapsed else ''}" for r in rows)
        return f"{mode} {text} {unit} (N = {', '.join(str(r.peers) for r in rows)})"

    measured = [r for r in results if not r.failure]
    modes = [m for m in MODES if any(r.mode == m for r in results)]
    loads = [r.load_average for r in measured]
    out = []
    if measured:
        out.append(f"- **This run**: {sum(r.collapsed for r in results)} of {len(results)} rows collapsed; the "
                   f"machine's 1-minute load average went from {min(loads):.1f} to {max(loads):.1f} over the rows "
                   "(2 cores). A figure with * comes from a collapsed row: the processes were starved, so it is "
                   "not the mode's cost at that N.")  # fmt: skip
    out.append("- **Server CPU**: " + "; ".join(span(m, "server_cpu", "%") for m in modes) + ". The MCU decodes N "
               "upstreams and encodes one composite; the SFU only forwards packets (no codec), so its cost is per "
               "forwarded packet, N·(N-1) streams; in a mesh the server relays signaling only.")  # fmt: skip
    out.append("- **Observer CPU** (a client that decodes what it gets): " + "; ".join(
        span(m, "observer_cpu", "%") for m in modes) + ". In an MCU room it decodes one composite whatever N; in "
        "SFU and mesh rooms it decodes N-1 streams.")  # fmt: skip
    out.append("- **Upload per client**: " + "; ".join(span(m, "up_kbps", "kbit/s") for m in modes) + ". Only the "
               "mesh client sends its stream once per other peer.")  # fmt: skip
    out.append("- **Download per client**: " + "; ".join(span(m, "down_kbps", "kbit/s") for m in modes) + ". The "
               "composite has a fixed bitrate; SFU and mesh clients receive N-1 streams.")  # fmt: skip
    out.append("- **Added latency** (median): " + "; ".join(span(m, "latency_median", "ms") for m in modes) + ". "
               "The MCU adds a decode, a wait for its next composite tick and an encode; the SFU forwards packets "
               "as they come; the mesh goes peer to peer.")  # fmt: skip
    out.append("- **First picture** after join: " + "; ".join(span(m, "first_picture_ms", "ms") for m in modes)
               + ".")  # fmt: skip
    return out


def rerun_command() -> str:
    python = Path(sys.executable)
    if python.is_relative_to(REPO):
        python = python.relative_to(REPO)
    script = Path(__file__).resolve().relative_to(REPO)
    return shlex.join([str(python), str(script), *sys.argv[1:]])


def section(results: list[Result], args: argparse.Namespace, plots: list[Path], doc: Path) -> str:
    images = [f"![{MEASURES[p.stem.removeprefix('compare-').replace('-', '_')][0]}]"
              f"({os.path.relpath(p, doc.parent)})" for p in plots]  # fmt: skip
    return "\n".join(
        [
            BEGIN,
            "## MCU, SFU and mesh: server and client cost, latency, first picture",
            "",
            f"Measured {datetime.date.today().isoformat()} on {machine()} by `scripts/bench_compare.py`. Each row "
            f"is a fresh `mcu serve --mode MODE` ({SIZE[0]}x{SIZE[1]}@{FPS} composite in mcu rooms) and four kinds "
            "of process, so that /proc gives each its own CPU: N-2 load peers in one process (scripts/loadgen.py: "
            "pre-encoded VP8 320x240@15 ≈ 300 kbit/s and Opus, no decoding), one stamper (a live VP8 320x240@15 "
            "source that draws its capture time, in ms, as a checked barcode: client/stamp.py), and one "
            "observer that joins last and decodes everything it receives (video and audio), as a low-power "
            "client would. Over a window of "
            f"{args.seconds:g} s after a {args.warmup:g} s warm-up: CPU of each process (utime + stime, all "
            "threads, % of one core); the observer's upload and download (DTLS bytes on the wire, RTP and SRTP "
            "overhead included) and the video frames it decoded per second (all streams); the latency of each "
            "stamper frame from capture to its decoded arrival at the observer (the same machine clock; in an "
            "mcu room its tile is found in the grid); first picture: from the observer's join to the first "
            "decoded picture carrying a stamp. Load avg is the 1-minute load average when the row started and "
            "steal the share of the machine the hypervisor took during the window: this is a shared 2-core VM "
            "where other engineers run tests, so CPU and latency are those of a loaded machine. A row is "
            f"collapsed when the observer decodes under half the frames it should (composite {FPS} fps; "
            f"(N-1)·{CLIP_FPS} in sfu and mesh) or the server passes {CPU_CAP:.0f} % CPU; "
            + (
                "larger N are measured all the same (--keep-going); "
                if args.keep_going
                else "larger N of that mode are then skipped; "
            )
            + "plots show collapsed rows as crosses, off the lines, and the targets use only rows that held.",
            "",
            format_table(results),
            "",
            "Targets of the issue, in this run:",
            "",
            *targets(results),
            "",
            "What the plots show:",
            "",
            *prose(results),
            "",
            *images,
            "",
            *janus_section(results, args.janus_rows, args.janus_why),
            "",
            f"Re-run: `{rerun_command()}` (the rows as JSON: {os.path.relpath(args.plots, doc.parent)}/compare.json)",
            END,
        ]
    )


def run_janus(args: argparse.Namespace) -> tuple[list[dict], str]:
    """Janus VideoRoom under the same load (scripts/janus_videoroom.py, in a network namespace of its own).

    Returns its rows, or none and why it could not run.
    """
    if not args.janus_peers:
        return [], "not run (--janus-peers empty)."
    if shutil.which("janus") is None:
        return [], "not run: the Debian package `janus` is not installed (`apt-get install janus`)."
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return (
            [],
            "not run: it needs root and `unshare` for a network namespace of its own (see scripts/janus_videoroom.py).",
        )
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = ["unshare", "-n", sys.executable, str(REPO / "scripts" / "janus_videoroom.py"), "--namespace",
                   "--peers", ",".join(map(str, args.janus_peers)), "--seconds", str(args.seconds),
                   "--warmup", str(args.warmup), "--json", out.name]  # fmt: skip
        print(f"janus N={args.janus_peers} ...", file=sys.stderr, flush=True)
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120 * len(args.janus_peers))
        rows = json.loads(Path(out.name).read_text() or "[]") if done.returncode == 0 else []
    if not rows:
        return [], f"did not run here: `{shlex.join(command[:4])}` failed: {done.stderr.strip()[-300:]}"
    return rows, ""


def janus_table(results: list[Result], rows: list[dict]) -> str:
    """Server CPU per forwarded stream: Janus VideoRoom against our sfu rows of the same N."""
    ours = {r.peers: r for r in results if r.mode == "sfu" and not r.failure}
    lines = [
        "| N | forwarded video streams N·(N-1) | Janus CPU % | Janus % per stream | Janus fps per stream (min) "
        "| our sfu server CPU % | our sfu % per stream | ours / Janus | our sfu row | Janus load avg |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        streams = row["streams"]
        janus = f"| {row['peers']} | {streams} | {row['janus_cpu']:.1f} | {row['janus_cpu'] / streams:.2f} " \
                f"| {row['fps_per_stream_min']:.1f} "  # fmt: skip
        sfu = ours.get(row["peers"])
        if sfu is None:
            lines.append(janus + "| | | | not measured | " + f"{row['load_average']:.2f} |")
            continue
        ratio = (sfu.server_cpu / streams) / max(row["janus_cpu"] / streams, 1e-9)
        lines.append(janus + f"| {sfu.server_cpu:.1f} | {sfu.server_cpu / streams:.2f} | {ratio:.1f}× "
                     f"| {sfu.status} | {row['load_average']:.2f} |")  # fmt: skip
    return "\n".join(lines)


def janus_section(results: list[Result], rows: list[dict], why: str) -> list[str]:
    if not rows:
        return ["Janus VideoRoom: " + why]
    return [
        "Janus VideoRoom (Debian's `janus`, C) under the same load, measured in the same run: N aiortc peers in one "
        "process publish the same clips and each subscribes to every other publisher, receiving without decoding "
        "(scripts/janus_videoroom.py, in a network namespace of its own: Janus offers no loopback candidates). "
        "Per forwarded stream is the server's CPU divided by N·(N-1) video streams (each with its audio); in our "
        "sfu rows one of them is the stamper's lighter stream and the observer decodes, which costs the server "
        "nothing.",
        "",
        janus_table(results, rows),
    ]


async def run_all(args: argparse.Namespace) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="bench_compare-") as logs:
        return await run_series(
            args.modes, args.peers, lambda m, n: run_one(m, n, args, Path(logs)), format_table, args.keep_going
        )


def numbers(text: str) -> list[int]:
    values = [int(v) for v in text.split(",")]
    if min(values) < 2:
        raise argparse.ArgumentTypeError("N is at least 2 (the stamper and the observer)")
    return values


def main() -> None:
    if sys.argv[1:2] == ["_stamper"]:
        asyncio.run(run_stamper(*sys.argv[2:4]))
        return
    if sys.argv[1:2] == ["_observer"]:
        url, mode, count, warmup, seconds = sys.argv[2:7]
        asyncio.run(run_observer(url, mode, int(count), float(warmup), float(seconds)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=numbers, default=[2, 4, 8, 12, 16], help="values of N (default 2,4,8,12,16)")
    parser.add_argument("--modes", type=lambda t: t.split(","), default=list(MODES), help="default mcu,sfu,mesh")
    parser.add_argument("--seconds", type=float, default=15, help="measurement window in s (default 15)")
    parser.add_argument("--warmup", type=float, default=3, help="warm-up after the observer's first picture (3)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: N = 2,4, 4 s windows, 1 s warm-up")
    parser.add_argument(
        "--janus-peers",
        type=lambda t: [int(v) for v in t.split(",") if v],
        default=[2, 4, 8],
        help="N for Janus VideoRoom under the same load (default 2,4,8; empty: skip)",
    )
    parser.add_argument("--keep-going", action="store_true", help="measure larger N of a mode after it collapsed")
    parser.add_argument("--write", type=Path, help="replace the bench_compare section of this file")
    parser.add_argument("--plots", type=Path, default=REPO / "docs" / "plots", help="where the PNGs go (docs/plots)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    if unknown := set(args.modes) - set(MODES):
        parser.error(f"unknown modes: {', '.join(sorted(unknown))}")
    if args.quick:
        args.peers, args.seconds, args.warmup = [2, 4], 4.0, 1.0
        args.janus_peers = [n for n in args.janus_peers if n <= 4]
    try:
        results = asyncio.run(run_all(args))
        args.janus_rows, args.janus_why = run_janus(args)
    except KeyboardInterrupt:
        sys.exit(130)
    print(format_table(results))
    print("\n".join(targets(results)))
    print(janus_table(results, args.janus_rows) if args.janus_rows else f"Janus: {args.janus_why}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    if args.write:
        plots = plot(results, args.plots)
        write_section(args.write, section(results, args, plots, args.write))
        (args.plots / "compare.json").write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
        print(f"wrote {args.write} and {len(plots)} plots in {args.plots}")


if __name__ == "__main__":
    main()
