"""A receiver behind a real 700 kbit/s bottleneck (tc tbf) is moved down a tier, and back up when it lifts.

The server composes 1280x720@30 (1.5 Mbit/s) for three peers that send a
moving, noisy 320x240@15 clip: two on the host, one (tests/bottleneck_peer.py)
in a network namespace whose downstream is shaped by tbf on the server's end of
a veth pair (tests/netns.py). Measured: how soon the slow peer leaves the high
tier, its decoding on the lower tier (frames, VP8 decode errors) while the
bottleneck lasts, how soon after the bottleneck lifts it is back on its ceiling,
and the keyframes the shared high encoder was asked for meanwhile (what the peers
with good links pay for the bad one).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest
from aiohttp import web
from conftest import free_port
from netns import Unavailable, veth_namespace

from client.encoded import PreEncodedAudioTrack, PreEncodedVideoTrack
from client.peer import Peer
from mcu.app import CONFERENCE, create_app
from mcu.config import Config
from mcu.encoders import KEYFRAME_MIN_INTERVAL, Output
from signaling import ice

HERE = Path(__file__).resolve().parent
HIGH = Output("vp8", "high")
BOTTLENECK = "700kbit"
#: How long the bottleneck lasts, counted from when it is put on.
BOTTLENECK_SECONDS = 25.0
#: The issue's bounds: down within DOWN_SECONDS, back on the ceiling UP_SECONDS after the lift, the slow
#: peer's frame rate on its lower tier, and the good peers' extra keyframes over the whole run.
DOWN_SECONDS = 5.0
UP_SECONDS = 30.0
MIN_FPS = 12.0
MAX_EXTRA_KEYFRAMES = 2


async def poll(predicate, seconds: float, step: float = 0.1) -> float | None:
    """The time `predicate` first held (time.monotonic()), or None after `seconds`."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return time.monotonic()
        await asyncio.sleep(step)
    return None


def at(lines: list[dict], when: float) -> dict:
    """The slow peer's last report at or before `when`."""
    return [line for line in lines if line["t"] <= when][-1]


async def test_a_slow_receiver_moves_down_and_back_up_and_the_room_pays_nothing(tmp_path):
    try:
        context = veth_namespace("mcub")
        veth = context.__enter__()
    except Unavailable as exc:
        pytest.skip(str(exc))
    previous = ice._host_addresses
    ice.use_host_addresses([veth.host])
    runner = web.AppRunner(create_app(Config()))  # 1280x720@30, 1.5 Mbit/s; low, small, audio only below
    peers: list[Peer] = []
    slow: asyncio.subprocess.Process | None = None
    reader: asyncio.Task[None] | None = None
    try:
        try:
            veth.limit("50mbit")
            veth.unlimit()
        except Unavailable as exc:
            pytest.skip(f"this kernel has no usable tbf qdisc: {exc}")
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, veth.host, port).start()
        url = f"ws://{veth.host}:{port}/ws"
        for index, colour in enumerate([(60, 200, 60), (60, 60, 200)]):
            peer = Peer(url, "narrow", f"good{index}", video=PreEncodedVideoTrack(colour),
                        audio=PreEncodedAudioTrack(300.0 + 100 * index), decode=False, chat=False)  # fmt: skip
            await peer.join()
            peers.append(peer)
        slow = await asyncio.create_subprocess_exec(
            *veth.command(sys.executable, str(HERE / "bottleneck_peer.py"), url, "narrow", "slow", "100"),
            stdout=asyncio.subprocess.PIPE, stderr=(tmp_path / "slow.log").open("w"),
        )  # fmt: skip
        lines: list[dict] = []

        async def read() -> None:
            assert slow is not None and slow.stdout is not None
            async for raw in slow.stdout:
                lines.append(json.loads(raw))

        reader = asyncio.ensure_future(read())
        room = None

        def slow_participant():
            return next((p for p in room.participants.values() if p.name == "slow"), None) if room else None

        def slow_size() -> list[int] | None:
            return lines[-1]["size"] if lines else None

        assert await poll(lambda: slow_size() == [1280, 720], 40), (lines[-1:], (tmp_path / "slow.log").read_text())
        room = runner.app[CONFERENCE].rooms["narrow"]
        participant = slow_participant()
        assert participant is not None and participant.tier == "high"
        await asyncio.sleep(3)  # the joins' keyframes are behind us

        # Every keyframe the high encoder is asked for from now on (the good peers' stream).
        asked: list[float] = []
        write = room.video._write

        def counted(message: tuple) -> None:
            if message[0] == "keyframe" and message[1] == HIGH:
                asked.append(time.monotonic())
            write(message)

        room.video._write = counted  # type: ignore[method-assign]
        switches: list[tuple[float, object]] = []
        announce = room.on_tier

        def switched(who, switch) -> None:
            switches.append((time.monotonic(), switch))
            announce(who, switch)

        room.on_tier = switched
        high_keyframes = room.video.encoders[HIGH].keyframes

        start = time.monotonic()
        veth.limit(BOTTLENECK)
        down = await poll(lambda: participant.tier != "high", DOWN_SECONDS + 5)
        lower = participant.tier
        landed = None if down is None else await poll(lambda: slow_size() not in (None, [1280, 720]), 10)
        lift = start + BOTTLENECK_SECONDS
        await asyncio.sleep(lift - time.monotonic())
        # From the switch, the time it takes to land included (the old tier's queue draining, the
        # keyframe); without a switch, from when it was due.
        before, after = at(lines, down or start + DOWN_SECONDS), at(lines, lift)
        controller = participant.controller
        probes, failed, queue = (0, 0, None) if controller is None else (
            controller.probes, controller.probes_failed, controller.probe_queue
        )  # fmt: skip
        qdisc = veth.qdisc_stats()
        veth.unlimit()
        up = None if down is None else await poll(lambda: participant.tier == "high", UP_SECONDS + 10)
        if up is not None:
            await poll(lambda: slow_size() == [1280, 720], 5)
        end = time.monotonic()
        high_keyframes = room.video.encoders[HIGH].keyframes - high_keyframes

        fps = (after["frames"] - before["frames"]) / (after["t"] - before["t"])
        errors = after["errors"] - before["errors"]
        # Requests closer together than the encoder's own limit make one keyframe.
        extra = sum(1 for a, b in zip([float("-inf"), *asked], asked) if b - a >= KEYFRAME_MIN_INTERVAL)
        stats = participant.link.stats
        print(
            f"\n{BOTTLENECK}: "
            + ("never moved" if down is None else f"down to {lower} {down - start:.1f} s after the bottleneck")
            + ("" if landed is None else f" (on screen after {landed - start:.1f} s)")
            + f"; then {fps:.1f} fps, {errors} decode errors in {after['t'] - before['t']:.1f} s "
            f"({probes} probes, {failed} failed, the last one's queue {queue and round(queue, 3)} s); back on high "
            + ("never" if up is None else f"{up - lift:.1f} s after the lift")
            + f"; high encoder asked for {extra} keyframes over {end - start:.0f} s ({high_keyframes} made, "
            f"periodic ones included); keyframe requests gated {room.video.stats.keyframes_gated}; "
            f"slow link: {stats.reports} reports, {stats.nacked_packets} NACKed, {stats.plis} PLIs, rtt {stats.rtt}\n"
            f"switches: {[(round(t - start, 1), s) for t, s in switches]}\n"
            f"{qdisc}"
        )
        assert down is not None and down - start <= DOWN_SECONDS
        assert landed is not None and lower != "audio", switches
        assert fps >= MIN_FPS and errors == 0, (fps, errors)
        assert up is not None and up - lift <= UP_SECONDS
        assert slow_size() == [1280, 720]
        assert extra <= MAX_EXTRA_KEYFRAMES, asked
        assert [p.video_frames > 0 for p in peers] == [True, True] and not any(p.errors for p in peers)
        assert any(line["tier"] == lower for line in lines)  # the peer was told
    finally:
        if reader is not None:
            reader.cancel()
        if slow is not None and slow.returncode is None:
            slow.terminate()
            try:
                await asyncio.wait_for(slow.wait(), 5)
            except asyncio.TimeoutError:
                slow.kill()
                await slow.wait()
        await asyncio.gather(*(peer.close() for peer in peers), return_exceptions=True)
        await runner.cleanup()
        ice.use_host_addresses(previous)
        context.__exit__(None, None, None)
