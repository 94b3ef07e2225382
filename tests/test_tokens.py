"""Join tokens and grants: who may enter which room, and do what there."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import time
import urllib.error
import urllib.request

import aiohttp
import jwt
import pytest
from conftest import BIN, free_port, start_mcu, stop_process
from media_checks import cell_colours, contains_colour, tone_levels

from client.peer import Peer, PeerError
from client.sources import COLORS, ColorTrack, ToneTrack, rgb_to_yuv
from mcu.config import Config
from signaling import tokens
from signaling.grants import ALL_GRANTS

SECRET = "test-secret-that-is-long-enough-for-hs256!"


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


# --- signaling/tokens.py -------------------------------------------------------------------------


def test_issue_and_verify() -> None:
    token = tokens.issue(SECRET, "room", "ana", 60, ["chat", "publish"])
    claims = tokens.verify(SECRET, token, "room")
    assert claims.token_id is not None
    assert claims == tokens.Claims(
        room="room", identity="ana", grants=frozenset({"chat", "publish"}), token_id=claims.token_id
    )
    # Each token has an id of its own: a ban of one (a kick) leaves a fresh one for the same identity valid.
    assert tokens.verify(SECRET, tokens.issue(SECRET, "room", "ana", 60, []), "room").token_id != claims.token_id


@pytest.mark.parametrize(
    ("token", "room", "words"),
    [
        (lambda: tokens.issue(SECRET, "room", "ana", 60, []), "other", "another room"),
        (lambda: tokens.issue("another-secret-that-is-also-long-enough!!", "room", "a", 60, []), "room", "signature"),
        (lambda: tokens.issue(SECRET, "room", "ana", 60, [], now=time.time() - 3600), "room", "expired"),
        (lambda: "not.a.token", "room", "not a valid"),
        (lambda: "x" * 5000, "room", "too long"),
        # alg=none: unsigned claims must never be taken at their word.
        (
            lambda: f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64({'room': 'room', 'sub': 'a', 'exp': 2**40})}.",
            "room",
            "not a valid",
        ),
        # Signed, but without an expiry: tokens must expire.
        (lambda: jwt.encode({"room": "room", "sub": "a"}, SECRET, algorithm="HS256"), "room", "not a valid"),
    ],
    ids=["wrong-room", "forged", "expired", "garbage", "huge", "alg-none", "no-expiry"],
)
def test_verify_refuses(token, room: str, words: str) -> None:
    with pytest.raises(tokens.TokenError, match=words):
        tokens.verify(SECRET, token(), room)


def test_any_room_token_and_unknown_grants() -> None:
    token = jwt.encode(
        {"room": tokens.ANY_ROOM, "sub": "ops", "exp": int(time.time()) + 60, "grants": ["moderate", "fly"]},
        SECRET,
        algorithm="HS256",
    )
    claims = tokens.verify(SECRET, token, "any-room")
    assert claims.grants == {"moderate"}
    with pytest.raises(ValueError, match="fly"):
        tokens.issue(SECRET, "room", "a", 60, ["fly"])


# --- joining a server that has a secret ----------------------------------------------------------


@pytest.fixture
def config() -> Config:
    return Config(width=640, height=360, fps=15, video_bitrate=600_000, secret=SECRET)


async def _join_error(server, join: dict) -> dict:
    async with aiohttp.ClientSession() as session, session.ws_connect(server.url) as ws:
        await ws.send_json(join)
        reply = await ws.receive_json(timeout=5)
        assert not server.conference.rooms  # refused before any room was made
        # The session goes on after the refusal: a good token then joins.
        good = tokens.issue(SECRET, join["room"], "retry", 60, ALL_GRANTS)
        await ws.send_json({**join, "token": good})
        assert (await ws.receive_json(timeout=5))["type"] == "joined"
        assert list(server.conference.rooms) == [join["room"]]
        return reply


@pytest.mark.parametrize(
    ("token", "words"),
    [
        (None, "needs a join token"),
        (tokens.issue("another-secret-that-is-also-long-enough!!", "r", "a", 3600, ALL_GRANTS), "signature"),
        (tokens.issue(SECRET, "r", "a", 60, ALL_GRANTS, now=time.time() - 3600), "expired"),
        (tokens.issue(SECRET, "elsewhere", "a", 3600, ALL_GRANTS), "another room"),
    ],
    ids=["missing", "forged", "expired", "wrong-room"],
)
async def test_join_without_a_valid_token_is_unauthorized(server, token: str | None, words: str) -> None:
    join = {"type": "join", "room": "r", "name": "Ana"}
    if token is not None:
        join["token"] = token
    reply = await _join_error(server, join)
    assert reply["type"] == "error" and reply["code"] == "unauthorized"
    assert words in reply["message"]


async def test_grants_come_from_the_token_and_chat_needs_its_grant(server) -> None:
    speaker = Peer(
        server.url,
        "g",
        "Speaker",
        video=ColorTrack(COLORS["red"]),
        audio=ToneTrack(500),
        token=tokens.issue(SECRET, "g", "speaker", 60, ["publish", "subscribe", "chat"]),
    )
    viewer = Peer(
        server.url,
        "g",
        "Viewer",
        video=ColorTrack(COLORS["green"]),
        audio=ToneTrack(700),
        token=tokens.issue(SECRET, "g", "viewer", 60, ["publish", "subscribe"]),
    )
    try:
        await speaker.join()
        await viewer.join()
        participants = server.conference.rooms["g"].participants
        assert participants[viewer.peer_id].grants == {"publish", "subscribe"}
        assert participants[speaker.peer_id].grants == {"publish", "subscribe", "chat"}
        await viewer.chat("let me in")
        await viewer.wait_for(lambda: viewer.chat_errors, 10)
        assert viewer.chat_errors[0].code == "forbidden"
        await speaker.chat("hello")
        await viewer.wait_for(lambda: any(m.text == "hello" for m in viewer.chat_messages), 10)
        assert not any(m.text == "let me in" for m in viewer.chat_messages + speaker.chat_messages)
    finally:
        await asyncio.gather(speaker.close(), viewer.close())


async def test_a_peer_without_a_token_cannot_join(server) -> None:
    peer = Peer(server.url, "r", "Nobody", video=ColorTrack(COLORS["red"]), audio=ToneTrack(500))
    try:
        with pytest.raises(PeerError, match="needs a join token"):
            await peer.join(timeout=5)
        assert [e.code for e in peer.errors] == ["unauthorized"]
    finally:
        await peer.close()


# --- the HTTP API with a secret ------------------------------------------------------------------


async def _get(server, path: str, token: str | None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{server.port}{path}", headers=headers) as reply:
            return reply.status, await reply.json()


async def test_http_api_needs_a_token_with_the_grant(server) -> None:
    peer = Peer(
        server.url,
        "api",
        "Ana",
        video=ColorTrack(COLORS["red"]),
        audio=ToneTrack(500),
        token=tokens.issue(SECRET, "api", "ana", 60, ["publish", "subscribe"]),
    )
    try:
        await peer.join()
        status, body = await _get(server, "/api/rooms", None)
        assert (status, body["code"]) == (401, "unauthorized")
        status, body = await _get(server, "/api/rooms", "forged")
        assert (status, body["code"]) == (401, "unauthorized")
        room_moderator = tokens.issue(SECRET, "api", "mod", 60, ["moderate"])
        status, body = await _get(server, "/api/rooms", room_moderator)
        assert (status, body["code"]) == (403, "forbidden")  # listing every room needs room "*"
        status, body = await _get(server, "/api/rooms/api", room_moderator)
        assert status == 200 and [p["name"] for p in body["participants"]] == ["Ana"]
        status, body = await _get(server, "/api/rooms/api", tokens.issue(SECRET, "api", "x", 60, ["chat"]))
        assert (status, body["code"]) == (403, "forbidden")
        # A token for one room says nothing about whether another exists.
        status, body = await _get(server, "/api/rooms/secret-room", room_moderator)
        assert (status, body["code"]) == (401, "unauthorized")
        operator = tokens.issue(SECRET, tokens.ANY_ROOM, "ops", 60, ["moderate"])
        status, body = await _get(server, "/api/rooms", operator)
        assert status == 200 and [r["room"] for r in body["rooms"]] == ["api"]
        status, body = await _get(server, "/api/rooms/nowhere", operator)
        assert (status, body["code"]) == (404, "room_not_found")
    finally:
        await peer.close()


# --- the command line ----------------------------------------------------------------------------


def test_mcu_token_issues_what_the_server_accepts() -> None:
    result = subprocess.run(
        [
            BIN / "mcu",
            "token",
            "--room",
            "r",
            "--identity",
            "ana",
            "--ttl",
            "2h",
            "--grant",
            "chat,layout",
            "--grant",
            "record",
        ],
        env={"MCU_SECRET": SECRET, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    claims = tokens.verify(SECRET, result.stdout.strip(), "r")
    assert claims.identity == "ana" and claims.grants == {"chat", "layout", "record"}
    expiry = jwt.decode(result.stdout.strip(), SECRET, algorithms=["HS256"])["exp"]
    assert abs(expiry - time.time() - 7200) < 60
    default = subprocess.run(
        [BIN / "mcu", "token", "--room", "r", "--identity", "bo", "--secret", SECRET],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert tokens.verify(SECRET, default.stdout.strip(), "r").grants == {"publish", "subscribe", "chat"}
    refused = subprocess.run(
        [BIN / "mcu", "token", "--room", "r", "--identity", "bo", "--secret", SECRET, "--grant", "fly"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode == 2 and "fly" in refused.stderr


def test_no_secret_means_loopback_only_unless_asked() -> None:
    refused = subprocess.run(
        [BIN / "mcu", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode == 2 and "--secret" in refused.stderr and "--allow-anonymous" in refused.stderr


async def test_secrets_and_tokens_stay_out_of_the_logs() -> None:
    port = free_port()
    process = start_mcu(
        port,
        "--size",
        "320x180",
        "--fps",
        "10",
        "--log-level",
        "DEBUG",
        env={"MCU_SECRET": SECRET, "PATH": "/usr/bin:/bin"},
    )
    token = tokens.issue(SECRET, "logs", "ana", 60, ALL_GRANTS)
    try:
        # The invitation link a browser opens, and an API call with the token in its header.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/?room=logs&name=Ana&token={token}", timeout=5):
            pass
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/rooms/logs", headers={"Authorization": f"Bearer {token}"}
        )
        with pytest.raises(urllib.error.HTTPError):  # no such room yet: 404, after authorizing
            urllib.request.urlopen(request, timeout=5)
        peer = Peer(
            f"ws://127.0.0.1:{port}/ws",
            "logs",
            "Ana",
            video=ColorTrack(COLORS["red"]),
            audio=ToneTrack(500),
            token=token,
        )
        try:
            await peer.join()
            await peer.wait_for(lambda: peer.video_frames > 0, 15)
        finally:
            await peer.close()
    finally:
        stop_process(process, grace=10)
    output = process.communicate()[0]
    assert "serving on" in output and '"GET /"' in output  # the log is there...
    assert SECRET not in output and token not in output  # ...without what would let a reader in
    assert "no --secret" not in output


async def test_publish_and_subscribe_grants(server) -> None:
    """A viewer (no `publish`) has no tile and no voice; a peer without `subscribe` receives nothing."""
    host = Peer(
        server.url,
        "ps",
        "Host",
        video=ColorTrack(COLORS["red"]),
        audio=ToneTrack(500),
        token=tokens.issue(SECRET, "ps", "host", 60, ["publish", "subscribe"]),
    )
    viewer = Peer(
        server.url,
        "ps",
        "Viewer",
        video=ColorTrack(COLORS["green"]),
        audio=ToneTrack(700),
        token=tokens.issue(SECRET, "ps", "viewer", 60, ["subscribe"]),
    )
    camera = Peer(
        server.url,
        "ps",
        "Camera",
        video=ColorTrack(COLORS["blue"]),
        audio=ToneTrack(1100),
        token=tokens.issue(SECRET, "ps", "camera", 60, ["publish"]),
    )
    peers = [host, viewer, camera]
    try:
        for peer in peers:
            await peer.join()
        await host.wait_for(lambda: host.video_frames > 30 and viewer.video_frames > 30, 20)
        await asyncio.sleep(2)
        # Two publishers, two tiles: the viewer's green is nowhere; the host hears the camera, not the viewer.
        for watcher in (host, viewer):
            colours = cell_colours(watcher.video_frame, 2)
            assert contains_colour(colours, rgb_to_yuv(COLORS["red"]))
            assert contains_colour(colours, rgb_to_yuv(COLORS["blue"]))
            assert not contains_colour(cell_colours(watcher.video_frame, 4), rgb_to_yuv(COLORS["green"]))
        levels = tone_levels(host.audio(1.0), [700, 1100])
        assert levels[1100] - levels[700] >= 30, levels
        # The camera sends but receives nothing at all.
        assert camera.video_frames == 0 and camera.audio_frames == 0
        # And a viewer may not turn its camera on.
        await viewer.set_media(video=True, audio=True)
        await viewer.wait_for(lambda: viewer.errors, 5)
        assert viewer.errors[-1].code == "forbidden"
    finally:
        await asyncio.gather(*(peer.close() for peer in peers))


async def test_recording_needs_its_grant(server, tmp_path) -> None:
    server.conference.config.record_dir = str(tmp_path)
    guest = Peer(
        server.url,
        "rec",
        "Guest",
        video=ColorTrack(COLORS["red"]),
        audio=ToneTrack(500),
        token=tokens.issue(SECRET, "rec", "guest", 60, ["publish", "subscribe"]),
    )
    host = Peer(
        server.url,
        "rec",
        "Host",
        video=ColorTrack(COLORS["green"]),
        audio=ToneTrack(700),
        token=tokens.issue(SECRET, "rec", "host", 60, ["publish", "subscribe", "record"]),
    )
    try:
        await guest.join()
        await host.join()
        await guest.send({"type": "startRecording"})
        await guest.wait_for(lambda: guest.errors, 5)
        assert guest.errors[-1].code == "forbidden"
        assert server.conference.rooms["rec"].recording is None and not list(tmp_path.iterdir())
        await host.send({"type": "startRecording"})
        await host.wait_for(lambda: any(e["type"] == "recordingStarted" for e in guest.events), 5)
        await guest.send({"type": "stopRecording"})
        await guest.wait_for(lambda: len(guest.errors) == 2, 5)
        assert guest.errors[-1].code == "forbidden" and server.conference.rooms["rec"].recording is not None
    finally:
        await asyncio.gather(host.close(), guest.close())
