#!/usr/bin/env python3
"""Soak: a 12-peer room with churn for a long while; does the server grow?

A fresh `mcu serve` runs as a subprocess on 127.0.0.1; this script runs the
load peers (pre-encoded clip sent, composite counted without decoding) and,
every `--every` seconds, makes the `--churn` oldest leave and as many new ones
join. Every `--sample` seconds it reads the server's RSS, CPU (utime + stime
of all threads, % of one core), threads and fds from /proc, its asyncio tasks
and composite frame count from /metrics, and the slowest peer's received fps.

It writes docs/plots/soak.csv and docs/plots/soak.png and, with --write, the
soak section of docs/benchmarks.md: the least-squares slope of RSS over the
second half of the run (MiB/hour) and a verdict.

    .venv/bin/python scripts/soak.py [--minutes 30] [--peers 12] [--churn 2] [--every 30]
                                     [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime
import os
import shlex
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import aiohttp
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_room import cpu_ticks, process_tree, start_server  # noqa: E402  (a sibling script, not a package)
from bench_room import stop as stop_process  # noqa: E402  (`stop` here is the run's event)

from client.encoded import PreEncodedAudioTrack, PreEncodedVideoTrack  # noqa: E402
from client.peer import Peer  # noqa: E402

PLOTS = REPO / "docs" / "plots"
BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: Under this RSS slope (MiB/hour, second half) the verdict is "no growth trend": a leak of 100 KiB
#: per churned peer at the default churn (240 peers an hour) would show as about 23 MiB/hour.
TREND_MIB_PER_HOUR = 5.0


@dataclass
class Sample:
    seconds: float
    rss_mib: float
    #: The server process alone (the rest of `rss_mib` is its rooms' video processes).
    server_rss_mib: float
    cpu_percent: float
    threads: int
    fds: int
    tasks: int
    peers: int
    #: Peers the server dropped so far (their media connection failed), each replaced by a new one.
    dropped: int
    composite_fps: float
    slowest_peer_fps: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proc(pid: int) -> tuple[float, float, int, int, int]:
    """(RSS MiB, the server's own RSS MiB, utime + stime ticks, threads, fds) of a server with its video processes."""
    rss = own = threads = fds = 0.0
    for member in process_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
            member_rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) / 1024
            threads += len(os.listdir(f"/proc/{member}/task"))
            fds += len(os.listdir(f"/proc/{member}/fd"))
        except FileNotFoundError:
            continue  # it ended meanwhile
        rss += member_rss
        own += member_rss if member == pid else 0.0
    return rss, own, cpu_ticks(pid), int(threads), int(fds)


async def scrape(session: aiohttp.ClientSession, port: int) -> dict[str, float]:
    """The server's asyncio task count and composite frames so far (summed over rooms)."""
    async with session.get(f"http://127.0.0.1:{port}/metrics") as reply:
        text = await reply.text()
    values = {"tasks": 0.0, "frames": 0.0}
    for line in text.splitlines():
        if line.startswith("mcu_asyncio_tasks "):
            values["tasks"] = float(line.split()[-1])
        elif line.startswith("mcu_composite_frames_total{"):
            values["frames"] += float(line.split()[-1])
    return values


class Room:
    """The load peers: joined in order, the oldest leave first."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.peers: list[Peer] = []
        self.joined = 0
        #: Joins that failed (no answer, an error): a soak counts them rather than stopping.
        self.failed = 0
        self.dropped = 0

    async def join(self, count: int) -> None:
        new = []
        for _ in range(count):
            index = self.joined
            self.joined += 1
            hue = (index * 47) % 200
            new.append(
                Peer(
                    self.url,
                    "soak",
                    f"load{index}",
                    video=PreEncodedVideoTrack((40 + hue, 230 - hue, 90 + index * 13 % 120)),
                    audio=PreEncodedAudioTrack(300.0 + 10 * (index % 40)),
                    decode=False,
                    chat=index % 2 == 0,
                )  # fmt: skip
            )
        results = await asyncio.gather(*(peer.join(timeout=20) for peer in new), return_exceptions=True)
        for peer, result in zip(new, results):
            if isinstance(result, BaseException):
                print(f"{peer.name} could not join: {result!r}", file=sys.stderr, flush=True)
                self.failed += 1
                await peer.close()
            else:
                self.peers.append(peer)

    async def replace_dropped(self) -> None:
        """Peers whose connection the server closed (e.g. `media_failed`) go, and as many new ones join."""
        dropped = [
            p for p in self.peers if p.errors or (p.pc is not None and p.pc.connectionState in ("failed", "closed"))
        ]
        if dropped:
            self.peers = [p for p in self.peers if p not in dropped]
            self.dropped += len(dropped)
            await asyncio.gather(*(peer.close() for peer in dropped), return_exceptions=True)
            await self.join(len(dropped))

    async def leave(self, count: int) -> None:
        gone, self.peers = self.peers[:count], self.peers[count:]
        await asyncio.gather(*(peer.close() for peer in gone), return_exceptions=True)


async def churn(room: Room, args: argparse.Namespace, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), args.every)
        except asyncio.TimeoutError:
            await room.leave(args.churn)
            await room.join(args.churn)


async def run(args: argparse.Namespace) -> tuple[list[Sample], int]:
    """The samples, and how many joins failed."""
    port = free_port()
    log = tempfile.NamedTemporaryFile("w", prefix="soak-server-", suffix=".log", delete=False)
    server = await start_server(port, log, "--size", args.size, "--fps", str(args.fps), "--log-level", "WARNING")
    room = Room(f"ws://127.0.0.1:{port}/ws")
    samples: list[Sample] = []
    stop = asyncio.Event()
    churner: asyncio.Task[None] | None = None
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 20
            while True:
                try:
                    await scrape(session, port)
                    break
                except aiohttp.ClientError:
                    if time.monotonic() > deadline or server.returncode is not None:
                        raise RuntimeError(f"mcu serve did not start; see {log.name}") from None
                    await asyncio.sleep(0.2)
            await room.join(args.peers)
            churner = asyncio.ensure_future(churn(room, args, stop))
            start = time.monotonic()
            last_time, (_, _, last_ticks, _, _) = start, proc(server.pid)
            last_frames = (await scrape(session, port))["frames"]
            # Keyed by the peers themselves, not id(): a new peer may get a departed one's id.
            last_counts = {p: p.video_frames for p in room.peers}
            while (now := time.monotonic()) - start < args.minutes * 60:
                await asyncio.sleep(args.sample)
                await room.replace_dropped()
                now = time.monotonic()
                rss, own, ticks, threads, fds = proc(server.pid)
                metrics = await scrape(session, port)
                counts = {p: p.video_frames for p in room.peers}
                # Only peers present for the whole interval: a joiner's first second is its ICE set-up.
                steady = [counts[k] - last_counts[k] for k in counts if k in last_counts]
                interval = now - last_time
                samples.append(
                    Sample(
                        round(now - start, 1),
                        round(rss, 2),
                        round(own, 2),
                        round((ticks - last_ticks) / CLK_TCK / interval * 100, 1),
                        threads,
                        fds,
                        int(metrics["tasks"]),
                        len(room.peers),
                        room.dropped,
                        round((metrics["frames"] - last_frames) / interval, 2),
                        round(min(steady) / interval, 2) if steady else 0.0,
                    )  # fmt: skip
                )
                print(samples[-1], flush=True)
                last_time, last_ticks, last_frames, last_counts = now, ticks, metrics["frames"], counts
    finally:
        stop.set()
        if churner is not None:
            await asyncio.gather(churner, return_exceptions=True)
        await room.leave(len(room.peers))
        await stop_process(server)
        log.close()
    return samples, room.failed


def rss_slope(samples: list[Sample], name: str = "rss_mib") -> tuple[float, float]:
    """Least-squares slope of RSS (`name`) over the second half of the run, MiB/hour, and its standard error."""
    half = [s for s in samples if s.seconds >= samples[-1].seconds / 2]
    hours = np.array([s.seconds for s in half]) / 3600
    rss = np.array([getattr(s, name) for s in half])
    (slope, _), cov = np.polyfit(hours, rss, 1, cov=True)
    return float(slope), float(np.sqrt(cov[0, 0]))


def write_csv(samples: list[Sample], path: Path) -> None:
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, [f.name for f in fields(Sample)])
        writer.writeheader()
        writer.writerows(asdict(s) for s in samples)


def plot(samples: list[Sample], path: Path, slope: float, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = np.array([s.seconds for s in samples]) / 60
    figure, (top, middle, bottom) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    top.plot(minutes, [s.rss_mib for s in samples], label="RSS")
    top.plot(minutes, [s.server_rss_mib for s in samples], label="RSS, server process alone")
    half = minutes >= minutes[-1] / 2
    rss = np.array([s.rss_mib for s in samples])
    fit = np.polyfit(minutes[half] / 60, rss[half], 1)
    top.plot(minutes[half], np.polyval(fit, minutes[half] / 60), "--", label=f"fit, second half: {slope:+.1f} MiB/h")
    top.set_ylabel("RSS, MiB")
    top.legend(loc="lower right")
    middle.plot(minutes, [s.cpu_percent for s in samples], label="server CPU, % of one core")
    middle.plot(minutes, [s.composite_fps for s in samples], label="composite fps")
    middle.plot(minutes, [s.slowest_peer_fps for s in samples], label="slowest peer fps")
    middle.legend(loc="lower right")
    for name in ("threads", "fds", "tasks"):
        bottom.plot(minutes, [getattr(s, name) for s in samples], label=name)
    bottom.set_ylabel("count")
    bottom.set_xlabel("minutes")
    bottom.legend(loc="lower right")
    top.set_title(
        f"Soak: {args.peers} peers, {args.churn} leave and {args.churn} join every {args.every:g} s, "
        f"{args.size}@{args.fps}"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=80)


def verdict(slope: float, error: float) -> str:
    if slope < TREND_MIB_PER_HOUR:
        return f"no growth trend (slope under {TREND_MIB_PER_HOUR:g} MiB/hour)"
    return f"RSS grows: {slope:.1f} ± {error:.1f} MiB/hour"


def summary(samples: list[Sample], label: str) -> str:
    values = [getattr(s, label) for s in samples]
    return f"{min(values)}-{max(values)}"


def section(samples: list[Sample], args: argparse.Namespace, slope: float, error: float, failed: int) -> str:
    half = [s for s in samples if s.seconds >= samples[-1].seconds / 2]
    python = Path(sys.executable)
    if python.is_relative_to(REPO):
        python = python.relative_to(REPO)
    rerun = shlex.join([str(python), "scripts/soak.py", *sys.argv[1:]])
    full = shlex.join([str(python), "scripts/soak.py", "--minutes", "30", "--write", "docs/benchmarks.md"])
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), "unknown CPU",
    )  # fmt: skip
    churned = int(samples[-1].seconds // args.every) * args.churn
    own_slope, own_error = rss_slope(samples, "server_rss_mib")
    return "\n".join(
        [
            BEGIN,
            f"## Soak: a {args.peers}-peer room with churn",
            "",
            f"Measured {datetime.date.today().isoformat()} on {model}, nproc {os.cpu_count()}: "
            f"{samples[-1].seconds / 60:.1f} minutes of a {args.peers}-peer room "
            f"({args.size}@{args.fps} composite, load peers sending a pre-encoded VP8 clip and Opus, counting "
            f"without decoding, half with a chat channel), {args.churn} peers leaving and {args.churn} joining "
            f"every {args.every:g} s ({churned} came and went; joins that failed: {failed}). `mcu serve` ran as its "
            "own process, with its rooms' video processes; every "
            f"{args.sample:g} s the script read their RSS, CPU, threads and fds (summed) from /proc and the "
            "server's asyncio tasks from /metrics.",
            "",
            "![soak](plots/soak.png)",
            "",
            "| | whole run | second half |",
            "|---|---|---|",
            *(
                f"| {label} | {summary(samples, name)} | {summary(half, name)} |"
                for label, name in (
                    ("RSS, MiB", "rss_mib"),
                    ("RSS of the server process alone, MiB", "server_rss_mib"),
                    ("server CPU, % of one core", "cpu_percent"),
                    ("threads", "threads"),
                    ("file descriptors", "fds"),
                    ("asyncio tasks", "tasks"),
                    ("composite fps", "composite_fps"),
                    ("slowest peer's fps", "slowest_peer_fps"),
                )
            ),
            "",
            f"Peers the server dropped (their media connection failed) and the script replaced: {samples[-1].dropped}.",
            "",
            f"RSS over the second half, least-squares slope: **{slope:+.1f} ± {error:.1f} MiB/hour** "
            f"(± one standard error): {verdict(slope, error)}; the server process alone: "
            f"{own_slope:+.1f} ± {own_error:.1f} MiB/hour. The threshold is "
            f"{TREND_MIB_PER_HOUR:g} MiB/hour: a leak of 100 KiB per churned peer would show as about "
            f"{100 / 1024 * args.churn * 3600 / args.every:.0f} MiB/hour at this churn. "
            "Samples: docs/plots/soak.csv.",
            "",
            f"Re-run: `{rerun}`; the full 30 minutes: `{full}`.",
            END,
        ]
    )


def write_section(path: Path, text: str) -> None:
    """Replace the soak section of `path`, or add it at the end."""
    current = path.read_text()
    if BEGIN in current and END in current:
        before, rest = current.split(BEGIN, 1)
        path.write_text(before + text + rest.split(END, 1)[1])
    else:
        path.write_text(current.rstrip("\n") + "\n\n" + text + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30, help="length of the run (default 30)")
    parser.add_argument("--peers", type=int, default=12, help="peers in the room (default 12)")
    parser.add_argument("--churn", type=int, default=2, help="peers that leave, and join, each time (default 2)")
    parser.add_argument("--every", type=float, default=30, help="seconds between churns (default 30)")
    parser.add_argument("--sample", type=float, default=5, help="seconds between samples (default 5)")
    parser.add_argument("--size", default="640x360", help="composite size (default 640x360)")
    parser.add_argument("--fps", type=int, default=15, help="composite frame rate (default 15)")
    parser.add_argument("--write", type=Path, help="replace the soak section of this file (docs/benchmarks.md)")
    args = parser.parse_args()
    PLOTS.mkdir(parents=True, exist_ok=True)
    samples, failed = asyncio.run(run(args))
    if len(samples) < 4:
        sys.exit("too few samples for a trend")
    slope, error = rss_slope(samples)
    write_csv(samples, PLOTS / "soak.csv")
    plot(samples, PLOTS / "soak.png", slope, args)
    print(
        f"RSS slope over the second half: {slope:+.2f} ± {error:.2f} MiB/hour: {verdict(slope, error)}; "
        f"failed joins: {failed}"
    )
    if args.write:
        write_section(args.write, section(samples, args, slope, error, failed))
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
