"""Faults from the media side: a peer that sends garbage, a client process that dies.

The media path is real: aiortc senders packetize what the tracks hand them, so
garbage arrives in valid RTP (and SRTP) with nothing decodable inside.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aioice.ice
import numpy as np
from conftest import stop_process
from media_checks import cell_colours, close_to, tone_levels

from client.encoded import AUDIO_TIME_BASE, VIDEO_TIME_BASE, _PacketLoop
from client.peer import Peer
from client.sources import COLORS, FRAME_SAMPLES, SAMPLE_RATE, ColorTrack, ToneTrack, rgb_to_yuv

BIN = Path(sys.executable).parent
#: How long aioice waits before it declares a silent peer gone (RFC 7675 consent
#: freshness): CONSENT_FAILURES checks in a row unanswered, each at most 1.2 intervals apart.
CONSENT_TIMEOUT = aioice.ice.CONSENT_FAILURES * aioice.ice.CONSENT_INTERVAL * 1.2


#: The peers' tones, and bands nobody sends a tone in (the noise floor of the mix).
TONES = [440.0, 660.0]
PROBES = [380.0, 520.0, 600.0, 720.0]


def garbage(seed: int, count: int, low: int, high: int) -> tuple[bytes, ...]:
    rng = np.random.default_rng(seed)
    return tuple(rng.integers(0, 256, int(rng.integers(low, high)), dtype=np.uint8).tobytes() for _ in range(count))


class GarbageVideo(_PacketLoop):
    """15 "VP8" frames a second of random bytes: valid RTP, nothing a decoder can use."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__(garbage(1, 64, 20, 3000), 15, 90000 // 15, VIDEO_TIME_BASE)


class GarbageAudio(_PacketLoop):
    """50 "Opus" packets a second of random bytes."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__(garbage(2, 64, 1, 400), SAMPLE_RATE / FRAME_SAMPLES, FRAME_SAMPLES, AUDIO_TIME_BASE)


async def test_corrupt_vp8_and_opus_leave_the_others_untouched(server, caplog):
    loop_errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: loop_errors.append(context))
    caplog.set_level(logging.ERROR)
    alice = Peer(server.url, "room1", "alice", video=ColorTrack(COLORS["red"]), audio=ToneTrack(440))
    bob = Peer(server.url, "room1", "bob", video=ColorTrack(COLORS["green"]), audio=ToneTrack(660))
    mallory = Peer(server.url, "room1", "mallory", video=GarbageVideo(), audio=GarbageAudio(), decode=False)
    peers = [alice, bob, mallory]
    try:
        await alice.join()
        await bob.join()
        await alice.wait_for(lambda: alice.video_frames > 10 and bob.video_frames > 10, timeout=15)
        await asyncio.sleep(2)
        clean = {peer.name: tone_levels(peer.audio(1.0), TONES + PROBES) for peer in (alice, bob)}
        await mallory.join()
        room = server.conference.rooms["room1"]
        mallory_in = room.participants[mallory.peer_id]
        # Garbage flows in for a while: several seconds of it, the whole path from RTP to the decoders.
        await asyncio.sleep(5)
        assert mallory.pc.connectionState == "connected"
        stats = await mallory.pc.getStats()
        sent = [s for s in stats.values() if s.type == "outbound-rtp"]
        assert sent and all(s.packetsSent > 50 for s in sent), sent

        frames = {peer.name: peer.video_frames for peer in (alice, bob)}
        await asyncio.sleep(2)
        for peer in (alice, bob):
            # The composite runs on at the room's rate (15 fps here).
            assert peer.video_frames - frames[peer.name] >= 2 * 15 * 0.8, peer.name
            cells = cell_colours(peer.video_frame, 3)
            assert close_to(cells[0], rgb_to_yuv(COLORS["red"])), (peer.name, cells)
            assert close_to(cells[1], rgb_to_yuv(COLORS["green"])), (peer.name, cells)
            # Mallory's tile shows no picture of its own: still, neither of the others' colours.
            assert not close_to(cells[2], rgb_to_yuv(COLORS["red"])) and not close_to(
                cells[2], rgb_to_yuv(COLORS["green"])
            ), cells
        still = cell_colours(alice.video_frame, 3)[2]
        await asyncio.sleep(1)
        assert cell_colours(alice.video_frame, 3)[2] == still
        # The mix: Opus makes noise of random bytes, and mallory's noise is in the others' mixes like any
        # voice. Under it, each still hears the other's tone as loud as before mallory came, and not its own
        # (its band no louder than the noise in bands where nobody sends a tone).
        for peer, own, other in ((alice, 440.0, 660.0), (bob, 660.0, 440.0)):
            levels = tone_levels(peer.audio(1.0), TONES + PROBES)
            assert levels[other] >= clean[peer.name][other] - 3, (peer.name, clean[peer.name], levels)
            assert levels[other] - max(levels[f] for f in PROBES) >= 10, (peer.name, levels)
            assert levels[own] <= max(levels[f] for f in PROBES) + 6, (peer.name, levels)
        # Mallory is still in the room: bad media is no reason to drop a peer.
        assert mallory.peer_id in room.participants and room.participants[mallory.peer_id] is mallory_in
        assert not alice.errors and not bob.errors and not mallory.errors
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
        assert not loop_errors, loop_errors
    finally:
        await asyncio.gather(*(peer.close() for peer in peers), return_exceptions=True)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def resources() -> tuple[int, int, int]:
    """This process's (the in-process server's) asyncio tasks, threads and open file descriptors."""
    return len(asyncio.all_tasks()), threading.active_count(), open_fds()


async def test_a_client_killed_with_sigkill_leaves_and_frees_everything(server):
    steady = Peer(server.url, "room1", "steady", video=ColorTrack(COLORS["blue"]), audio=ToneTrack(500))
    await steady.join()
    try:
        await steady.wait_for(lambda: steady.video_frames > 10, timeout=15)
        room = server.conference.rooms["room1"]
        await asyncio.sleep(1)
        before = resources()
        client = subprocess.Popen(
            [
                BIN / "mcu-client",
                "join",
                server.url,
                "--room",
                "room1",
                "--name",
                "doomed",
                "--video",
                "color:red",
                "--audio",
                "tone:700",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            # It joins and its media flows: its colour shows up in the steady peer's composite.
            def doomed_seen() -> bool:
                return len(room.participants) == 2 and close_to(
                    cell_colours(steady.video_frame, 2)[1], rgb_to_yuv(COLORS["red"])
                )

            await steady.wait_for(doomed_seen, timeout=20)
            during = resources()
            assert during[0] > before[0] and during[2] > before[2], (before, during)
            client.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            client.wait(5)
        finally:
            stop_process(client)
        await steady.wait_for(lambda: len(room.participants) == 1, timeout=CONSENT_TIMEOUT)
        left_after = time.monotonic() - killed
        await steady.wait_for(lambda: len(steady.participants) == 0, timeout=5)

        # Everything the server held for it goes: tasks, threads (its decoders), sockets.
        deadline = time.monotonic() + 10
        while any(a > b for a, b in zip(resources(), before)) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        after = resources()
        assert after[0] <= before[0], (before, during, after, [t for t in asyncio.all_tasks()])
        assert after[1] <= before[1], (before, during, after, threading.enumerate())
        assert after[2] <= before[2], (before, during, after)
        assert left_after < CONSENT_TIMEOUT
        # The room goes on for the steady peer.
        frames = steady.video_frames
        await asyncio.sleep(1)
        assert steady.video_frames - frames >= 10
    finally:
        await steady.close()
