"""Real aiortc peers through the real server: the composite, the mix, joins and leaves."""

from __future__ import annotations

import asyncio
import time

from media_checks import cell_colours, close_to, contains_colour, tone_levels

from client.peer import Peer
from client.sources import COLORS, ColorTrack, ToneTrack, rgb_to_yuv
from mcu.media.tracks import KEYFRAME_GRACE

PEOPLE = [("alice", "red", 440.0), ("bob", "green", 660.0), ("carol", "blue", 1000.0)]
BLACK = (16, 128, 128)
# The placeholder tile: dark grey, neutral chroma, its name in the middle.
PLACEHOLDER = (40, 128, 128)


def make_peer(server, name: str, colour: str, frequency: float, room: str = "room1") -> Peer:
    return Peer(server.url, room, name, video=ColorTrack(COLORS[colour]), audio=ToneTrack(frequency))


async def join_all(peers: list[Peer]) -> None:
    for peer in peers:
        await peer.join()


async def close_all(peers: list[Peer]) -> None:
    await asyncio.gather(*(peer.close() for peer in peers), return_exceptions=True)


def expected(colour: str):
    return rgb_to_yuv(COLORS[colour])


async def test_three_peers_see_each_other_and_hear_everyone_but_themselves(server):
    peers = [make_peer(server, *person) for person in PEOPLE]
    try:
        await join_all(peers)
        everyone = {expected(colour) for _, colour, _ in PEOPLE}

        def composites_complete() -> bool:
            return all(
                p.video_frame is not None and all(contains_colour(cell_colours(p.video_frame, 3), c) for c in everyone)
                for p in peers
            )

        await peers[0].wait_for(composites_complete, timeout=10)
        for peer in peers:
            colours = cell_colours(peer.video_frame, 3)
            # Grid order is join order; the fourth cell of the 2x2 grid stays black.
            for cell, (_, colour, _) in zip(colours, PEOPLE):
                assert close_to(cell, expected(colour)), (peer.name, colours)
            assert close_to(cell_colours(peer.video_frame, 4)[3], BLACK)

        # Let the mix run for a while so a whole second of steady audio is there.
        await asyncio.sleep(2.5)
        frequencies = [f for _, _, f in PEOPLE]
        for peer, (_, _, own) in zip(peers, PEOPLE):
            levels = tone_levels(peer.audio(1.0), frequencies)
            others = [levels[f] for f in frequencies if f != own]
            assert min(others) - levels[own] >= 30, (peer.name, levels)
            # The others really are there, well above the residue of the own tone.
            assert min(others) > 100, (peer.name, levels)
    finally:
        await close_all(peers)


async def test_leaver_disappears_from_the_composite_within_3_seconds(server):
    peers = [make_peer(server, *person) for person in PEOPLE]
    try:
        await join_all(peers)
        await peers[0].wait_for(lambda: all(p.video_frame is not None for p in peers), timeout=10)
        carol = peers.pop()
        await peers[0].wait_for(
            lambda: contains_colour(cell_colours(peers[0].video_frame, 3), expected("blue")), timeout=10
        )
        left_at = time.monotonic()
        await carol.close()

        def carol_gone() -> bool:
            return all(
                not contains_colour(cell_colours(p.video_frame, n), expected("blue"))
                and contains_colour(cell_colours(p.video_frame, 2), expected("red"))
                and contains_colour(cell_colours(p.video_frame, 2), expected("green"))
                for p in peers
                for n in (2, 3)
            )

        await peers[0].wait_for(carol_gone, timeout=3)
        assert time.monotonic() - left_at < 3
        await peers[0].wait_for(lambda: all(carol.peer_id not in p.participants for p in peers), timeout=3)
        assert len(server.conference.rooms["room1"].participants) == 2
    finally:
        await close_all(peers)


async def test_late_joiner_gets_a_picture_within_one_second(server):
    early = [make_peer(server, *person) for person in PEOPLE[:2]]
    late = make_peer(server, "dave", "yellow", 1300.0)
    try:
        await join_all(early)
        await early[0].wait_for(lambda: all(p.video_frame is not None for p in early), timeout=10)
        await asyncio.sleep(1.5)  # the room is running: its last keyframe is old
        await late.join()
        await late.wait_for(lambda: late.first_frame_time is not None, timeout=5)
        assert late.connected_time is not None
        assert late.first_frame_time - late.connected_time < 1.0
        assert late.participants == {early[0].peer_id: "alice", early[1].peer_id: "bob"}
        assert all(p.participants.get(late.peer_id) == "dave" for p in early)
    finally:
        await close_all(early + [late])


async def test_pli_produces_a_rate_limited_keyframe(server):
    peer = make_peer(server, *PEOPLE[0])
    try:
        await peer.join()
        await peer.wait_for(lambda: peer.video_frames > 10, timeout=10)
        room = server.conference.rooms["room1"]
        encoder = room.video.encoders[room.participants[peer.peer_id].video_out.output]
        receiver = next(t.receiver for t in peer.pc.getTransceivers() if t.kind == "video")
        ssrc = receiver.getSynchronizationSources()[0].source
        # A PLI within KEYFRAME_GRACE of a keyframe sent to the peer is dropped (that keyframe is on its way).
        await asyncio.sleep(KEYFRAME_GRACE + 0.2)
        before = encoder.keyframes
        await receiver._send_rtcp_pli(ssrc)
        await peer.wait_for(lambda: encoder.keyframes > before, timeout=1)
        # A storm of PLIs gives a keyframe at most every 300 ms, not one per request.
        before = encoder.keyframes
        for _ in range(20):
            await receiver._send_rtcp_pli(ssrc)
            await asyncio.sleep(0.025)
        assert encoder.keyframes - before <= 3
    finally:
        await peer.close()


async def test_peer_whose_websocket_drops_leaves_the_room(server):
    peers = [make_peer(server, *person) for person in PEOPLE[:2]]
    try:
        await join_all(peers)
        bob = peers[1]
        await bob._ws.close()  # no `leave`: the connection just goes away
        await peers[0].wait_for(lambda: bob.peer_id not in peers[0].participants, timeout=3)
        await peers[0].wait_for(lambda: len(server.conference.rooms["room1"].participants) == 1, timeout=3)
    finally:
        await close_all(peers)


async def test_peer_whose_media_connection_ends_leaves_the_room(server):
    peers = [make_peer(server, *person) for person in PEOPLE[:2]]
    try:
        await join_all(peers)
        bob = peers[1]
        await bob.wait_for(lambda: bob.video_frames > 0, timeout=10)
        await bob.pc.close()  # media gone, WebSocket still open
        await peers[0].wait_for(lambda: bob.peer_id not in peers[0].participants, timeout=5)
        await bob.wait_for(lambda: any(e.code == "media_failed" for e in bob.errors), timeout=3)
        assert list(server.conference.rooms["room1"].participants) == [peers[0].peer_id]
    finally:
        await close_all(peers)


async def test_room_is_removed_with_its_last_peer(server):
    peer = make_peer(server, *PEOPLE[0], room="short-lived")
    await peer.join()
    assert "short-lived" in server.conference.rooms
    await peer.close()
    await peer.wait_for(lambda: "short-lived" not in server.conference.rooms, timeout=3)


class FreezableColorTrack(ColorTrack):
    """A colour track that can stop delivering frames, as a stalled camera would."""

    def __init__(self, colour: str) -> None:
        super().__init__(COLORS[colour])
        self.running = asyncio.Event()
        self.running.set()

    async def recv(self):
        await self.running.wait()
        return await super().recv()


async def test_missing_or_stalled_video_shows_the_placeholder(server):
    alice = make_peer(server, *PEOPLE[0])
    camera = FreezableColorTrack("green")
    bob = Peer(server.url, "room1", "bob", video=camera, audio=ToneTrack(660))
    silent = Peer(server.url, "room1", "carol", video=None, audio=ToneTrack(1000))  # no camera at all
    peers = [alice, bob, silent]
    try:
        await join_all(peers)

        def cells():
            # Above the centre: the placeholder draws its name there.
            return cell_colours(alice.video_frame, 3, at=(0.5, 0.3)) if alice.video_frame is not None else []

        def looks(expected_bob) -> bool:
            c = cells()
            return (
                len(c) == 3
                and close_to(c[0], expected("red"))
                and close_to(c[1], expected_bob)
                and close_to(c[2], PLACEHOLDER)
            )

        await alice.wait_for(lambda: looks(expected("green")), timeout=10)
        camera.running.clear()
        stalled_at = time.monotonic()
        await alice.wait_for(lambda: looks(PLACEHOLDER), timeout=5)
        # Not before the 2 s of grace, and not long after.
        assert 1.8 <= time.monotonic() - stalled_at <= 3.5
        camera.running.set()
        await alice.wait_for(lambda: looks(expected("green")), timeout=5)
    finally:
        await close_all(peers)


async def test_camera_off_shows_the_placeholder_and_mute_leaves_the_mix(server):
    alice, bob = make_peer(server, *PEOPLE[0]), make_peer(server, *PEOPLE[1])
    try:
        await join_all([alice, bob])

        def bob_cell():
            return cell_colours(alice.video_frame, 2, at=(0.5, 0.3))[1] if alice.video_frame is not None else None

        await alice.wait_for(lambda: bob_cell() is not None and close_to(bob_cell(), expected("green")), timeout=10)
        await bob.set_media(video=False, audio=True)
        await alice.wait_for(lambda: close_to(bob_cell(), PLACEHOLDER), timeout=1)
        await alice.wait_for(lambda: any(e["type"] == "participantMedia" and not e["video"] for e in alice.events), 1)

        await asyncio.sleep(1.2)
        assert tone_levels(alice.audio(1.0), [660.0])[660.0] > 100  # bob is heard
        await bob.set_media(video=True, audio=False)
        await alice.wait_for(lambda: close_to(bob_cell(), expected("green")), timeout=2)
        await asyncio.sleep(1.2)
        levels = tone_levels(alice.audio(1.0), [440.0, 660.0])
        assert levels[660.0] < 100, levels  # muted: bob's tone has left alice's mix
    finally:
        await close_all([alice, bob])
