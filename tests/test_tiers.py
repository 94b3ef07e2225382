"""Output tiers, negotiated codecs and hide-self, with real aiortc peers through the real server."""

from __future__ import annotations

import asyncio

import pytest
from aiortc.sdp import SessionDescription
from media_checks import cell_colours, close_to, contains_colour

from client.peer import Peer, PeerError
from client.sources import COLORS, ColorTrack, ToneTrack, rgb_to_yuv
from mcu.config import Config, Tier
from mcu.media.encoders import Output
from mcu.server.cli import _tier, build_parser

HIGH = (640, 360)
LOW = (320, 180)


@pytest.fixture
def config() -> Config:
    """Two tiers of one aspect, small enough for a shared 2-core machine."""
    return Config(width=HIGH[0], height=HIGH[1], fps=30, video_bitrate=800_000, tiers={"low": Tier(*LOW, 15, 200_000)})


def make_peer(server, name: str, colour: str, **options) -> Peer:
    return Peer(server.url, "tiers", name, video=ColorTrack(COLORS[colour]), audio=ToneTrack(440.0), **options)


def yuv(colour: str):
    return rgb_to_yuv(COLORS[colour])


def size(peer: Peer) -> tuple[int, int] | None:
    frame = peer.video_frame
    return None if frame is None else (frame.width, frame.height)


def answered_codec(peer: Peer) -> str:
    """The video codec of the server's answer, as this client applied it."""
    media = next(m for m in SessionDescription.parse(peer.pc.remoteDescription.sdp).media if m.kind == "video")
    return media.rtp.codecs[0].mimeType.lower()


def shows(peer: Peer, count: int, *colours: str) -> bool:
    return peer.video_frame is not None and all(
        contains_colour(cell_colours(peer.video_frame, count), yuv(c)) for c in colours
    )


async def close_all(peers: list[Peer]) -> None:
    await asyncio.gather(*(peer.close() for peer in peers), return_exceptions=True)


async def test_a_low_peer_and_a_high_peer_receive_their_resolutions(server):
    low, high = make_peer(server, "low", "red", tier="low"), make_peer(server, "high", "green")
    try:
        for peer in (low, high):
            await peer.join()
        await low.wait_for(lambda: shows(low, 2, "red", "green") and shows(high, 2, "red", "green"), timeout=10)
        assert size(low) == LOW and size(high) == HIGH
        video = server.conference.rooms["tiers"].video
        assert set(video.encoders) == {Output("vp8", "low"), Output("vp8", "high")}
        before, scaled = dict(video.stats.tier_frames), video.stats.scaled
        await asyncio.sleep(3)
        low_frames = video.stats.tier_frames["low"] - before["low"]
        high_frames = video.stats.tier_frames["high"] - before["high"]
        # One compose at the high size; each low canvas is that one scaled down.
        assert video.stats.scaled - scaled == low_frames
        # The clock runs at 30 fps; the 15 fps tier encodes every other tick.
        assert 0.4 <= low_frames / high_frames <= 0.6, (low_frames, high_frames)
        assert high_frames >= 3 * 20, high_frames
    finally:
        await close_all([low, high])


async def test_an_h264_only_client_receives_h264(server):
    vp8, h264 = make_peer(server, "vp8", "red"), make_peer(server, "h264", "blue", video_codec="h264")
    try:
        for peer in (vp8, h264):
            await peer.join()
        assert answered_codec(h264) == "video/h264" and answered_codec(vp8) == "video/vp8"
        offered = SessionDescription.parse(h264.pc.localDescription.sdp)
        assert {c.mimeType.lower() for m in offered.media if m.kind == "video" for c in m.rtp.codecs} == {
            "video/h264",
            "video/rtx",
        }
        await h264.wait_for(lambda: shows(h264, 2, "red", "blue") and shows(vp8, 2, "red", "blue"), timeout=10)
        assert size(h264) == HIGH
        video = server.conference.rooms["tiers"].video
        assert set(video.encoders) == {Output("vp8", "high"), Output("h264", "high")}
        assert video.encoders[Output("h264", "high")].codec_name == "h264"
        assert video.encoders[Output("h264", "high")].frames > 0
    finally:
        await close_all([vp8, h264])


async def test_hide_self_leaves_the_own_tile_out_of_that_peer_picture_only(server):
    alice, bob = make_peer(server, "alice", "red", hide_self=True), make_peer(server, "bob", "green")
    try:
        for peer in (alice, bob):
            await peer.join()
        await alice.wait_for(lambda: shows(bob, 2, "red", "green") and shows(alice, 1, "green"), timeout=10)
        # Alice sees bob alone, full canvas; bob sees both.
        assert not contains_colour(cell_colours(alice.video_frame, 1), yuv("red"))
        assert not any(contains_colour(cell_colours(alice.video_frame, n), yuv("red")) for n in (2, 3, 4))
        assert close_to(cell_colours(bob.video_frame, 2)[0], yuv("red"))
        video = server.conference.rooms["tiers"].video
        assert set(video.encoders) == {Output("vp8", "high"), Output("vp8", "high", alice.peer_id)}
    finally:
        await close_all([alice, bob])


async def test_an_encoder_is_created_on_first_use_and_released_with_its_last_peer(server):
    high = make_peer(server, "high", "green")
    lows = [make_peer(server, f"low{i}", "red", tier="low") for i in range(2)]
    try:
        await high.join()
        await high.wait_for(lambda: high.video_frames > 0, timeout=10)
        room = server.conference.rooms["tiers"]
        video = room.video
        assert set(video.encoders) == {Output("vp8", "high")}
        for low in lows:
            await low.join()
        await high.wait_for(lambda: all(low.video_frames > 0 for low in lows), timeout=10)
        assert set(video.encoders) == {Output("vp8", "high"), Output("vp8", "low")}
        assert video.stats.encoders_created == 2  # one low encoder for both low peers
        await lows[0].close()
        await asyncio.sleep(0.5)
        assert Output("vp8", "low") in video.encoders  # the other low peer still uses it
        await lows[1].close()
        await high.wait_for(lambda: Output("vp8", "low") not in video.encoders, timeout=3)
        assert video.stats.encoders_released == 1
        frames = high.video_frames
        await high.wait_for(lambda: high.video_frames > frames + 10, timeout=5)  # the high tier goes on
        await high.close()
        await high.wait_for(lambda: "tiers" not in server.conference.rooms, timeout=3)
        assert video.encoders == {}  # the room closed: its last encoder is gone too
    finally:
        await close_all([high, *lows])


async def test_a_pli_reaches_the_encoder_of_the_peer_that_sent_it(server):
    low, high = make_peer(server, "low", "red", tier="low"), make_peer(server, "high", "green")
    try:
        for peer in (low, high):
            await peer.join()
        await low.wait_for(lambda: low.video_frames > 10 and high.video_frames > 10, timeout=10)
        await asyncio.sleep(1)  # the joins' keyframes are behind us
        video = server.conference.rooms["tiers"].video
        encoders = {tier: video.encoders[Output("vp8", tier)] for tier in ("low", "high")}
        for asking, other in (("low", "high"), ("high", "low")):
            peer = low if asking == "low" else high
            receiver = next(t.receiver for t in peer.pc.getTransceivers() if t.kind == "video")
            ssrc = receiver.getSynchronizationSources()[0].source
            before = {tier: encoder.keyframes for tier, encoder in encoders.items()}
            await receiver._send_rtcp_pli(ssrc)
            await peer.wait_for(lambda: encoders[asking].keyframes > before[asking], timeout=2)
            assert encoders[other].keyframes == before[other], asking
            await asyncio.sleep(0.5)
    finally:
        await close_all([low, high])


async def test_an_unknown_tier_is_refused_and_the_session_may_join_again(server):
    peer = make_peer(server, "odd", "red", tier="huge")
    try:
        with pytest.raises(PeerError, match="tier"):
            await peer.join()
        assert peer.errors[-1].code == "unknown_tier"
        assert "tiers" not in server.conference.rooms
        await peer.send({"type": "join", "room": "tiers", "name": "odd", "tier": "low"})
        await peer.wait_for(lambda: any(e["type"] == "joined" for e in peer.events), timeout=5)
    finally:
        await peer.close()


def test_tiers_on_the_command_line():
    assert _tier("low=640x360@15:400k") == ("low", Tier(640, 360, 15, 400_000))
    assert _tier("hd=1920x1080@30:2.5M") == ("hd", Tier(1920, 1080, 30, 2_500_000))
    args = build_parser().parse_args(["serve", "--tier", "mid=960x540@20:800000"])
    assert args.tier == [("mid", Tier(960, 540, 20, 800_000))]
    for bad in ("low", "low=640x360@15", "low=641x360@15:400k", "low=640x360@0:400k", "a b=640x360@15:1M"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", "--tier", bad])


async def test_a_pli_storm_from_one_receiver_costs_the_others_at_most_one_keyframe(server):
    stormy, calm = make_peer(server, "stormy", "red"), make_peer(server, "calm", "green")
    try:
        for peer in (stormy, calm):
            await peer.join()
        await calm.wait_for(lambda: stormy.video_frames > 10 and calm.video_frames > 10, timeout=10)
        await asyncio.sleep(1)  # the joins' keyframes are behind us
        room = server.conference.rooms["tiers"]
        encoder = room.video.encoders[Output("vp8", "high")]
        keyframes, gated, frames = encoder.keyframes, room.video.stats.keyframes_gated, calm.video_frames
        receiver = next(t.receiver for t in stormy.pc.getTransceivers() if t.kind == "video")
        ssrc = receiver.getSynchronizationSources()[0].source
        for _ in range(50):
            await receiver._send_rtcp_pli(ssrc)
            await asyncio.sleep(0.02)
        await asyncio.sleep(1)
        assert encoder.keyframes - keyframes <= 1
        participant = next(p for p in room.participants.values() if p.name == "stormy")
        # Dropped while the keyframe one of them brought was on its way, or gated for the others' sake.
        assert room.video.stats.keyframes_gated - gated + participant.video_out.plis_ignored >= 49
        assert participant.link.stats.plis >= 50
        assert calm.video_frames > frames + 20  # the calm peer's picture went on
    finally:
        await close_all([stormy, calm])
