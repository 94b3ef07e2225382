"""Every limit of signaling/limits.py refuses with its own code, and the refused session goes on."""

from __future__ import annotations

import asyncio
import contextlib
import json

import aiohttp
import pytest
from aiohttp import WSMsgType

from mcu.config import Config
from signaling.limits import Limits

LIMITS = Limits(
    max_rooms=2,
    max_peers_per_room=2,
    max_message_bytes=2048,
    messages_per_second=5,
    message_burst=5,
    join_timeout=1.5,
    max_sdp_bytes=1024,
    max_tracks_per_peer=2,
)


@pytest.fixture
def config() -> Config:
    return Config(width=320, height=180, fps=10, video_bitrate=300_000, limits=LIMITS)


@contextlib.asynccontextmanager
async def connect(server):
    async with aiohttp.ClientSession() as session, session.ws_connect(server.url) as ws:
        yield ws


async def request(ws, message: dict | str) -> dict:
    await ws.send_str(message if isinstance(message, str) else json.dumps(message))
    while (reply := await ws.receive_json(timeout=5))["type"] == "visibility":
        pass  # unasked: a publisher of an mcu room is told whether its video is shown
    return reply


def join(room: str, name: str = "Ana") -> dict:
    return {"type": "join", "room": room, "name": name}


def sdp(sections: list[str], padding: int = 0) -> str:
    lines = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0"]
    lines += [f"m={kind} 9 UDP/TLS/RTP/SAVPF 96" for kind in sections]
    lines += ["a=x-padding:" + "x" * padding] if padding else []
    return "\r\n".join(lines) + "\r\n"


async def test_room_full_and_too_many_rooms(server) -> None:
    async with connect(server) as a, connect(server) as b, connect(server) as c, connect(server) as d:
        assert (await request(a, join("one")))["type"] == "joined"
        assert (await request(b, join("one", "Bo")))["type"] == "joined"
        await a.receive_json(timeout=5)  # participantJoined for Bo
        refused = await request(c, join("one", "Cy"))
        assert refused["code"] == "room_full" and "2 participants" in refused["message"]
        assert (await request(d, join("two", "Di")))["type"] == "joined"
        refused = await request(c, join("three", "Cy"))
        assert refused["code"] == "too_many_rooms"
        assert set(server.conference.rooms) == {"one", "two"}
        # The refused session goes on: once Bo leaves, there is a place for Cy.
        await b.send_json({"type": "leave"})
        while (await a.receive_json(timeout=5))["type"] != "participantLeft":
            pass
        assert (await request(c, join("one", "Cy")))["type"] == "joined"


async def test_message_size_is_the_configured_one(server) -> None:
    async with connect(server) as ws:
        reply = await request(ws, {"type": "join", "room": "r", "name": "n", "pad": "x" * 2100})
        assert reply["code"] == "message_too_large" and "2048 bytes" in reply["message"]
        assert (await request(ws, {"type": "join", "room": "r", "name": "n", "pad": "x" * 1900}))["type"] == "joined"


async def test_messages_per_second(server) -> None:
    async with connect(server) as ws:
        for _ in range(12):
            await ws.send_json({"type": "leave"})
        codes = [(await ws.receive_json(timeout=5))["code"] for _ in range(12)]
        # The burst is served (and refused on its merits: not joined); the rest is rate limited.
        assert codes[:5] == ["not_joined"] * 5
        assert codes[5:].count("rate_limited") >= 6
        await asyncio.sleep(1.2)  # the bucket refills at 5 per second
        assert (await request(ws, join("r")))["type"] == "joined"


async def test_join_timeout_closes_an_idle_connection_only(server) -> None:
    async with connect(server) as idle, connect(server) as member:
        assert (await request(member, join("r")))["type"] == "joined"
        reply = await idle.receive_json(timeout=5)
        assert reply["code"] == "join_timeout"
        closing = await idle.receive(timeout=5)
        assert closing.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
        await asyncio.sleep(1)
        # The member joined in time: still served.
        assert not member.closed
        reply = await request(member, {"type": "setMedia", "video": False, "audio": True})
        assert reply["type"] == "participantMedia"


async def test_sdp_size_and_tracks(server) -> None:
    async with connect(server) as ws:
        assert (await request(ws, join("r")))["type"] == "joined"
        reply = await request(ws, {"type": "offer", "sdp": sdp(["audio", "video"], padding=1200)})
        assert reply["code"] == "sdp_too_large" and "1024 bytes" in reply["message"]
        reply = await request(ws, {"type": "offer", "sdp": sdp(["audio", "video", "video"])})
        assert reply["code"] == "too_many_tracks" and "3 audio and video sections" in reply["message"]
        # Neither reached the media side; a valid-size offer is judged on its merits.
        reply = await request(ws, {"type": "offer", "sdp": sdp(["audio", "video"])})
        assert reply["code"] == "invalid_sdp"
