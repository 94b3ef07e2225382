"""Chat over data channels (docs/protocol.md, "Chat (data channel)"): the rules, then real peers."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from client.peer import Peer
from mcu.rooms.chat_relay import CHAT_BUFFER_LIMIT, ChatRelay
from signaling.chat import (
    CHAT_BURST,
    CHAT_RATE,
    CHAT_RATE_LIMITED,
    CHAT_TOO_LARGE,
    INVALID_CHAT,
    MAX_CHAT_BYTES,
    TokenBucket,
    parse_chat,
)
from signaling.grants import ALL_GRANTS
from signaling.protocol import ProtocolError


def message(text: object) -> str:
    return json.dumps({"type": "chat", "text": text}, ensure_ascii=False)


# The parser -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["hi", "Zoë 👋", "two\nlines", "a\ttab", " padded ", "x" * (MAX_CHAT_BYTES - len(message("")))]
)
def test_parse_accepts_text(text):
    assert parse_chat(message(text)) == text


def test_parse_ignores_unknown_fields():
    assert parse_chat('{"type": "chat", "text": "hi", "future": 1}') == "hi"


def test_the_limit_is_on_the_whole_message_in_utf8_bytes():
    fits = message("x" * (MAX_CHAT_BYTES - len(message(""))))
    assert len(fits.encode()) == MAX_CHAT_BYTES
    with pytest.raises(ProtocolError) as raised:
        parse_chat(message("x" * (MAX_CHAT_BYTES - len(message("")) + 1)))
    assert raised.value.code == CHAT_TOO_LARGE
    # Two bytes per "é": fewer characters than the limit, more bytes.
    with pytest.raises(ProtocolError) as raised:
        parse_chat(message("é" * (MAX_CHAT_BYTES // 2)))
    assert raised.value.code == CHAT_TOO_LARGE
    with pytest.raises(ProtocolError) as raised:
        parse_chat(b"x" * (MAX_CHAT_BYTES + 1))
    assert raised.value.code == CHAT_TOO_LARGE


@pytest.mark.parametrize(
    "data",
    [
        "not json",
        "",
        "NaN",
        "[" * 8000 + "]" * 8000,
        '["chat"]',
        '{"text": "no type"}',
        '{"type": "join", "text": "hi"}',
        '{"type": "chat"}',
        '{"type": "chat", "text": 5}',
        '{"type": "chat", "text": null}',
        message(""),
        message(" \n\t"),
        message("carriage\rreturn"),
        message("escape \x1b[2J"),
        message("c1 \x85"),
        '{"type": "chat", "text": "lone \\ud800"}',
        b'{"type": "chat", "text": "binary"}',
    ],
)
def test_parse_refuses_what_is_not_a_chat_message(data):
    with pytest.raises(ProtocolError) as raised:
        parse_chat(data)
    assert raised.value.code == INVALID_CHAT


def test_limits_and_codes_are_the_documented_ones():
    doc = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    assert (MAX_CHAT_BYTES, CHAT_RATE, CHAT_BURST) == (16384, 5, 10)
    for code in (CHAT_RATE_LIMITED, CHAT_TOO_LARGE, INVALID_CHAT):
        assert f"| `{code}`" in doc


# The bucket -----------------------------------------------------------------------------------


def test_bucket_allows_a_burst_then_the_rate():
    bucket = TokenBucket(rate=5, burst=10, now=100.0)
    assert [bucket.take(100.0) for _ in range(12)] == [True] * 10 + [False] * 2
    assert not bucket.take(100.1)  # half a token
    assert bucket.take(100.2)
    assert not bucket.take(100.2)
    # A long pause refills to the burst, not beyond.
    assert sum(bucket.take(1000.0) for _ in range(20)) == 10


def test_bucket_ignores_a_clock_going_back():
    bucket = TokenBucket(rate=5, burst=1, now=10.0)
    assert bucket.take(10.0)
    assert not bucket.take(5.0)


# The relay ------------------------------------------------------------------------------------


class FakeChannel:
    def __init__(self, state: str = "open", buffered: int = 0, max_bytes: int = 65536) -> None:
        self.readyState = state
        self.bufferedAmount = buffered
        self.max_bytes = max_bytes
        self.sent: list[dict] = []

    def send(self, data: str) -> None:
        if len(data.encode()) > self.max_bytes:
            raise ValueError("the remote party supports smaller messages only")
        self.sent.append(json.loads(data))


def test_relay_skips_slow_and_unopened_channels_without_waiting():
    fast, slow, small, opening = (
        SimpleNamespace(peer_id=n, name=n, chat_channel=c, grants=ALL_GRANTS)
        for n, c in [
            ("fast", FakeChannel()),
            ("slow", FakeChannel(buffered=CHAT_BUFFER_LIMIT + 1)),
            ("small", FakeChannel(max_bytes=16)),  # its SDP's max-message-size
            ("new", FakeChannel(state="connecting")),
        ]
    )
    absent = SimpleNamespace(peer_id="absent", name="absent", chat_channel=None, grants=ALL_GRANTS)  # no channel yet
    relay = ChatRelay("room", {p.peer_id: p for p in (small, slow, absent, fast, opening)})
    relay.receive(fast, message("hi"))
    assert [m["text"] for m in fast.chat_channel.sent] == ["hi"]
    assert slow.chat_channel.sent == small.chat_channel.sent == opening.chat_channel.sent == []
    assert (relay.stats.relayed, relay.stats.dropped) == (1, 2)
    # A peer that has left the room is not heard any more.
    gone = SimpleNamespace(peer_id="gone", name="gone", chat_channel=FakeChannel(), grants=ALL_GRANTS)
    relay.receive(gone, message("still?"))
    assert gone.chat_channel.sent == [] and relay.stats.relayed == 1


# Real peers through the real server -----------------------------------------------------------


def make_peer(server, name: str, room: str = "chat") -> Peer:
    # No decoding: these peers only talk.
    return Peer(server.url, room, name, decode=False)


async def start(peers: list[Peer]) -> None:
    await asyncio.gather(*(p.join() for p in peers))
    # The server keeps a peer's channel before the peer sees it open.
    await asyncio.gather(*(p.wait_for(lambda p=p: p.chat_channel.readyState == "open", 10) for p in peers))


async def close_all(peers: list[Peer]) -> None:
    await asyncio.gather(*(peer.close() for peer in peers), return_exceptions=True)


def texts(peer: Peer) -> list[str]:
    return [m.text for m in peer.chat_messages]


async def test_a_message_reaches_every_peer_of_the_room_once(server):
    alice, bob, carol = peers = [make_peer(server, n) for n in ("alice", "bob", "carol")]
    elsewhere = make_peer(server, "dave", room="other")
    try:
        await start(peers + [elsewhere])
        await alice.chat("hello, Zoë 👋")
        await alice.wait_for(lambda: all(p.chat_messages for p in peers), timeout=5)
        await asyncio.sleep(0.3)  # anything extra would have come by now
        for peer in peers:
            # The sender gets its own message back too, as the room saw it.
            assert len(peer.chat_messages) == 1, (peer.name, peer.chat_messages)
            received = peer.chat_messages[0]
            assert received.sender == alice.peer_id
            assert received.name == "alice"
            assert received.text == "hello, Zoë 👋"
            assert abs(received.timestamp - time.time() * 1000) < 5000
        assert elsewhere.chat_messages == []
        assert not any(p.chat_errors for p in peers)
        assert server.conference.rooms["chat"].stats()["chatRelayed"] == 1
    finally:
        await close_all(peers + [elsewhere])


async def test_every_peer_sees_the_same_order(server):
    alice, bob = peers = [make_peer(server, n) for n in ("alice", "bob")]
    try:
        await start(peers)
        for i in range(3):
            await alice.chat(f"a{i}")
            await bob.chat(f"b{i}")
        await alice.wait_for(lambda: all(len(p.chat_messages) == 6 for p in peers), timeout=5)
        assert texts(alice) == texts(bob)
        assert [t for t in texts(alice) if t.startswith("a")] == ["a0", "a1", "a2"]
    finally:
        await close_all(peers)


async def test_a_message_too_large_is_refused_and_not_relayed(server):
    alice, bob = peers = [make_peer(server, n) for n in ("alice", "bob")]
    try:
        await start(peers)
        await alice.chat("x" * MAX_CHAT_BYTES)
        await alice.wait_for(lambda: alice.chat_errors, timeout=5)
        assert [e.code for e in alice.chat_errors] == [CHAT_TOO_LARGE]
        # The channel goes on, and nothing of the refused message arrived before this one.
        await alice.chat("after")
        await alice.wait_for(lambda: all(texts(p) == ["after"] for p in peers), timeout=5)
    finally:
        await close_all(peers)


async def test_a_burst_over_the_rate_limit_is_refused_for_the_excess(server):
    alice, bob = peers = [make_peer(server, n) for n in ("alice", "bob")]
    sent = [f"m{i}" for i in range(2 * CHAT_BURST)]
    try:
        await start(peers)
        for text in sent:
            await alice.chat(text)
        await alice.wait_for(lambda: len(alice.chat_messages) + len(alice.chat_errors) == len(sent), timeout=5)
        relayed = texts(alice)
        # The burst, and at most what the rate refilled while the burst arrived.
        assert CHAT_BURST <= len(relayed) <= CHAT_BURST + 2, relayed
        assert relayed[:CHAT_BURST] == sent[:CHAT_BURST]
        assert {e.code for e in alice.chat_errors} == {CHAT_RATE_LIMITED}
        assert len(alice.chat_errors) == len(sent) - len(relayed)
        await bob.wait_for(lambda: len(bob.chat_messages) == len(relayed), timeout=5)
        await asyncio.sleep(0.3)
        assert texts(bob) == relayed
        # Once a token is back, the next message goes through.
        await asyncio.sleep(1.5 / CHAT_RATE)
        await alice.chat("later")
        await bob.wait_for(lambda: texts(bob)[-1:] == ["later"], timeout=5)
    finally:
        await close_all(peers)


async def test_malformed_messages_are_refused_and_the_channel_goes_on(server):
    alice, bob = peers = [make_peer(server, n) for n in ("alice", "bob")]
    try:
        await start(peers)
        alice.chat_channel.send("{not json")
        alice.chat_channel.send(b"\x00binary")
        alice.chat_channel.send('{"type": "chat", "text": ""}')
        await alice.wait_for(lambda: len(alice.chat_errors) == 3, timeout=5)
        assert [e.code for e in alice.chat_errors] == [INVALID_CHAT] * 3
        assert all(e.message for e in alice.chat_errors)
        await alice.chat("still here")
        await bob.wait_for(lambda: bob.chat_messages, timeout=5)
        assert texts(bob) == ["still here"] and not bob.chat_errors
        assert server.conference.rooms["chat"].stats()["chatRefused"] == 3
    finally:
        await close_all(peers)
