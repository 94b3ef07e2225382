"""A room larger than its talker count: K+1 Opus encodes per tick, and nobody hears themselves."""

from __future__ import annotations

import asyncio

from media_checks import tone_levels

from client.peer import Peer
from client.sources import ToneTrack

# Three loud talkers, and seven quieter peers who speak too (well above the gate,
# but more than the margin below the talkers). The quiet tones keep 200 Hz away from
# the talkers' tones, harmonics and intermodulation products (2a-b, a+b-c, a±b):
# there the Opus coding of a mix leaves noise only 20-30 dB under the tones.
LOUD = [400.0, 1300.0, 2600.0]
QUIET = [600.0, 1100.0, 1500.0, 1950.0, 2400.0, 2800.0, 3250.0]


async def test_ten_peer_audio_room_runs_k_plus_one_encodes(server):
    quiet = [Peer(server.url, "big", f"quiet{i}", audio=ToneTrack(f, 0.02)) for i, f in enumerate(QUIET)]
    loud = [Peer(server.url, "big", f"loud{i}", audio=ToneTrack(f, 0.3)) for i, f in enumerate(LOUD)]
    peers = quiet + loud
    frequencies = QUIET + LOUD
    try:
        # The quiet ones join first and take the floor; the loud ones must win it.
        for peer in peers:
            await peer.join()
        audio = server.conference.rooms["big"].audio
        await peers[0].wait_for(lambda: all(p.audio_frames > 100 for p in peers), timeout=15)
        await peers[0].wait_for(lambda: audio.talkers == {p.peer_id for p in loud}, timeout=5)

        mixes, encodes, decodes = audio.stats.mixes, audio.stats.encodes, audio.stats.decodes
        await asyncio.sleep(2)
        assert audio.stats.mixes - mixes >= 90  # 50 ticks a second
        per_tick = (audio.stats.encodes - encodes) / (audio.stats.mixes - mixes)
        assert abs(per_tick - 4) < 0.03, per_tick  # K = 3 personal mixes + one shared
        # The quiet peers' RFC 6464 levels (aiortc sends them) say they cannot take a place:
        # only the talkers are decoded.
        decoded = (audio.stats.decodes - decodes) / (audio.stats.mixes - mixes)
        assert abs(decoded - 3) < 0.03, decoded
        assert audio.talkers == {p.peer_id for p in loud}  # the floor did not flicker

        for peer, own in zip(peers, frequencies):
            levels = tone_levels(peer.audio(1.0), frequencies)
            heard = [levels[f] for f in LOUD if f != own]
            assert min(heard) > 100, (peer.name, levels)
            assert min(heard) - levels[own] >= 30, (peer.name, levels)
    finally:
        await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)
