"""Moderator mute and volume: the others hear the change (by FFT), the room is told, bad requests get errors."""

from __future__ import annotations

import asyncio

import aiohttp
from media_checks import tone_levels

from client.peer import Peer
from client.sources import ToneTrack

B_TONE, C_TONE = 700.0, 1100.0


async def level_heard(peer: Peer, frequency: float) -> float:
    """The level of `frequency` in the last second `peer` heard, after the change has come through."""
    await asyncio.sleep(1.6)
    return tone_levels(peer.audio(1.0), [frequency])[frequency]


async def test_moderator_sets_volume_and_mutes_and_the_others_hear_it(server):
    mod = Peer(server.url, "mod", "moderator", audio=ToneTrack(300.0, 0.0))
    talker = Peer(server.url, "mod", "talker", audio=ToneTrack(B_TONE, 0.2))
    listener = Peer(server.url, "mod", "listener", audio=ToneTrack(C_TONE, 0.2))
    peers = [mod, talker, listener]
    try:
        for peer in peers:
            await peer.join()
        await listener.wait_for(lambda: all(p.audio_frames > 100 for p in peers), timeout=15)
        before = await level_heard(listener, B_TONE)
        assert before > 100

        async def moderate(**fields) -> None:
            count = sum(e["type"] == "participantAudio" for e in talker.events)
            await mod.send({"type": "moderateAudio", "peerId": talker.peer_id, **fields})
            # The target and the rest of the room are told.
            await talker.wait_for(lambda: sum(e["type"] == "participantAudio" for e in talker.events) > count, 5)
            await listener.wait_for(lambda: listener.events[-1]["type"] == "participantAudio", 5)

        await moderate(volume=0.5)
        event = next(e for e in reversed(listener.events) if e["type"] == "participantAudio")
        assert event == {
            "type": "participantAudio",
            "peerId": talker.peer_id,
            "muted": False,
            "volume": 0.5,
            "by": mod.peer_id,
        }
        half = await level_heard(listener, B_TONE)
        assert abs((before - half) - 6.0) < 1.5, (before, half)  # a gain of 0.5 is -6 dB

        await moderate(muted=True)
        muted = await level_heard(listener, B_TONE)
        assert before - muted > 30, (before, muted)
        assert tone_levels(mod.audio(1.0), [C_TONE])[C_TONE] > 100  # the others still mix

        # The HTTP API does the same: unmute and double the gain (+6 dB).
        url = f"http://127.0.0.1:{server.port}/api/rooms/mod/participants/{talker.peer_id}"
        async with aiohttp.ClientSession() as http:
            async with http.patch(url, json={"muted": False, "volume": 2}) as response:
                assert response.status == 200
                assert await response.json() == {"peerId": talker.peer_id, "muted": False, "volume": 2.0}
            async with http.patch(url, json={"volume": 5}) as response:
                assert response.status == 400 and (await response.json())["code"] == "invalid_volume"
            async with http.patch(url.replace(talker.peer_id, "nobody"), json={"muted": True}) as response:
                assert response.status == 404 and (await response.json())["code"] == "participant_not_found"
        double = await level_heard(listener, B_TONE)
        assert abs((double - before) - 6.0) < 1.5, (before, double)
        assert any(e["type"] == "participantAudio" and e["by"] is None for e in talker.events)
    finally:
        await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)


async def test_moderation_errors_and_the_grant(server):
    mod = Peer(server.url, "mod2", "moderator", audio=ToneTrack(300.0, 0.0))
    other = Peer(server.url, "mod2", "other", audio=ToneTrack(500.0, 0.0))
    try:
        await mod.join()
        await other.join()
        cases = [
            ({"peerId": "nobody", "muted": True}, "participant_not_found"),
            ({"peerId": other.peer_id, "volume": 2.5}, "invalid_volume"),
            ({"peerId": other.peer_id, "volume": -1}, "invalid_volume"),
            ({"peerId": other.peer_id, "volume": "loud"}, "invalid_message"),
            ({"peerId": other.peer_id, "muted": "yes"}, "invalid_message"),
            ({"peerId": other.peer_id}, "invalid_message"),
            ({"muted": True}, "invalid_message"),
        ]
        for fields, code in cases:
            await mod.send({"type": "moderateAudio", **fields})
            await mod.wait_for(lambda: len(mod.errors) == cases.index((fields, code)) + 1, 5)
            assert mod.errors[-1].code == code, (fields, mod.errors[-1])
        # Without the grant: forbidden, and nothing changes.
        server.conference.rooms["mod2"].participants[mod.peer_id].grants = frozenset()
        await mod.send({"type": "moderateAudio", "peerId": other.peer_id, "muted": True})
        await mod.wait_for(lambda: len(mod.errors) == len(cases) + 1, 5)
        assert mod.errors[-1].code == "forbidden"
        assert not server.conference.rooms["mod2"].participants[other.peer_id].moderator_muted
        assert not any(e["type"] == "participantAudio" for e in other.events)
    finally:
        await asyncio.gather(mod.close(), other.close(), return_exceptions=True)
