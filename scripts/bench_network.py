#!/usr/bin/env python3
"""Real networks: one peer behind an impaired link, the server adapting its tier or not, side by side.

For each impairment profile, a fresh `mcu serve` (1280x720@30 composite, its tiers) runs as a
subprocess on 127.0.0.1, once as it is and once with `--no-adapt`, alternating. Three peers join
one room from this process, each sending a pre-encoded moving 320x240@15 clip and an Opus tone:
two on clean loopback count what they receive without decoding it (their VP8 keyframes too), the
third reaches the server through a seeded userspace impairment of its own datagrams
(client/impairment.py: loss, delay, jitter, a rate limit with a tail-drop queue; this kernel has no
netem) and decodes the composite.

Over each run: the impaired peer's decoded frame rate (over the whole run, and over its last
LAST_SECONDS against the frame rate of the tier it ends on), its freezes over 0.5 s per minute and
its longest freeze once its first move took effect (or after SETTLE_SECONDS without one), the
longest wait from a tier move to its next picture, when the server
moved it down after the impairment began and back up after the link recovered (the `tier`
messages it got), the keyframes each clean peer received per minute, and the server's CPU (every
thread of the server and its room's video process, from /proc, in % of one core).

    .venv/bin/python scripts/bench_network.py [--profiles clean,3g,lossy-wifi,300k,drop]
                                             [--seconds 40] [--write docs/benchmarks.md] [--plot FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_room import (  # noqa: E402
    CLK_TCK,
    REPO,
    cpu_ticks,
    free_port,
    machine,
    start_server,
    stop,
    wait_healthy,
    write_section,
)

from client.encoded import PreEncodedAudioTrack, PreEncodedVideoTrack  # noqa: E402
from client.impairment import Impairment, Impairments  # noqa: E402
from client.peer import Peer  # noqa: E402
from signaling import protocol  # noqa: E402

BEGIN, END = "<!-- bench_network:begin -->", "<!-- bench_network:end -->"
#: The frame rate of each tier the server may move a receiver to (mcu/config.py); audio only has none.
TIER_FPS = {"high": 30, "low": 15, "small": 15, "audio": 0}
#: A stretch without a new picture longer than this is a freeze.
FREEZE = 0.5
#: Without a move, freezes count from here (joining, the first keyframes).
SETTLE_SECONDS = 5.0
#: The frame rate at the end of a run is measured over this.
LAST_SECONDS = 10.0


@dataclass(frozen=True)
class Phase:
    """From `at` seconds into the run on, the impaired peer's path is `path`."""

    at: float
    path: Impairments


def both(**settings: float) -> Impairments:
    return Impairments(up=Impairment(**settings), down=Impairment(**settings))


def down(rate: float, **settings: float) -> Impairments:
    return Impairments(up=Impairment(delay=settings.get("delay", 0)), down=Impairment(rate=rate, **settings))


#: A queue of about 200 ms at 300 kbit/s, in datagrams of ~1100 bytes.
SHORT_QUEUE = 7


#: The profiles: phases of the impaired peer's path. Rates in bit/s, delays and jitter in ms (one way).
PROFILES: dict[str, list[Phase]] = {
    "clean": [Phase(0, Impairments())],
    # A 3G-like downlink: 750 kbit/s, 100 ms of round trip.
    "3g": [Phase(0, down(750_000, delay=50))],
    # Lossy Wi-Fi: 5 % loss and up to 50 ms of jitter, both ways.
    "lossy-wifi": [Phase(0, both(loss=5, jitter=50, seed=7))],
    # A 300 kbit/s downlink: only the smallest tier or audio fits. Its queue of 50 datagrams holds
    # about 1.5 s at that rate (a bloated buffer, as on many mobile links): a picture sent after a
    # move down waits behind what the old tier filled it with.
    "300k": [Phase(0, down(300_000, delay=20))],
    # The same rate behind a queue of about 200 ms (7 datagrams), as tc's tbf with `latency 200ms`.
    "300k-short": [Phase(0, down(300_000, delay=20, queue=SHORT_QUEUE))],
    # A link that drops from 3 Mbit/s to 500 kbit/s for 20 s, then recovers (the rest of the run).
    "drop": [
        Phase(0, down(3_000_000, delay=20)),
        Phase(10, down(500_000, delay=20)),
        Phase(30, down(3_000_000, delay=20)),
    ],
}


@dataclass
class Result:
    profile: str
    adapt: bool
    seconds: float = 0.0
    fps: float = 0.0
    last_fps: float = 0.0
    end_tier: str = "high"
    freezes_per_minute: float = 0.0
    longest_freeze: float = 0.0
    #: The longest time from a tier move to the next picture.
    switch_freeze: float | None = None
    down_after: float | None = None
    up_after: float | None = None
    #: The tier messages the impaired peer got, as "tier@seconds".
    moves: list[str] = field(default_factory=list)
    good_keyframes_per_minute: float = 0.0
    server_cpu: float = 0.0
    lost: int = 0
    tail_dropped: int = 0
    #: (seconds into the run, frames decoded in that second) for the plot.
    timeline: list[tuple[float, int]] = field(default_factory=list)
    failure: str = ""

    @property
    def share_of_tier(self) -> str:
        """The impaired peer's frame rate over the last seconds against what its final tier sends."""
        tier_fps = TIER_FPS.get(self.end_tier, 0)
        return f"{self.last_fps / tier_fps:.0%}" if tier_fps else "(audio only)"


def tier_moves(peer: Peer, seen: int) -> list[str]:
    """The tiers the server moved `peer` to in its messages from the `seen`th on."""
    messages = map(protocol.read_server_message, peer.events[seen:])
    return [message.tier for message in messages if isinstance(message, protocol.Tier)]


async def run_one(
    profile: str, adapt: bool, seconds: float, logs: Path, log_level: str = "WARNING", tag: str = ""
) -> Result:
    result = Result(profile, adapt, seconds)
    phases = PROFILES[profile]
    port = free_port()
    server = None
    peers: list[Peer] = []
    try:
        with (logs / f"server-{profile}-{adapt}{tag}.log").open("wb") as log:
            server = await start_server(port, log, "--log-level", log_level, *([] if adapt else ["--no-adapt"]))
        await wait_healthy(port, server)
        url = f"ws://127.0.0.1:{port}/ws"

        def media(index: int, color: tuple[int, int, int]) -> dict:
            return {"video": PreEncodedVideoTrack(color), "audio": PreEncodedAudioTrack(300.0 + 200 * index)}

        colors = [(40, 200, 40), (40, 40, 200)]
        good = [Peer(url, "net", f"good{i}", decode=False, **media(i, c)) for i, c in enumerate(colors)]
        # It joins on a clean path; the profile's first phase starts with the measurement.
        impaired = Peer(url, "net", "impaired", impairment=Impairments(), **media(2, (200, 40, 40)))
        peers = [*good, impaired]
        for peer in peers:
            await peer.join(timeout=20)
        await impaired.wait_for(lambda: all(p.video_frames > 10 for p in peers), timeout=20)
        assert impaired.impaired is not None

        loop = asyncio.get_running_loop()
        start = loop.time()
        ticks = cpu_ticks(server.pid)
        keyframes = [p.video_keyframes for p in good]
        frames, frame_times, seen_events = impaired.video_frames, [], len(impaired.events)
        moves: list[tuple[float, str]] = []
        pending = list(phases)
        while (now := loop.time() - start) < seconds:
            if pending and now >= pending[0].at:
                phase = pending.pop(0)
                impaired.impaired.up.change(phase.path.up)
                impaired.impaired.down.change(phase.path.down)
            if impaired.video_frames != frames:
                # Every picture decoded since the last look: frames held behind a hole come out together.
                frame_times.extend([now] * (impaired.video_frames - frames))
                frames = impaired.video_frames
            for tier in tier_moves(impaired, seen_events):
                moves.append((now, tier))
            seen_events = len(impaired.events)
            await asyncio.sleep(0.005)
        elapsed = loop.time() - start
        result.server_cpu = (cpu_ticks(server.pid) - ticks) / CLK_TCK / elapsed * 100
        result.good_keyframes_per_minute = max(p.video_keyframes - k for p, k in zip(good, keyframes)) / elapsed * 60
        result.lost = impaired.impaired.up.counters.lost + impaired.impaired.down.counters.lost
        links = impaired.impaired.up, impaired.impaired.down
        result.tail_dropped = sum(link.counters.tail_dropped for link in links)
        measure(result, frame_times, moves, phases, elapsed)
        return result
    except (TimeoutError, RuntimeError, OSError) as exc:
        result.failure = str(exc) or type(exc).__name__
        return result
    finally:
        await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)
        await stop(server)


def measure(
    result: Result, frame_times: list[float], moves: list[tuple[float, str]], phases: list[Phase], elapsed: float
) -> None:
    """Frame rates, freezes and the times to move, from when each picture came and each `tier` message."""
    result.fps = len(frame_times) / elapsed
    result.last_fps = sum(1 for t in frame_times if t > elapsed - LAST_SECONDS) / LAST_SECONDS
    result.moves = [f"{tier}@{t:.1f}" for t, tier in moves]
    ceiling = "high"
    if moves:
        result.end_tier = moves[-1][1]
    worse = phases[1].at if len(phases) > 2 else 0.0  # a link that drops: from the drop on
    result.down_after = next((t - worse for t, tier in moves if t >= worse and tier != ceiling), None)
    if len(phases) > 2:
        recovered = phases[-1].at
        result.up_after = next((t - recovered for t, tier in moves if t >= recovered and tier == ceiling), None)
    # A move's first picture: what the switch cost. Freezes count once the first move has taken effect.
    firsts = [next((f for f in frame_times if f > t), elapsed) - t for t, _ in moves]
    result.switch_freeze = max(firsts, default=None)
    counted_from = moves[0][0] + firsts[0] if moves else SETTLE_SECONDS
    marks = [counted_from, *(t for t in frame_times if t > counted_from), elapsed]
    gaps = [b - a for a, b in zip(marks, marks[1:])]
    result.longest_freeze = max(gaps, default=0.0)
    result.freezes_per_minute = sum(g > FREEZE for g in gaps) / max(elapsed - counted_from, 1e-9) * 60
    result.timeline = [(float(s), sum(1 for t in frame_times if s <= t < s + 1)) for s in range(int(elapsed))]


def seconds_or_dash(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def format_table(results: list[Result]) -> str:
    lines = [
        "| profile | adapt | fps (run) | fps (last 10 s) | tier at the end | share of that tier's fps "
        "| freezes > 0.5 s per min "
        "| longest freeze, s | longest switch, s | down after, s | up after, s | tier moves (tier@s) "
        "| good peers' keyframes per min "
        "| server CPU % "
        "| lost / tail-dropped datagrams |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.failure:
            lines.append(f"| {r.profile} | {'on' if r.adapt else 'off'} | failed: {r.failure} |" + " |" * 12)
            continue
        lines.append(
            f"| {r.profile} | {'on' if r.adapt else 'off'} | {r.fps:.1f} | {r.last_fps:.1f} | {r.end_tier} "
            f"| {r.share_of_tier} | {r.freezes_per_minute:.1f} | {r.longest_freeze:.2f} "
            f"| {seconds_or_dash(r.switch_freeze, 2)} "
            f"| {seconds_or_dash(r.down_after)} | {seconds_or_dash(r.up_after)} | {' '.join(r.moves)} "
            f"| {r.good_keyframes_per_minute:.1f} | {r.server_cpu:.1f} | {r.lost} / {r.tail_dropped} |"
        )
    return "\n".join(lines)


def plot(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profiles = list(dict.fromkeys(r.profile for r in results))
    figure, axes = plt.subplots(len(profiles), 1, figsize=(9, 2.2 * len(profiles)), sharex=True, squeeze=False)
    for axis, profile in zip(axes[:, 0], profiles):
        for r in (r for r in results if r.profile == profile and not r.failure):
            xs, ys = zip(*r.timeline) if r.timeline else ((), ())
            axis.plot(xs, ys, label=f"adaptation {'on' if r.adapt else 'off'}", drawstyle="steps-post")
        for phase in PROFILES[profile][1:]:
            axis.axvline(phase.at, color="grey", linestyle=":")
        axis.set_ylabel("fps")
        axis.set_title(f"{profile}: the impaired peer's decoded composite", fontsize=9)
        axis.set_ylim(0, 32)
        axis.legend(fontsize=7, loc="lower right")
    axes[-1, 0].set_xlabel("seconds into the run (dotted: the link changes)")
    figure.tight_layout()
    figure.savefig(path, dpi=90)


def section(
    results: list[Result], cpu: dict[str, list[float]], args: argparse.Namespace, plot_path: Path | None
) -> str:
    rerun = " ".join([".venv/bin/python", "scripts/bench_network.py", *sys.argv[1:]])
    lines = [
        BEGIN,
        "## Real networks: one impaired peer, adaptation on and off",
        "",
        f"Measured {datetime.date.today().isoformat()} on {machine()}. Each row is a fresh `mcu serve` (1280x720@30, "
        "tiers high 1280x720@30, low 640x360@15, small 320x180@15, then audio only) with three peers sending a "
        "moving 320x240@15 VP8 clip and an Opus tone; two on clean loopback, the third behind a seeded userspace "
        "impairment of its own datagrams (client/impairment.py). Profiles: `clean`; `3g` 750 kbit/s down with 100 ms "
        "of round trip; `lossy-wifi` 5 % loss and up to 50 ms jitter both ways; `300k` a 300 kbit/s downlink "
        "behind a queue of 50 datagrams (about 1.5 s), `300k-short` the same behind about 200 ms (7 datagrams); `drop` "
        "3 Mbit/s, then 500 kbit/s from 10 s to 30 s, then 3 Mbit/s again. `adapt off` is `--no-adapt`: the peer "
        f"stays on its join tier (high). Each run {args.seconds:g} s after all peers receive; `down after` counts from "
        "the impairment's start (each peer joins on a clean path, the profile starts with the measurement; for `drop`, "
        "from the drop), `up after` from the recovery; freezes count from the first picture after the first "
        f"move (else from {SETTLE_SECONDS:g} s); `longest switch` is the longest wait from a move to the next "
        "picture (on a move down: the bottleneck's queue of the old tier draining, then the new tier's keyframe). "
        "Server CPU: every thread of the server and its video process.",
        "",
        format_table(results),
        "",
    ]
    if cpu:
        lines += [
            f"The server's CPU, {args.cpu_rounds} rounds of {args.cpu_seconds:g} s runs that alternate the profiles "
            "(adaptation on):",
            "",
            format_cpu_table(cpu),
            "",
        ]
    if plot_path is not None:
        lines += [f"![the impaired peer's frame rate per second]({plot_path.relative_to(REPO / 'docs')})", ""]
    lines += [f"Re-run: `{rerun}`", END]
    return "\n".join(lines)


def cpu_profiles(profiles: list[str]) -> list[str]:
    """The profiles whose path stays the same all run (a CPU figure of `drop` mixes its phases), clean first."""
    steady = [p for p in profiles if len(PROFILES[p]) == 1 and p != "clean"]
    return ["clean", *steady]


def format_cpu_table(cpu: dict[str, list[float]]) -> str:
    """The server's CPU per profile with adaptation, over interleaved rounds, against clean's median."""
    lines = [
        "| profile (adaptation on) | runs | server CPU %, median | min - max | median against clean |",
        "|---|---|---|---|---|",
    ]
    clean = statistics.median(cpu["clean"]) if cpu.get("clean") else None
    for profile, values in cpu.items():
        median = statistics.median(values)
        against = f"{median / clean - 1:+.1%}" if clean else ""
        spread = f"{min(values):.1f} - {max(values):.1f}"
        lines.append(f"| {profile} | {len(values)} | {median:.1f} | {spread} | {against} |")
    return "\n".join(lines)


async def run_all(args: argparse.Namespace) -> tuple[list[Result], dict[str, list[float]]]:
    results = []
    cpu: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_network-") as temporary:
        logs = args.logs or Path(temporary)
        logs.mkdir(parents=True, exist_ok=True)
        level = "INFO" if args.logs else "WARNING"
        for profile in args.profiles:
            for adapt in (True, False):
                print(f"{profile} adapt={adapt} ...", file=sys.stderr, flush=True)
                seconds = max(args.seconds, PROFILES[profile][-1].at + 25)
                result = await run_one(profile, adapt, seconds, logs, level)
                print(f"  {format_table([result]).splitlines()[-1]}", file=sys.stderr, flush=True)
                results.append(result)
        # One run's CPU is within the machine's noise of another's: rounds that alternate the
        # profiles, compared by their medians, show what adapting costs against a clean link.
        for round_ in range(args.cpu_rounds):
            for profile in cpu_profiles(args.profiles):
                print(f"cpu round {round_ + 1}: {profile} ...", file=sys.stderr, flush=True)
                result = await run_one(profile, True, args.cpu_seconds, logs, level, f"-cpu{round_ + 1}")
                if not result.failure:
                    cpu.setdefault(profile, []).append(result.server_cpu)
    return results, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=lambda t: t.split(","), default=list(PROFILES))
    parser.add_argument("--seconds", type=float, default=40, help="length of a run (drop: at least 55)")
    parser.add_argument("--write", type=Path, help="replace (or add) this benchmark's section of a Markdown file")
    parser.add_argument("--plot", type=Path, help="draw the frame rates per second to this PNG (needs matplotlib)")
    parser.add_argument("--cpu-rounds", type=int, default=0, help="then alternate the steady profiles this many times")
    parser.add_argument("--cpu-seconds", type=float, default=20, help="length of a CPU round's run (default 20)")
    parser.add_argument("--logs", type=Path, help="keep each server's log (at INFO: its tier moves) in this folder")
    args = parser.parse_args()
    unknown = set(args.profiles) - PROFILES.keys()
    if unknown:
        parser.error(f"unknown profiles {sorted(unknown)}: {', '.join(PROFILES)}")
    results, cpu = asyncio.run(run_all(args))
    print(format_table(results))
    if cpu:
        print(format_cpu_table(cpu))
    if args.plot:
        plot(results, args.plot)
    if args.write:
        write_section(args.write, section(results, cpu, args, args.plot.resolve() if args.plot else None))


if __name__ == "__main__":
    main()
