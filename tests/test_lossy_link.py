"""One peer on a lossy, jittery path (5 % loss, up to 30 ms jitter, both ways; client/impairment.py):
its composite recovers from every loss, its voice reaches the others without a gap, the mix it
hears plays on its own 20 ms clock without a gap, and the peers with clean links see nothing of it
(issue 17)."""

from __future__ import annotations

import asyncio
import time

import pytest
from media_checks import longest_gap_ms

from client.encoded import PreEncodedAudioTrack, PreEncodedVideoTrack
from client.impairment import parse_spec
from client.peer import Peer
from mcu.config import Config

#: Each peer's tone, and its amplitude (full scale 1).
TONES = {"lossy": 440.0, "clean": 1320.0}
AMPLITUDE = 0.2
SECONDS = 14
#: The first seconds are left out of the freeze measure: joining, the first keyframes.
SETTLE = 5.0
#: Audio frames a second on a real-time timeline (20 ms each).
FRAMES_PER_SECOND = 50


@pytest.fixture
def config() -> Config:
    return Config(width=640, height=360, fps=15, video_bitrate=500_000)


async def frame_times(peers: list[Peer], until: float) -> dict[str, list[float]]:
    """When each peer decoded a new composite picture, sampled every 5 ms until `until`."""
    times: dict[str, list[float]] = {peer.name: [] for peer in peers}
    counts = {peer.name: peer.video_frames for peer in peers}
    while time.monotonic() < until:
        for peer in peers:
            if peer.video_frames != counts[peer.name]:
                counts[peer.name] = peer.video_frames
                times[peer.name].append(time.monotonic())
        await asyncio.sleep(0.005)
    return times


async def audio_frames_at(peer: Peer, when: float) -> int:
    """How many audio frames `peer` had played at `when` (time.monotonic())."""
    await asyncio.sleep(when - time.monotonic())
    return peer.audio_frames


def longest_freeze(times: list[float], start: float, end: float) -> float:
    """The longest stretch without a new picture between `start` and `end`, in seconds."""
    marks = [start, *(t for t in times if start < t < end), end]
    return max(b - a for a, b in zip(marks, marks[1:]))


async def test_a_lossy_jittery_peer_recovers_and_hurts_nobody(server):
    def media(name: str, color: tuple[int, int, int]) -> dict:
        return {
            "video": PreEncodedVideoTrack(color),
            "audio": PreEncodedAudioTrack(TONES[name], amplitude=AMPLITUDE, fec=True),
        }

    impairment = parse_spec("loss=5,jitter=30,seed=17")
    lossy = Peer(server.url, "net", "lossy", impairment=impairment, **media("lossy", (200, 40, 40)))
    clean = Peer(server.url, "net", "clean", **media("clean", (40, 200, 40)))
    listener = Peer(server.url, "net", "listener")
    peers = [lossy, clean, listener]
    try:
        for peer in peers:
            await peer.join()
        # The server's answer asks for Opus in-band FEC (browsers put it in only when asked).
        assert any("useinbandfec=1" in line for line in lossy.pc.remoteDescription.sdp.splitlines())
        start = time.monotonic()
        played_before, times = await asyncio.gather(
            audio_frames_at(lossy, start + SETTLE), frame_times(peers, start + SECONDS)
        )
        end = time.monotonic()
        played = lossy.audio_frames - played_before
        timeline = (end - start - SETTLE) * FRAMES_PER_SECOND
        freezes = {name: longest_freeze(t, start + SETTLE, end) for name, t in times.items()}
        counts = lossy.impaired.up.counters, lossy.impaired.down.counters
        heard = listener.audio(SECONDS - SETTLE)
        gaps = {name: longest_gap_ms(heard, tone, AMPLITUDE) for name, tone in TONES.items()}
        # What the lossy peer itself hears through its lossy, jittery downstream: the clean one's voice.
        gap_at_lossy = longest_gap_ms(lossy.audio(SECONDS - SETTLE), TONES["clean"], AMPLITUDE)
        stats = server.conference.rooms["net"].stats()
        print(f"\nfreezes {freezes}; gaps at the listener {gaps} ms; impaired up {counts[0]}, down {counts[1]}")
        print(f"lossy peer: {played} frames played of {timeline:.0f}, longest gap {gap_at_lossy} ms, {lossy.playout}")
        shown = ("audio", "keyframes", "videoDecode", "videoFramesLost", "videoKeyframesAsked", "links")
        print({k: v for k, v in stats.items() if k.startswith(shown)})
        assert counts[0].lost >= 10 and counts[1].lost >= 10  # the path really was lossy, both ways
        # The lossy peer's own playout: a frame every 20 ms whatever was lost or late, and the voice it
        # hears without a gap over 60 ms.
        assert played >= 0.98 * timeline, (played, timeline)
        assert gap_at_lossy <= 60, gap_at_lossy
        assert lossy.playout.concealed > 0, lossy.playout  # its losses were concealed, not skipped
        # Its composite recovers from every loss: retransmissions, else a keyframe of its own tier.
        assert freezes["lossy"] <= 0.5, freezes
        for name in ("clean", "listener"):
            assert freezes[name] <= 0.3, freezes
        # Its voice, through the lossy path, reaches the others without a gap over 60 ms; the clean one's
        # is untouched.
        assert gaps["lossy"] <= 60 and gaps["clean"] <= 30, gaps
        # Lost packets were rebuilt from the next one's FEC where it had some, else concealed.
        assert stats["audioFecRecovered"] > 0 and stats["audioConcealed"] > 0, stats
    finally:
        await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)
