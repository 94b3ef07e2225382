"""WHIP publishers (mcu/server/whip.py): any WebRTC encoder is a participant of a room, over plain HTTP."""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from aiortc import RTCPeerConnection, RTCRtpSender
from conftest import free_port, start_mcu, stop_process, within
from http_checks import post, request
from media_checks import cell_colours, contains_colour, tone_levels

from client.peer import Peer
from client.sdp_resource import SDP, SdpRefused
from client.sources import COLORS, ColorTrack, ToneTrack, rgb_to_yuv
from client.whip import WhipPublisher
from mcu.config import Config
from mcu.rooms.participant import negotiated_video_codec
from signaling import grants, tokens
from signaling.grants import ALL_GRANTS
from signaling.limits import Limits

SECRET = "a-server-secret-long-enough-for-hs256!!"


def endpoint(server, room: str = "room1", query: str = "") -> str:
    return f"http://127.0.0.1:{server.port}/whip/{room}{query}"


def make_peer(server, room: str = "room1", token: str | None = None) -> Peer:
    return Peer(server.url, room, "alice", video=ColorTrack(COLORS["red"]), audio=ToneTrack(440.0), token=token)


def make_publisher(server, room: str = "room1", query: str = "", **kwargs) -> WhipPublisher:
    return WhipPublisher(
        endpoint(server, room, query), video=ColorTrack(COLORS["blue"]), audio=ToneTrack(660.0), **kwargs
    )


async def close_all(things) -> None:
    await asyncio.gather(*(thing.close() for thing in things), return_exceptions=True)


async def send_only_offer(kinds=("audio", "video"), audio_codec: str | None = None) -> str:
    """What a WHIP encoder offers: send audio and video, every candidate in it."""
    pc = RTCPeerConnection()
    for kind in kinds:
        transceiver = pc.addTransceiver(kind, direction="sendonly")
        if kind == "audio" and audio_codec is not None:
            codecs = RTCRtpSender.getCapabilities("audio").codecs
            transceiver.setCodecPreferences([c for c in codecs if c.mimeType.lower() == f"audio/{audio_codec}"])
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def sees_and_hears(peer: Peer, colour: str, frequency: float, tiles: int = 2) -> None:
    """The peer's composite shows `colour` in one of its `tiles` cells and its mix carries `frequency`."""
    expected = rgb_to_yuv(COLORS[colour])
    await within(15, lambda: peer.video_frame is not None and contains_colour(
        cell_colours(peer.video_frame, tiles), expected
    ))  # fmt: skip
    await asyncio.sleep(2.5)
    levels = tone_levels(peer.audio(1.0), [frequency])
    assert levels[frequency] > 100, levels


async def test_a_publisher_is_seen_heard_named_and_leaves_on_delete(server):
    peer = make_peer(server)
    publisher = make_publisher(server, query="?name=Stage%20camera")
    try:
        await peer.join()
        room = server.conference.rooms["room1"]
        await publisher.start()
        assert publisher.resource is not None and publisher.resource.startswith(endpoint(server) + "/")
        # A participant like any other: in the list, its name told to the others.
        await within(5, lambda: "Stage camera" in peer.participants.values())
        (whip_id,) = [p for p, name in peer.participants.items() if name == "Stage camera"]
        assert list(room.participants) == [peer.peer_id, whip_id] and room.stats()["peers"] == 2
        await sees_and_hears(peer, "blue", 660.0)
        # It is sent nothing: no downstream of its own, no encoder for it.
        assert room.receivers() == [room.participants[peer.peer_id]]
        assert set(room.video.encoders) == {room.participants[peer.peer_id].video_out.output}
        assert room.participants[whip_id].pc.getTransceivers()[0].currentDirection == "recvonly"

        assert await publisher.delete() == 200
        await within(3, lambda: whip_id not in peer.participants)
        assert list(room.participants) == [peer.peer_id]
        assert await publisher.delete() == 404  # DELETE twice
        before = peer.video_frames
        await peer.wait_for(lambda: peer.video_frames > before + 10, 5)
    finally:
        await close_all([publisher, peer])


async def test_a_publisher_opens_the_room_in_h264_and_keeps_it(server):
    publisher = make_publisher(server, "stage", video_codec="h264")
    peer = make_peer(server, "stage")
    try:
        await publisher.start()
        room = server.conference.rooms["stage"]
        assert room.mode == "mcu" and len(room.participants) == 1
        (whip,) = room.participants.values()
        assert whip.name == "WHIP"
        await peer.join()
        assert list(peer.participants.values()) == ["WHIP"]  # in the joiner's list
        await sees_and_hears(peer, "blue", 660.0)
        assert negotiated_video_codec(publisher.pc.remoteDescription.sdp) == "h264"
        await peer.close()
        await asyncio.sleep(0.5)
        assert server.conference.rooms.get("stage") is room  # the publisher keeps the room open
        assert await publisher.delete() == 200
        await within(5, lambda: "stage" not in server.conference.rooms)
    finally:
        await close_all([publisher, peer])


async def test_a_publisher_of_audio_alone_is_a_voice_and_a_placeholder(server):
    peer = make_peer(server)
    publisher = WhipPublisher(endpoint(server, query="?name=radio"), audio=ToneTrack(660.0))
    try:
        await peer.join()
        await publisher.start()
        room = server.conference.rooms["room1"]
        (whip,) = [p for p in room.participants.values() if p.name == "radio"]
        assert not whip.sending_video and whip.sending_audio
        await asyncio.sleep(2.5)
        assert tone_levels(peer.audio(1.0), [660.0])[660.0] > 100
    finally:
        await close_all([publisher, peer])


async def test_a_moderator_removes_a_publisher(server):
    peer = make_peer(server)
    publisher = make_publisher(server)
    try:
        await peer.join()
        await publisher.start()
        await within(5, lambda: len(peer.participants) == 1)
        (whip_id,) = peer.participants
        status, _ = await request("DELETE", f"http://127.0.0.1:{server.port}/api/rooms/room1/participants/{whip_id}")
        assert status == 200
        await within(3, lambda: not peer.participants)
        assert await publisher.delete() == 404  # its resource ended with it
    finally:
        await close_all([publisher, peer])


async def test_a_publisher_that_hangs_up_leaves_and_one_alone_ends_at_shutdown(server):
    peer = make_peer(server)
    hanging_up = make_publisher(server)
    alone = make_publisher(server, "solo")
    try:
        await peer.join()
        await hanging_up.start()
        await within(5, lambda: len(peer.participants) == 1)
        await within(10, lambda: hanging_up.pc.connectionState == "connected")
        await hanging_up.pc.close()  # no DELETE: the server sees its connection close
        await within(10, lambda: not peer.participants)
        assert await hanging_up.delete() == 404
        await alone.start()
        assert "solo" in server.conference.rooms
        await server.conference.close()
        assert not server.conference.rooms
        assert await alone.delete() == 404
    finally:
        await close_all([hanging_up, alone, peer])


async def test_bad_input_is_refused_and_disturbs_nobody(server):
    peer = make_peer(server)
    try:
        await peer.join()
        await peer.wait_for(lambda: peer.video_frames > 5, 10)
        offer = await send_only_offer()
        room = server.conference.rooms["room1"]

        status, _, _ = await post(endpoint(server), offer, content_type="text/plain")
        assert status == 415
        status, body, _ = await post(endpoint(server), "this is not SDP")
        assert status == 400 and "invalid_sdp" in body
        status, body, _ = await post(endpoint(server), "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=")
        assert status == 400 and "invalid_sdp" in body
        no_media = offer.split("\r\nm=")[0] + "\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n"
        status, body, _ = await post(endpoint(server), no_media)
        assert status == 400 and "audio or a video media section" in body
        status, body, _ = await post(endpoint(server), offer.replace("a=sendonly", "a=recvonly"))
        assert status == 400 and "A WHIP offer sends" in body
        status, body, _ = await post(endpoint(server), await send_only_offer(("video", "video")))
        assert status == 400 and "one audio and one video" in body
        status, body, _ = await post(endpoint(server), offer + "a=x:" + "y" * 40_000 + "\r\n")
        assert status == 413 and "sdp_too_large" in body
        status, body, _ = await post(endpoint(server, query="?name=%20"), offer)
        assert status == 400 and "invalid_name" in body
        status, body, _ = await post(endpoint(server, "no%20spaces"), offer)
        assert status == 400 and "invalid_room" in body
        status, body, _ = await post(endpoint(server, "elsewhere"), offer.replace("a=sendonly", "a=recvonly"))
        assert status == 400 and "elsewhere" not in server.conference.rooms  # a refused offer opens no room
        # One the server opened the room for, then could not answer (no codec in common): the room closes again.
        status, body, _ = await post(endpoint(server, "elsewhere"), await send_only_offer(("audio",), "pcmu"))
        assert status == 400 and "invalid_sdp" in body and "elsewhere" not in server.conference.rooms
        for method in ("DELETE", "PATCH"):
            status, _ = await request(method, endpoint(server) + "/no-such-session")
            assert status == 404

        assert list(room.participants) == [peer.peer_id] and peer.participants == {}
        assert list(server.conference.rooms) == ["room1"]
        before = peer.video_frames
        await peer.wait_for(lambda: peer.video_frames > before + 10, 5)
    finally:
        await peer.close()


async def test_cors_lets_a_page_of_another_origin_publish(server):
    async with aiohttp.ClientSession() as session:
        preflight = {"Origin": "https://studio.example", "Access-Control-Request-Method": "POST"}
        async with session.options(endpoint(server), headers=preflight) as response:
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Origin"] == "*"
            assert response.headers["Accept-Post"] == SDP
    status, _, headers = await post(endpoint(server), await send_only_offer())
    assert status == 201
    assert headers["Access-Control-Allow-Origin"] == "*" and headers["Content-Type"] == SDP
    assert headers["Location"].startswith("/whip/room1/") and headers["ETag"].startswith('"')
    status, _ = await request("DELETE", f"http://127.0.0.1:{server.port}{headers['Location']}")
    assert status == 200
    await within(5, lambda: not server.conference.rooms)


class TestRoomLimits:
    @pytest.fixture
    def config(self) -> Config:
        return Config(width=640, height=360, fps=15, video_bitrate=600_000, limits=Limits(max_peers_per_room=1))

    async def test_a_full_room_refuses_a_publisher_and_only_mcu_rooms_take_one(self, server):
        peer = make_peer(server)
        forwarded = Peer(server.url, "forwarded", "carol", video=ColorTrack(COLORS["green"]), mode="sfu")
        try:
            await peer.join()
            await forwarded.join()
            status, body, _ = await post(endpoint(server), await send_only_offer())
            assert status == 503 and "room_full" in body
            status, body, _ = await post(endpoint(server, "forwarded"), await send_only_offer())
            assert status == 409 and "wrong_mode" in body
            assert len(server.conference.rooms["room1"].participants) == 1
        finally:
            await close_all([peer, forwarded])


class TestTokens:
    @pytest.fixture
    def config(self) -> Config:
        return Config(width=640, height=360, fps=15, video_bitrate=600_000, secret=SECRET)

    async def test_a_publisher_needs_a_token_that_grants_publish_and_is_named_by_it(self, server):
        peer = make_peer(server, token=tokens.issue(SECRET, "room1", "alice", 60, ALL_GRANTS))
        try:
            await peer.join()
            offer = await send_only_offer()
            refusals = [
                (None, 401),
                ("forged", 401),
                (tokens.issue(SECRET, "elsewhere", "obs", 60, [grants.PUBLISH]), 401),
                (tokens.issue(SECRET, "room1", "obs", 60, [grants.SUBSCRIBE, grants.CHAT]), 403),
            ]
            for token, expected in refusals:
                status, _, _ = await post(endpoint(server), offer, token=token)
                assert status == expected, token
            publisher = make_publisher(server)
            publisher.http.token = tokens.issue(SECRET, "room1", "Studio B", 60, [grants.PUBLISH])
            try:
                await publisher.start()
                await within(5, lambda: list(peer.participants.values()) == ["Studio B"])
                # A moderator removes it: its token is kept out, as a joiner's would be.
                (whip_id,) = peer.participants
                await peer.kick(whip_id)
                await within(3, lambda: not peer.participants)
                status, body, _ = await post(endpoint(server), offer, token=publisher.http.token)
                assert status == 403 and "banned" in body
            finally:
                await publisher.close()
            with pytest.raises(SdpRefused) as refused:
                await make_publisher(server).start()  # cleans up after itself
            assert refused.value.status == 401
        finally:
            await peer.close()


async def test_a_publisher_through_the_front_of_workers():
    """`mcu serve --workers 1`: the front passes WHIP on to the worker, which opens the room; headers and all."""
    port = free_port()
    process = start_mcu(port, "--workers", "1", "--size", "640x360", "--fps", "15")
    publisher = WhipPublisher(
        f"http://127.0.0.1:{port}/whip/stage?name=front", video=ColorTrack(COLORS["blue"]), audio=ToneTrack(660.0)
    )
    peer = Peer(f"ws://127.0.0.1:{port}/ws", "stage", "alice", video=ColorTrack(COLORS["red"]), audio=ToneTrack(440))
    try:
        await publisher.start()
        assert publisher.resource is not None and publisher.resource.startswith(f"http://127.0.0.1:{port}/whip/stage/")
        await peer.join()
        assert list(peer.participants.values()) == ["front"]
        await sees_and_hears(peer, "blue", 660.0)
        status, _, headers = await post(f"http://127.0.0.1:{port}/whip/stage", "x", content_type="text/plain")
        assert status == 415 and headers["Access-Control-Allow-Origin"] == "*"
        assert await publisher.delete() == 200
        await within(5, lambda: not peer.participants)
        assert await publisher.delete() == 404
    finally:
        await close_all([publisher, peer])
        stop_process(process, grace=10)


def worker_peers(port: int) -> list[int]:
    """Each worker's peers, by index, as the front's /healthz gives them."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        workers = json.load(response)["workers"]
    return [w["peers"] for w in sorted(workers, key=lambda w: w["index"])]


def room_worker(port: int, room: str) -> tuple[int, int]:
    """The worker hosting `room`, and its peers there."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        stats = json.load(response)["rooms"][room]
    return stats["worker"], stats["peers"]


async def test_a_publisher_opens_a_room_on_one_worker_of_two_and_joins_follow_it():
    """`--workers 2`: a WHIP publisher's room is placed as a join's, and its lease outlives its WebSockets.

    Each step is arranged so that a room opened or released behind the directory's back would be split:
    the publisher's POST goes to the less loaded worker (1), and after the last WebSocket leaves, the other
    worker (0) is the less loaded one when the next peer joins.
    """
    port = free_port()
    process = start_mcu(port, "--workers", "2", "--size", "640x360", "--fps", "15")
    ws = f"ws://127.0.0.1:{port}/ws"
    listeners: list[Peer] = []
    publisher = WhipPublisher(f"http://127.0.0.1:{port}/whip/stage", video=ColorTrack(COLORS["blue"]),
                              audio=ToneTrack(660.0))  # fmt: skip

    async def listener(room: str) -> None:
        before = sum(worker_peers(port))
        listeners.append(Peer(ws, room, f"l{len(listeners)}", audio=ToneTrack(220.0), decode=False))
        await listeners[-1].join()
        await within(10, lambda: sum(worker_peers(port)) == before + 1)

    try:
        await listener("busy")
        if worker_peers(port)[0] == 0:  # "busy" went to worker 1: make worker 0 the busier one
            await listener("fill")
            await listener("fill")
        assert worker_peers(port)[0] > worker_peers(port)[1]
        await publisher.start()
        viewer = Peer(ws, "stage", "alice", video=ColorTrack(COLORS["red"]), audio=ToneTrack(440))
        listeners.append(viewer)
        await viewer.join()
        await sees_and_hears(viewer, "blue", 660.0)
        assert room_worker(port, "stage") == (1, 2)
        await viewer.close()
        await within(10, lambda: room_worker(port, "stage") == (1, 1))

        for _ in range(3):  # worker 1 becomes the busier one while "stage" has no WebSocket
            await listener("busy1")
        assert worker_peers(port)[1] > worker_peers(port)[0]
        await asyncio.sleep(2.5)  # two heartbeats: a lease kept by WebSockets alone would be gone
        second = Peer(ws, "stage", "bob", video=ColorTrack(COLORS["green"]), audio=ToneTrack(440))
        listeners.append(second)
        await second.join()
        assert list(second.participants.values()) == ["WHIP"]
        await sees_and_hears(second, "blue", 660.0)
        assert room_worker(port, "stage") == (1, 2)
    finally:
        await close_all([publisher, *listeners])
        stop_process(process, grace=10)


#: GStreamer's webrtcbin as a WHIP encoder (tests/gst_whip.py), run by Debian's Python: its python3-gi.
GST_WHIP = Path(__file__).with_name("gst_whip.py")
DEBIAN_PYTHON = Path("/usr/bin/python3")
GST_ELEMENTS = ("webrtcbin", "nicesrc", "dtlssrtpenc", "srtpenc", "vp8enc", "x264enc", "opusenc", "videotestsrc")
GST_PACKAGES = (
    "python3-gi gir1.2-gst-plugins-bad-1.0 gstreamer1.0-nice gstreamer1.0-plugins-good gstreamer1.0-plugins-bad"
    " gstreamer1.0-plugins-ugly"
)


def gstreamer_missing() -> str | None:
    """Why GStreamer's webrtcbin cannot publish here, or None."""
    if not DEBIAN_PYTHON.exists():
        return f"no {DEBIAN_PYTHON}"
    check = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstWebRTC', '1.0');"
        "from gi.repository import Gst, GstWebRTC; Gst.init(None);"
        f"print(' '.join(n for n in {GST_ELEMENTS!r} if Gst.ElementFactory.find(n) is None))"
    )
    done = subprocess.run([DEBIAN_PYTHON, "-c", check], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        missing = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    else:
        missing = done.stdout.strip()
    return f"GStreamer's WebRTC is missing ({missing}): apt-get install {GST_PACKAGES}" if missing else None


@pytest.mark.parametrize("codec", ["vp8", "h264"])
async def test_gstreamer_publishes_over_whip(server, codec):
    """A far end that is not aiortc: GStreamer's webrtcbin (libnice, its own DTLS with an RSA certificate), driven
    as simple-whip-client drives it; H.264 as OBS Studio sends it."""
    reason = await asyncio.to_thread(gstreamer_missing)
    if reason is not None:
        pytest.skip(reason)
    peer = make_peer(server)
    publisher = None
    try:
        await peer.join()
        publisher = await asyncio.create_subprocess_exec(
            str(DEBIAN_PYTHON), str(GST_WHIP), endpoint(server, query="?name=gstreamer"), "8", codec,
            "".join(f"{c:02x}" for c in COLORS["blue"]), "660",
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        assert publisher.stdout is not None
        line = (await asyncio.wait_for(publisher.stdout.readline(), 20)).decode()
        assert line.startswith("published "), line
        await within(5, lambda: list(peer.participants.values()) == ["gstreamer"])
        await sees_and_hears(peer, "blue", 660.0)
        # At its end it DELETEs its resource: the room sees it leave.
        await within(15, lambda: not peer.participants)
        assert await asyncio.wait_for(publisher.wait(), 10) == 0
    finally:
        if publisher is not None and publisher.returncode is None:
            publisher.kill()
            await publisher.wait()
        await peer.close()
