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
import time

from bottleneck_room import (
    BottleneckServer,
    SlowPeer,
    at,
    bottleneck_server,
    poll,
    record_keyframes,
    record_switches,
    slow_peer,
)

from client.encoded import PreEncodedAudioTrack, PreEncodedVideoTrack
from client.peer import Peer
from mcu.config import Config
from mcu.media.encoders import KEYFRAME_MIN_INTERVAL, Output

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


async def test_a_slow_receiver_moves_down_and_back_up_and_the_room_pays_nothing(tmp_path):
    peers: list[Peer] = []
    # 1280x720@30, 1.5 Mbit/s; low, small, audio only below.
    async with bottleneck_server("mcub", Config()) as server:
        try:
            for index, colour in enumerate([(60, 200, 60), (60, 60, 200)]):
                peer = Peer(server.url, "narrow", f"good{index}", video=PreEncodedVideoTrack(colour),
                            audio=PreEncodedAudioTrack(300.0 + 100 * index), decode=False, chat=False)  # fmt: skip
                await peer.join()
                peers.append(peer)
            async with slow_peer(server, "narrow", "slow", tmp_path / "slow.log") as slow:
                await run(server, slow, peers)
        finally:
            await asyncio.gather(*(peer.close() for peer in peers), return_exceptions=True)


async def run(server: BottleneckServer, slow: SlowPeer, peers: list[Peer]) -> None:
    lines = slow.lines
    veth = server.veth
    slow_size = slow.size
    assert await poll(lambda: slow_size() == [1280, 720], 40), slow.describe()
    room = server.room("narrow")
    participant = server.participant("narrow", "slow")
    assert participant is not None and participant.tier == "high"
    await asyncio.sleep(3)  # the joins' keyframes are behind us

    # Every keyframe an encoder is asked for from now on (the high one's: the good peers' stream), every switch.
    keyframes = record_keyframes(room)
    switches = record_switches(room)
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
    asked = [t for t, output in keyframes if output == HIGH]
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
        f"switches: {[(round(t - start, 1), s) for t, _, s in switches]}\n"
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
