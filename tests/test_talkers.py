"""Who is heard: in a room of K + 1 voices or fewer everyone, above that the K loudest and whoever
is already mixed; nobody hears themselves (issue 18: the fourth of four equal talkers was lost)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from conftest import within
from media_checks import tone_levels

from client.peer import Peer
from client.sources import ToneTrack
from mcu.config import Config

#: Tones a few hundred Hz apart, away from each other's harmonics and intermodulation products
#: (2a-b, a+b-c, a±b) within ±5 Hz, where the Opus coding of a mix leaves noise close to the tones.
TONES = [430.0, 1290.0, 2170.0, 3010.0, 3790.0]
#: Frequencies where nobody sends anything: the mix's noise floor is measured there.
QUIET_BANDS = [730.0, 1610.0, 2530.0, 3420.0, 4310.0]


def heard(samples: np.ndarray, frequencies: list[float]) -> dict[float, float]:
    """Each frequency's level above the mix's noise floor, in dB."""
    levels = tone_levels(samples, frequencies + QUIET_BANDS)
    floor = float(np.median([levels[f] for f in QUIET_BANDS]))
    return {f: levels[f] - floor for f in frequencies}


def check_hears(peer: Peer, own: float, others: list[float], absent: list[float] = ()) -> None:
    """`peer` hears each of `others` at least 20 dB above the floor, and its own tone (and `absent`)
    at least 30 dB under the quietest of them."""
    levels = heard(peer.audio(1.0), [own, *others, *absent])
    quietest = min(levels[f] for f in others)
    assert quietest >= 20, (peer.name, levels)
    for f in [own, *absent]:
        assert quietest - levels[f] >= 30, (peer.name, f, levels)


async def equal_talkers(server_url: str, count: int) -> list[Peer]:
    """`count` peers with tones at the same level: all but the last join together, the last a
    second and a half later, when the others hold their places."""
    peers = [Peer(server_url, "talk", f"p{i}", audio=ToneTrack(f, 0.1)) for i, f in enumerate(TONES[:count])]
    for peer in peers[:-1]:
        await peer.join()
    await peers[0].wait_for(lambda: all(p.audio_frames > 50 for p in peers[:-1]), timeout=15)
    await asyncio.sleep(1.5)
    await peers[-1].join()
    return peers


@pytest.fixture(params=[3, 2], ids=["default-k3", "k2"])
def config(request: pytest.FixtureRequest) -> Config:
    config = Config(width=320, height=180, fps=5, video_bitrate=100_000)
    if request.param != Config.audio_talkers:
        config.audio_talkers = request.param
    return config


async def test_k_plus_one_equal_talkers_all_hear_each_other(server, config):
    """K + 1 peers at one level, one of them late: each hears the K others, not itself, and the
    room runs one encode per peer (a personal mix for each costs no more than K talkers + a shared one).
    A viewer without a microphone (its offer still asks to send audio) is not a voice: it hears all."""
    talkers = config.audio_talkers
    peers = await equal_talkers(server.url, talkers + 1)
    viewer = Peer(server.url, "talk", "viewer")
    try:
        await viewer.join()
        audio = server.conference.rooms["talk"].audio
        await peers[0].wait_for(lambda: all(p.audio_frames > 100 for p in [*peers, viewer]), timeout=15)
        await within(5, lambda: audio.talkers == {p.peer_id for p in peers})
        await asyncio.sleep(1.2)
        mixes, encodes = audio.stats.mixes, audio.stats.encodes
        await asyncio.sleep(1)
        per_tick = (audio.stats.encodes - encodes) / max(audio.stats.mixes - mixes, 1)
        assert abs(per_tick - (talkers + 2)) < 0.05, per_tick  # the viewer's: the shared mix
        frequencies = TONES[: talkers + 1]
        for peer, own in zip(peers, frequencies):
            check_hears(peer, own, [f for f in frequencies if f != own])
        check_hears(viewer, TONES[-1], frequencies)
    finally:
        await asyncio.gather(*(p.close() for p in [*peers, viewer]), return_exceptions=True)


async def test_louder_voices_take_places_without_cutting_who_speaks(server, config):
    """K + 3 peers, K + 2 of them talking: K quieter voices hold the places when two louder ones
    start. The louder two are heard at once; the quieter ones they displaced stay mixed while they
    speak (overtime), then leave the mix; nobody ever hears themselves."""
    talkers = config.audio_talkers
    early_tones, late_tones = TONES[:talkers], TONES[talkers : talkers + 2]
    listener = Peer(server.url, "talk", "listener", audio=ToneTrack(5000.0, 0.0))
    early = [Peer(server.url, "talk", f"early{i}", audio=ToneTrack(f, 0.05)) for i, f in enumerate(early_tones)]
    late = [Peer(server.url, "talk", f"late{i}", audio=ToneTrack(f, 0.25)) for i, f in enumerate(late_tones)]
    peers = [listener, *early, *late]
    tones = dict(zip(peers, [5000.0, *early_tones, *late_tones]))
    try:
        for peer in [listener, *early]:
            await peer.join()
        audio = server.conference.rooms["talk"].audio
        await listener.wait_for(lambda: all(p.audio_frames > 50 for p in [listener, *early]), timeout=15)
        await asyncio.sleep(1)
        for peer in late:
            await peer.join()
        await within(10, lambda: len(audio.on_overtime) == 2)
        displaced = {p for p in early if p.peer_id in audio.on_overtime}
        await asyncio.sleep(1.2)
        # The K loudest and whoever they displaced while speaking: everyone who talks is heard.
        assert audio.talkers == {p.peer_id for p in [*early, *late]}
        for peer in peers:
            check_hears(peer, tones[peer], [tones[p] for p in [*early, *late] if p is not peer])

        # Overtime is bounded (5 s of continuous tone without a pause): the displaced leave the mix,
        # and the room is back to K personal mixes and the shared one.
        await within(10, lambda: not audio.on_overtime)
        await asyncio.sleep(1.2)
        kept = [p for p in [*early, *late] if p not in displaced]
        assert audio.talkers == {p.peer_id for p in kept}
        mixes, encodes = audio.stats.mixes, audio.stats.encodes
        await asyncio.sleep(1)
        assert abs((audio.stats.encodes - encodes) / max(audio.stats.mixes - mixes, 1) - (talkers + 1)) < 0.05
        for peer in [listener, *displaced]:
            check_hears(peer, tones[peer], [tones[p] for p in kept], absent=[tones[p] for p in displaced])
        for peer in kept:
            check_hears(peer, tones[peer], [tones[p] for p in kept if p is not peer])
    finally:
        await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)
