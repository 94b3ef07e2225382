"""A moderator removes a participant: it is told and hung up on, the room goes on, its token stays out a while."""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import pytest
from conftest import within

from client.peer import Peer, PeerError
from client.sources import ColorTrack
from mcu.config import Config
from mcu.rooms import bans as bans_module
from mcu.rooms.bans import Bans, ban_key
from signaling import tokens
from signaling.grants import ALL_GRANTS

SECRET = "test-secret-that-is-long-enough-for-hs256!"
#: Short, so that a test sees a ban end; long enough that a rejoin right after the kick is refused.
KICK_BAN = 3.0
ROOM = "kick"


@pytest.fixture
def config() -> Config:
    return Config(width=320, height=180, fps=15, video_bitrate=300_000, secret=SECRET, kick_ban_seconds=KICK_BAN)


def token(identity: str, grants=("publish", "subscribe", "chat"), room: str = ROOM) -> str:
    return tokens.issue(SECRET, room, identity, 600, grants)


def peer(server, name: str, token: str, color=(200, 40, 40)) -> Peer:
    return Peer(server.url, ROOM, name, video=ColorTrack(color, 160, 120), token=token, chat=False)


def left_events(peer: Peer) -> list[dict]:
    return [e for e in peer.events if e["type"] == "participantLeft"]


async def assert_removed(server, kicked: Peer, others: list[Peer], reason_words: str | None = None) -> None:
    """`kicked` got `kicked` and lost its socket; each of `others` heard it leave, kicked; the composite goes on."""
    await kicked.wait_for(lambda: any(e.code == "kicked" for e in kicked.errors), 5)
    error = next(e for e in kicked.errors if e.code == "kicked")
    if reason_words is not None:
        assert reason_words in error.message
    assert kicked._ws is not None
    await kicked.wait_for(lambda: kicked._ws.closed, 5)  # type: ignore[union-attr]
    assert kicked.peer_id not in server.conference.rooms[ROOM].participants
    for other in others:
        await other.wait_for(lambda: any(e["peerId"] == kicked.peer_id for e in left_events(other)), 5)  # noqa: B023
        assert {"type": "participantLeft", "peerId": kicked.peer_id, "reason": "kicked"} in left_events(other)
        assert kicked.peer_id not in other.participants
    frames = [other.video_frames for other in others]
    await within(5, lambda: all(o.video_frames > f + 10 for o, f in zip(others, frames)))


async def rejoin_refused(server, token: str) -> str:
    again = peer(server, "again", token)
    try:
        with pytest.raises(PeerError):
            await again.join(timeout=5)
        assert again.errors[-1].code == "banned"
        return again.errors[-1].message
    finally:
        await again.close()


async def test_kick_message_removes_a_peer_and_keeps_its_token_out(server) -> None:
    mod = peer(server, "mod", token("mod", ALL_GRANTS), (40, 200, 40))
    bo_token = token("bo")
    bo = peer(server, "bo", bo_token)
    cy = peer(server, "cy", token("cy"), (40, 40, 200))
    peers = [mod, bo, cy]
    try:
        for p in peers:
            await p.join()
        await within(15, lambda: all(p.video_frames > 5 for p in peers))

        await mod.kick(bo.peer_id, "Spam in the chat.")
        await assert_removed(server, bo, [mod, cy], "Spam in the chat.")

        # The same token is kept out, saying for how long; a fresh token for the same identity joins.
        assert re.search(r"join again in [1-3] s\.", await rejoin_refused(server, bo_token))
        fresh = peer(server, "bo again", token("bo"))
        peers.append(fresh)
        await fresh.join(timeout=5)
        assert fresh.peer_id in server.conference.rooms[ROOM].participants

        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{server.port}/metrics") as response:
                metrics = await response.text()
        assert "mcu_kicks_total 1.0" in metrics and "mcu_bans 1.0" in metrics
    finally:
        await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)


async def test_kick_over_http_and_the_ban_ends(server) -> None:
    watcher = peer(server, "watcher", token("watcher"), (40, 200, 40))
    bo_token = token("bo")
    bo = peer(server, "bo", bo_token)
    peers = [watcher, bo]
    url = f"http://127.0.0.1:{server.port}/api/rooms/{ROOM}/participants"
    try:
        for p in peers:
            await p.join()
        await within(15, lambda: watcher.video_frames > 5)
        operator = {"Authorization": f"Bearer {token('ops', ['moderate'], room='*')}"}
        viewer = {"Authorization": f"Bearer {token('viewer', ['subscribe'])}"}
        async with aiohttp.ClientSession() as http:
            async with http.delete(f"{url}/{bo.peer_id}", headers=viewer) as response:
                assert response.status == 403 and (await response.json())["code"] == "forbidden"
            async with http.delete(f"{url}/nobody", headers=operator) as response:
                assert response.status == 404 and (await response.json())["code"] == "unknown_peer"
            async with http.delete(f"{url}/{bo.peer_id}", headers=operator, json={"reason": 5}) as response:
                assert response.status == 400 and (await response.json())["code"] == "invalid_message"
            kicked_at = time.monotonic()
            async with http.delete(f"{url}/{bo.peer_id}", headers=operator, json={"reason": "Bye."}) as response:
                assert response.status == 200
                assert await response.json() == {"room": ROOM, "peerId": bo.peer_id, "bannedSeconds": KICK_BAN}
        await assert_removed(server, bo, [watcher], "Bye.")

        await rejoin_refused(server, bo_token)
        # Once the ban has run out, the same token joins again.
        await asyncio.sleep(max(0.0, kicked_at + KICK_BAN + 0.2 - time.monotonic()))
        back = peer(server, "bo back", bo_token)
        peers.append(back)
        await back.join(timeout=5)
        assert len(server.conference.bans) == 0
    finally:
        await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)


async def test_kick_refusals(server) -> None:
    mod = peer(server, "mod", token("mod", ALL_GRANTS))
    bo = peer(server, "bo", token("bo"))
    peers = [mod, bo]
    try:
        for p in peers:
            await p.join()
        cases = [
            (mod, {"peerId": "nobody"}, "unknown_peer"),
            (mod, {"peerId": mod.peer_id}, "invalid_message"),  # to leave, a moderator sends leave
            (mod, {}, "invalid_message"),
            (bo, {"peerId": mod.peer_id}, "forbidden"),  # bo's token has no moderate grant
        ]
        for sender, fields, code in cases:
            count = len(sender.errors)
            await sender.send({"type": "kick", **fields})
            await sender.wait_for(lambda: len(sender.errors) > count, 5)  # noqa: B023
            assert sender.errors[-1].code == code, (fields, sender.errors[-1])
        assert set(server.conference.rooms[ROOM].participants) == {mod.peer_id, bo.peer_id}
        assert server.conference.kicks == 0 and not left_events(mod)
    finally:
        await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)


async def test_leaving_and_vanishing_say_so(server) -> None:
    mod = peer(server, "mod", token("mod"))
    bo = peer(server, "bo", token("bo"))
    cy = peer(server, "cy", token("cy"))
    try:
        for p in (mod, bo, cy):
            await p.join()
        await bo.close()  # sends leave
        assert cy._ws is not None
        await cy._ws.close()  # the socket just closes
        await mod.wait_for(lambda: len(left_events(mod)) == 2, 5)
        reasons = {e["peerId"]: e["reason"] for e in left_events(mod)}
        assert reasons == {bo.peer_id: "left", cy.peer_id: "disconnected"}
    finally:
        await asyncio.gather(mod.close(), bo.close(), cy.close(), return_exceptions=True)


def test_bans_expire_and_stay_bounded(monkeypatch) -> None:
    now = [100.0]
    bans = Bans(5.0, clock=lambda: now[0])
    bans.ban("a")
    now[0] += 2
    bans.ban("b")
    assert bans.remaining("a") == 3.0 and bans.remaining("b") == 5.0 and bans.remaining("c") == 0.0
    now[0] += 3
    assert bans.remaining("a") == 0.0 and len(bans) == 1
    monkeypatch.setattr(bans_module, "MAX_BANS", 3)
    for key in "cdef":
        bans.ban(key)
    assert len(bans) == 3 and bans.remaining("b") == 0.0 and bans.remaining("c") == 0.0
    # No ban time: a kick only disconnects.
    none = Bans(0.0)
    none.ban("a")
    assert none.remaining("a") == 0.0


def test_what_a_ban_is_keyed_by() -> None:
    with_id = tokens.Claims("r", "bo", frozenset(), token_id="j1")
    without = tokens.Claims("r", "bo", frozenset())
    assert ban_key("r", with_id) != ban_key("r", tokens.Claims("r", "bo", frozenset(), token_id="j2"))
    assert ban_key("r", without) == ban_key("r", tokens.Claims("r", "bo", frozenset({"chat"})))
    assert ban_key("r", without) != ban_key("s", without)
    assert ban_key("r", None) is None  # no secret: no identity to ban


async def test_kick_through_a_front_of_workers() -> None:
    """`mcu serve --workers 2`: the front relays the kick and the removed peer's socket closing; without a
    secret there is no ban, and the same peer may join again at once."""
    from conftest import free_port, start_mcu, stop_process

    port = free_port()
    front = start_mcu(port, "--workers", "2", "--size", "320x180", "--fps", "15")
    url = f"ws://127.0.0.1:{port}/ws"
    mod = Peer(url, ROOM, "mod", video=ColorTrack((40, 200, 40), 160, 120), chat=False)
    bo = Peer(url, ROOM, "bo", video=ColorTrack((200, 40, 40), 160, 120), chat=False)
    again = Peer(url, ROOM, "bo", chat=False)
    try:
        await mod.join()
        await bo.join()
        await mod.kick(bo.peer_id)
        await bo.wait_for(lambda: any(e.code == "kicked" for e in bo.errors), 5)
        await bo.wait_for(lambda: bo._ws is not None and bo._ws.closed, 5)
        gone = {"type": "participantLeft", "peerId": bo.peer_id, "reason": "kicked"}
        await mod.wait_for(lambda: gone in mod.events, 5)
        await again.join(timeout=10)
        async with aiohttp.ClientSession() as http:
            target = f"http://127.0.0.1:{port}/api/rooms/{ROOM}/participants/{again.peer_id}"
            async with http.delete(target) as response:
                assert response.status == 200
                assert await response.json() == {"room": ROOM, "peerId": again.peer_id, "bannedSeconds": 0}
        await again.wait_for(lambda: any(e.code == "kicked" for e in again.errors), 5)
    finally:
        await asyncio.gather(mod.close(), bo.close(), again.close(), return_exceptions=True)
        stop_process(front, grace=10)
