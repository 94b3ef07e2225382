"""Every bad input over a live WebSocket gets its `error`, and the room runs on."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from client.peer import Peer
from client.sources import COLORS, ColorTrack, ToneTrack

AUDIO_ONLY_SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
VIDEO_ONLY_SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
# Both m-lines, but nothing a peer connection can apply (no ICE credentials, no fingerprint).
BROKEN_SDP = AUDIO_ONLY_SDP + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n"


# What the room tells every member on its own (the joined peer's tone makes it the speaker):
# they may arrive between a request and its reply.
#: Messages the room sends on its own; "visibility" comes to a publisher after `joined` and on every change.
ROOM_EVENTS = {"speaking", "activeSpeaker", "participantMedia", "participantAudio", "layoutChanged", "visibility"}


class RawClient:
    """A bare WebSocket client that sends whatever it is told to."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send(self, payload) -> None:
        if isinstance(payload, bytes):
            await self.ws.send_bytes(payload)
        elif isinstance(payload, str):
            await self.ws.send_str(payload)
        else:
            await self.ws.send_str(json.dumps(payload))

    async def receive(self) -> dict:
        msg = await asyncio.wait_for(self.ws.receive(), 5)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        return json.loads(msg.data)

    async def reply(self) -> dict:
        """The next message that answers this client, past the room's own events."""
        while (message := await self.receive())["type"] in ROOM_EVENTS:
            pass
        return message

    async def expect_error(self, payload, code: str) -> dict:
        await self.send(payload)
        reply = await self.reply()
        assert reply["type"] == "error", reply
        assert reply["code"] == code, reply
        assert reply["message"], reply
        return reply


@pytest.fixture
async def raw(server):
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(server.url) as ws:
            yield RawClient(ws)


BEFORE_JOIN = [
    ("not json", "invalid_json"),
    ("[1, 2]", "invalid_message"),
    ({"room": "x"}, "invalid_message"),
    ({"type": "dance"}, "unknown_type"),
    ({"type": "join", "name": "eve"}, "invalid_message"),
    ({"type": "join", "room": 5, "name": "eve"}, "invalid_message"),
    ({"type": "join", "room": "bad room!", "name": "eve"}, "invalid_room"),
    ({"type": "join", "room": "r" * 65, "name": "eve"}, "invalid_room"),
    ({"type": "join", "room": "room1", "name": ""}, "invalid_name"),
    ({"type": "join", "room": "room1", "name": "eve", "pad": "x" * 70_000}, "message_too_large"),
    (b"\x00\x01binary", "binary_not_supported"),
    ({"type": "offer", "sdp": BROKEN_SDP}, "not_joined"),
    ({"type": "candidate", "candidate": {"candidate": "", "sdpMid": "0"}}, "not_joined"),
    ({"type": "leave"}, "not_joined"),
    ({"type": "setMedia", "video": False, "audio": True}, "not_joined"),
]

AFTER_JOIN = [
    ({"type": "join", "room": "room1", "name": "eve"}, "already_joined"),
    ({"type": "offer"}, "invalid_message"),
    ({"type": "offer", "sdp": AUDIO_ONLY_SDP}, "invalid_sdp"),
    ({"type": "offer", "sdp": VIDEO_ONLY_SDP}, "invalid_sdp"),
    ({"type": "offer", "sdp": "hello"}, "invalid_sdp"),
    ({"type": "offer", "sdp": BROKEN_SDP}, "invalid_sdp"),
    ({"type": "candidate", "candidate": "x"}, "invalid_message"),
    ({"type": "setMedia", "video": "off", "audio": True}, "invalid_message"),
    ({"type": "setMedia", "video": False}, "invalid_message"),
    (
        {"type": "candidate", "candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0"}},
        "invalid_candidate",
    ),
]


async def test_bad_input_gets_an_error_and_the_room_keeps_running(server, raw):
    peer = Peer(server.url, "room1", "alice", video=ColorTrack(COLORS["red"]), audio=ToneTrack(440))
    try:
        await peer.join()
        await peer.wait_for(lambda: peer.video_frames > 5, timeout=10)

        for payload, code in BEFORE_JOIN:
            await raw.expect_error(payload, code)

        # The same session can still join after all that.
        await raw.send({"type": "join", "room": "room1", "name": "eve"})
        joined = await raw.reply()
        assert joined["type"] == "joined", joined
        assert joined["participants"] == [{"peerId": peer.peer_id, "name": "alice", "video": True, "audio": True}]

        for payload, code in AFTER_JOIN:
            await raw.expect_error(payload, code)

        # The media peer never noticed: its composite keeps arriving at the room's rate.
        frames = peer.video_frames
        await asyncio.sleep(1.0)
        assert peer.video_frames - frames >= 10
        assert not peer.errors
        room = server.conference.rooms["room1"]
        assert set(room.participants) == {peer.peer_id, joined["peerId"]}

        # A valid leave still works, and the others are told.
        await raw.send({"type": "leave"})
        await peer.wait_for(lambda: joined["peerId"] not in peer.participants, timeout=3)
        assert set(room.participants) == {peer.peer_id}
    finally:
        await peer.close()


async def test_malformed_message_burst_does_not_close_the_session(server, raw):
    for i in range(200):
        await raw.send("{" * (i % 7 + 1))
    codes = [(await raw.receive())["code"] for _ in range(200)]
    # Each is answered: on its merits up to the connection's burst allowance, then rate limited.
    burst = server.conference.config.limits.message_burst
    assert codes[:burst] == ["invalid_json"] * burst
    assert set(codes[burst:]) <= {"invalid_json", "rate_limited"} and "rate_limited" in codes
    await asyncio.sleep(0.2)  # a few tokens back
    await raw.send({"type": "join", "room": "after-burst", "name": "eve"})
    assert (await raw.receive())["type"] == "joined"
