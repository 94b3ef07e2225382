"""Mesh rooms: peers connect to each other, the server only relays their signaling.

Real aiortc peers (ColorTrack, ToneTrack) against the in-process server, so the
test can look inside the room: no peer connection, no bytes, no media clock.
"""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp
import pytest
from conftest import BIN
from media_checks import cell_colours, close_to, tone_levels

from client.peer import Peer
from client.sources import COLORS, ColorTrack, ToneTrack, rgb_to_yuv
from signaling import protocol
from signaling.protocol import ProtocolError, parse_client_message

SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
)
CANDIDATE = {"candidate": "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host", "sdpMid": "0", "sdpMLineIndex": 0}
PEOPLE = [("red", 440.0), ("green", 660.0), ("blue", 880.0)]
TONES = [440.0, 660.0, 880.0, 1100.0]


def mesh_peer(url: str, room: str, colour: str, tone: float, **options) -> Peer:
    return Peer(url, room, colour, video=ColorTrack(COLORS[colour]), audio=ToneTrack(tone), mode="mesh", **options)


def shows(peer: Peer, publisher: str, colour: str) -> bool:
    remote = peer.remote.get(publisher)
    return (
        remote is not None
        and remote.video_frame is not None
        and close_to(cell_colours(remote.video_frame, 1)[0], rgb_to_yuv(COLORS[colour]))
    )


async def test_three_peers_see_and_hear_each_other_and_the_server_carries_no_media(server):
    peers = [mesh_peer(server.url, "mesh", colour, tone) for colour, tone in PEOPLE]
    try:
        for peer in peers:
            await peer.join()
        colour_of = {peer.peer_id: colour for peer, (colour, _) in zip(peers, PEOPLE)}
        tone_of = {peer.peer_id: tone for peer, (_, tone) in zip(peers, PEOPLE)}
        for peer in peers:
            others = [p for p in colour_of if p != peer.peer_id]
            await peer.wait_for(lambda: all(shows(peer, p, colour_of[p]) for p in others), 15)
            # The other two, each on tracks of its own; nothing of itself.
            assert sorted(peer.remote) == sorted(others)
            assert peer.video_frame is None and peer.pc is None
        await asyncio.sleep(1.5)
        for peer in peers:
            for publisher, remote in peer.remote.items():
                levels = tone_levels(remote.audio(1.0), TONES)
                own = tone_of[publisher]
                assert levels[own] > 100, (publisher, levels)
                assert all(levels[own] - levels[f] >= 30 for f in TONES if f != own), (publisher, levels)

        room = server.conference.rooms["mesh"]
        assert room.mode == "mesh"
        # No peer connection on the server, no byte through it, no composite or mix made.
        assert all(p.pc is None for p in room.participants.values())
        assert server.conference.media_bytes() == (0, 0)
        stats = room.stats()
        assert stats["videoFrames"] == stats["audioTicks"] == stats["audioEncodes"] == 0, stats
        assert not room.video.encoders
        # Each pair: one offer and one answer went through the relay.
        assert server.conference.mesh.relayed >= 6
    finally:
        await asyncio.gather(*(peer.close() for peer in peers))


async def test_a_late_joiner_gets_pictures_within_a_second_and_a_leaver_is_dropped(server):
    peers = [mesh_peer(server.url, "late", colour, tone) for colour, tone in PEOPLE[:2]]
    late = mesh_peer(server.url, "late", "yellow", 1100.0)
    try:
        for peer in peers:
            await peer.join()
        await peers[1].wait_for(lambda: shows(peers[1], peers[0].peer_id, "red"), 15)
        await asyncio.sleep(1)  # the room has settled: the newcomer alone is new

        await late.join()
        assert late.mesh is not None
        await late.wait_for(lambda: len(late.mesh.connected_time) == 2, 10)
        await late.wait_for(lambda: all(shows(late, p.peer_id, c) for p, (c, _) in zip(peers, PEOPLE)), 10)
        for peer in peers:
            first = late.remote[peer.peer_id].first_frame_time
            delay = first - late.mesh.connected_time[peer.peer_id]
            assert delay <= 1.0, f"first picture of {peer.name} {delay:.2f} s after connected"
            # The others get the newcomer's picture too, on a connection the newcomer offered.
            await peer.wait_for(lambda peer=peer: shows(peer, late.peer_id, "yellow"), 10)

        await late.close()
        for peer in peers:
            await peer.wait_for(lambda peer=peer: late.peer_id not in peer.mesh.pcs, 5)
            assert peer.remote[late.peer_id].ended
            assert late.peer_id not in peer.participants
        frames = peers[0].remote[peers[1].peer_id].video_frames
        await asyncio.sleep(0.5)
        assert peers[0].remote[peers[1].peer_id].video_frames > frames  # the rest goes on
    finally:
        await asyncio.gather(*(peer.close() for peer in [*peers, late]))


async def test_mcu_client_joins_a_mesh_with_mode_and_reports_each_peer(server):
    python = mesh_peer(server.url, "cli-mesh", "red", 440.0)
    await python.join()
    client = await asyncio.create_subprocess_exec(
        BIN / "mcu-client", "join", server.url, "--room", "cli-mesh", "--name", "cli", "--mode", "mesh",
        "--video", "color:blue", "--audio", "tone:660", "--duration", "5",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        # The terminal client offered to the peer already there, and sends its colour.
        await python.wait_for(lambda: any(shows(python, p, "blue") for p in python.participants), 15)
        output = (await asyncio.wait_for(client.communicate(), 20))[0].decode()
        assert client.returncode == 0, output
        received = re.search(rf"from {python.peer_id}: (\d+) video frames, (\d+) audio frames", output)
        assert received and int(received[1]) > 20 and int(received[2]) > 100, output
    finally:
        if client.returncode is None:
            client.kill()
            await client.wait()
        await python.close()


class Raw:
    """A bare signaling client: sends what it is told, reads replies past room events."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.peer_id = ""

    async def send(self, message: dict) -> None:
        await self.ws.send_str(json.dumps(message))

    async def receive(self, kind: str) -> dict:
        while True:
            msg = await asyncio.wait_for(self.ws.receive(), 5)
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            message = json.loads(msg.data)
            if message["type"] in (kind, "error"):
                return message

    async def join(self, room: str, mode: str) -> dict:
        await self.send({"type": "join", "room": room, "name": "raw", "mode": mode})
        joined = await self.receive("joined")
        assert joined["type"] == "joined", joined
        self.peer_id = joined["peerId"]
        return joined

    async def expect_error(self, message: dict, code: str) -> None:
        await self.send(message)
        reply = await self.receive("error")
        assert reply["code"] == code, reply


@pytest.fixture
async def raw(server):
    async with aiohttp.ClientSession() as http:

        async def connect() -> Raw:
            return Raw(await http.ws_connect(server.url))

        yield connect


async def test_relay_addressing_errors_and_the_session_goes_on(server, raw):
    ana, bo, mcu = await raw(), await raw(), await raw()
    joined = await ana.join("relay", "mesh")
    assert joined["mode"] == "mesh"
    await bo.join("relay", None)  # a later join takes the room's mode
    # Meant for the server, in a room where the server answers nothing: wrong_mode.
    await ana.expect_error({"type": "offer", "sdp": SDP}, protocol.WRONG_MODE)
    await ana.expect_error({"type": "answer", "sdp": SDP}, protocol.WRONG_MODE)
    await ana.expect_error({"type": "candidate", "candidate": CANDIDATE}, protocol.WRONG_MODE)
    # Nobody of the room, or oneself: unknown_peer.
    await ana.expect_error({"type": "offer", "sdp": SDP, "to": "nobody"}, protocol.UNKNOWN_PEER)
    await ana.expect_error({"type": "offer", "sdp": SDP, "to": ana.peer_id}, protocol.UNKNOWN_PEER)
    await mcu.join("composite", "mcu")
    await ana.expect_error({"type": "offer", "sdp": SDP, "to": mcu.peer_id}, protocol.UNKNOWN_PEER)
    # Addressed to a peer in an mcu room: wrong_mode.
    await mcu.expect_error({"type": "offer", "sdp": SDP, "to": ana.peer_id}, protocol.WRONG_MODE)
    await mcu.expect_error({"type": "candidate", "candidate": CANDIDATE, "to": ana.peer_id}, protocol.WRONG_MODE)
    # The usual checks come first: a bad SDP is invalid_sdp, a bad "to" invalid_message.
    await ana.expect_error({"type": "offer", "sdp": "hello", "to": bo.peer_id}, protocol.INVALID_SDP)
    await ana.expect_error({"type": "offer", "sdp": SDP, "to": 7}, protocol.INVALID_MESSAGE)

    # The session goes on: what is well addressed arrives, from the sender, without "to".
    await ana.send({"type": "offer", "sdp": SDP, "to": bo.peer_id})
    assert await bo.receive("offer") == {"type": "offer", "sdp": SDP, "from": ana.peer_id}
    await bo.send({"type": "answer", "sdp": SDP, "to": ana.peer_id})
    assert await ana.receive("answer") == {"type": "answer", "sdp": SDP, "from": bo.peer_id}
    await ana.send({"type": "candidate", "candidate": CANDIDATE, "to": bo.peer_id})
    assert await bo.receive("candidate") == {"type": "candidate", "candidate": CANDIDATE, "from": ana.peer_id}
    end = {"candidate": "", "sdpMid": None, "sdpMLineIndex": None}
    await ana.send({"type": "candidate", "candidate": {"candidate": ""}, "to": bo.peer_id})
    assert await bo.receive("candidate") == {"type": "candidate", "candidate": end, "from": ana.peer_id}
    # Nothing reaches the server to record.
    await ana.send({"type": "startRecording"})
    refused = await ana.receive("error")
    assert refused["code"] == protocol.RECORDING_FAILED and "mesh" in refused["message"], refused
    # A peer that left is nobody any more.
    await bo.send({"type": "leave"})
    await ana.receive("participantLeft")
    await ana.expect_error({"type": "offer", "sdp": SDP, "to": bo.peer_id}, protocol.UNKNOWN_PEER)
    assert server.conference.mesh.relayed == 4


def test_to_is_parsed_on_offer_answer_and_candidate():
    for message in (
        {"type": "offer", "sdp": SDP, "to": "p1"},
        {"type": "answer", "sdp": SDP, "to": "p1"},
        {"type": "candidate", "candidate": CANDIDATE, "to": "p1"},
    ):
        assert parse_client_message(json.dumps(message)).to == "p1"
        assert parse_client_message(json.dumps({**message, "to": None})).to is None
        with pytest.raises(ProtocolError) as caught:
            parse_client_message(json.dumps({**message, "to": ["p1"]}))
        assert caught.value.code == protocol.INVALID_MESSAGE
