"""A bad network: one peer behind `tc netem` (5 % loss, 50 ms delay with 50 ms jitter) in a network namespace.

The test makes the namespace itself: `ip netns add`, a veth pair with the MCU
on the host end (bound to that address only) and the impaired `mcu-client`
process on the other, netem on both ends so that its upstream and downstream
suffer. It works from inside the loopback-only namespace that scripts/test runs
the suite in, and skips, saying why, where the kernel or our capabilities
forbid a namespace, a veth pair or the netem qdisc.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from conftest import free_port, stop_process
from media_checks import cell_colours, close_to

from client.peer import Peer
from client.sources import COLORS, ColorTrack, ToneTrack, rgb_to_yuv
from mcu.config import Config
from mcu.server.app import CONFERENCE, create_app
from signaling import ice

BIN = Path(sys.executable).parent
NETEM = ["netem", "loss", "5%", "delay", "50ms", "50ms"]
FPS = 15
#: The clean peers' composite, in every 1-s window.
MIN_FPS = 0.9 * FPS
#: The impaired peer's frames at the server: on average, and in every 2-s window (no long freeze).
MIN_MEAN_FPS_IMPAIRED = 0.7 * FPS
MIN_WINDOW_FRAMES_IMPAIRED = 5
#: Share of the clean peers' samples in which the impaired peer's tile shows its colour.
MIN_COLOUR_SHARE = 0.8
SECONDS = 20


@dataclass
class Namespace:
    name: str
    host: str
    peer: str


def ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)


@pytest.fixture
def impaired() -> Iterator[Namespace]:
    """A namespace behind a veth pair with netem on both ends; removed afterwards whatever happens."""
    pid = os.getpid()
    net = Namespace(f"mcu-netem-{pid}", f"10.213.{pid % 250}.1", f"10.213.{pid % 250}.2")
    host_if, peer_if = f"mcuh{pid % 100000}", f"mcup{pid % 100000}"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        pytest.skip("iproute2 (ip, tc) is not installed")
    try:
        made = ip("netns", "add", net.name)
        if made.returncode:
            pytest.skip(f"cannot make a network namespace here (needs CAP_SYS_ADMIN/CAP_NET_ADMIN): {made.stderr}")
        for step in (
            ["link", "add", host_if, "type", "veth", "peer", "name", peer_if, "netns", net.name],
            ["addr", "add", f"{net.host}/24", "dev", host_if],
            ["link", "set", host_if, "up"],
            ["-n", net.name, "addr", "add", f"{net.peer}/24", "dev", peer_if],
            ["-n", net.name, "link", "set", peer_if, "up"],
            ["-n", net.name, "link", "set", "lo", "up"],
        ):
            done = ip(*step)
            if done.returncode:
                pytest.skip(f"cannot set up the veth pair (ip {' '.join(step)}): {done.stderr}")
        for netns, device in ((None, host_if), (net.name, peer_if)):
            tc = ["tc", *(["-n", netns] if netns else []), "qdisc", "add", "dev", device, "root", *NETEM]
            done = subprocess.run(tc, capture_output=True, text=True, timeout=10)
            if done.returncode:
                pytest.skip(f"this kernel has no usable netem qdisc (sch_netem): tc said {done.stderr.strip()!r}")
        yield net
    finally:
        ip("link", "del", host_if)
        ip("netns", "del", net.name)


def count_calls(owner: object, name: str) -> list[float]:
    """Wrap `owner.name` (a coroutine method, per instance); the list gets the time each call returns."""
    calls: list[float] = []
    original = getattr(owner, name)

    async def counted(*args, **kwargs):
        result = await original(*args, **kwargs)
        calls.append(time.monotonic())
        return result

    setattr(owner, name, counted)
    return calls


async def test_a_peer_behind_loss_and_jitter_recovers_and_the_room_runs_on(impaired, tmp_path):
    previous = ice._host_addresses
    ice.use_host_addresses([impaired.host])  # the server and the clean peers, on the host end
    runner = web.AppRunner(create_app(Config(width=640, height=360, fps=FPS, video_bitrate=600_000)))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, impaired.host, port).start()  # the veth address, not 0.0.0.0
    url = f"ws://{impaired.host}:{port}/ws"
    clean = [
        Peer(url, "bad", "green", video=ColorTrack(COLORS["green"]), audio=ToneTrack(440), chat=False),
        Peer(url, "bad", "blue", video=ColorTrack(COLORS["blue"]), audio=ToneTrack(660), chat=False),
    ]
    log = (tmp_path / "client.log").open("w")
    client: subprocess.Popen | None = None
    try:
        for peer in clean:
            await peer.join()
        client = subprocess.Popen(
            ["ip", "netns", "exec", impaired.name, BIN / "mcu-client", "join", url, "--room", "bad",
             "--name", "impaired", "--video", "color:red", "--audio", "tone:700", "--duration", "60"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        room = runner.app[CONFERENCE].rooms["bad"]

        def receiver():
            participant = next((p for p in room.participants.values() if p.name == "impaired"), None)
            if participant is None or participant.pc is None:
                return None
            return next((r for r in participant.pc.getReceivers() if r.track and r.track.kind == "video"), None)

        await clean[0].wait_for(lambda: receiver() is not None, 30)
        video = receiver()
        nacks, plis = count_calls(video, "_send_rtcp_nack"), count_calls(video, "_send_rtcp_pli")
        frames = count_calls(video.track, "recv")  # the participant's consumer calls it once per frame
        red = rgb_to_yuv(COLORS["red"])
        await clean[0].wait_for(lambda: close_to(cell_colours(clean[0].video_frame, 3)[2], red), 30)

        start = time.monotonic()
        samples: list[tuple[float, list[int]]] = []
        tiles: list[bool] = []
        while time.monotonic() - start < SECONDS:
            samples.append((time.monotonic(), [p.video_frames for p in clean]))
            for _ in range(5):
                tiles.extend(close_to(cell_colours(p.video_frame, 3)[2], red) for p in clean)
                await asyncio.sleep(0.2)
        end = time.monotonic()
        assert client.poll() is None, (tmp_path / "client.log").read_text()

        arrived = [t for t in frames if start <= t < end]
        mean = len(arrived) / (end - start)
        windows = [sum(1 for t in arrived if w <= t < w + 2) for w in range(int(start), int(end) - 1)]
        rates = [[(b - a) / (t1 - t0) for a, b in zip(f0, f1)] for (t0, f0), (t1, f1) in zip(samples, samples[1:])]
        share = sum(tiles) / len(tiles)
        window_nacks = sum(1 for t in nacks if start <= t < end)
        window_plis = sum(1 for t in plis if start <= t < end)
        print(
            f"\nnetem {' '.join(NETEM)}: impaired frames at the server {mean:.1f}/s (fewest in 2 s: {min(windows)}), "
            f"its colour in {share:.0%} of tiles, {window_nacks} NACKs and {window_plis} PLIs sent in {SECONDS} s; "
            f"clean peers' worst 1-s fps {min(min(r) for r in rates):.1f}"
        )
        # Packets were lost and asked for again: the recovery this test is about happened.
        assert window_nacks > 0, (window_nacks, window_plis)
        assert mean >= MIN_MEAN_FPS_IMPAIRED and min(windows) >= MIN_WINDOW_FRAMES_IMPAIRED, (mean, windows)
        assert share >= MIN_COLOUR_SHARE, share
        for index, window in enumerate(rates):
            assert min(window) >= MIN_FPS, (index, window)
        assert not any(p.errors for p in clean)
    finally:
        if client is not None:
            stop_process(client)
        log.close()
        await asyncio.gather(*(peer.close() for peer in clean), return_exceptions=True)
        await runner.cleanup()
        ice.use_host_addresses(previous)
