"""Signaling fuzz: thousands of malformed messages against a live room of two media peers.

Hypothesis draws batches of messages that are malformed by construction (random
JSON, wrong types, huge strings, binary frames, deep nesting, known types with
broken fields); each is sent on a joined and on a not-yet-joined connection.
What the server must answer is worked out here from the protocol itself, so a
wrong code fails as surely as a missing reply. The batches are drawn before the
room starts; the two media peers and the two fuzz connections then live on an
event loop in a background thread, the server in its own process, as in production.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
from conftest import free_port, stop_process
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.peer import Peer
from client.sources import COLORS, ColorTrack, ToneTrack
from compositor.layout import LayoutError, parse_layout
from signaling import protocol
from signaling.limits import Limits
from signaling.protocol import Join, ModerateAudio, ProtocolError, SetLayout

BIN = Path(sys.executable).parent
ROOM = "fuzz"
#: Generous limits: every message is answered on its merits, none is rate limited
#: (tests/test_signaling_errors.py shows the default limits against a flood).
FUZZ_LIMITS = Limits(messages_per_second=10_000, message_burst=20_000, join_timeout=600)
#: At least this many malformed messages are sent in the run.
MESSAGES = 2_000
#: What the two media peers get through the fuzz: this share of their rate before it.
FPS_KEPT = 0.9
#: Events the room may send a joined connection between its error replies.
BROADCASTS = {
    "participantJoined",
    "participantLeft",
    "participantMedia",
    "participantAudio",
    "speaking",
    "activeSpeaker",
    "layoutChanged",
    "recordingStarted",
    "recordingStopped",
    "chat",
    "visibility",
}


# --- strategies: each yields a payload (str or bytes) that is wrong somehow ----------------------------------

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
TYPES = ["join", "offer", "candidate", "leave", "setMedia", "moderateAudio", "setLayout"]
#: Values of the wrong type for a field that wants a string, a bool, an object...
WRONG_FOR = {
    str: st.integers() | st.booleans() | st.lists(JSON_SCALARS, max_size=3) | st.floats(allow_nan=False),
    bool: st.integers() | st.text(max_size=5) | st.lists(JSON_SCALARS, max_size=3),
    dict: st.integers() | st.text(max_size=20) | st.booleans() | st.lists(JSON_SCALARS, max_size=3),
    int: st.text(max_size=5) | st.booleans() | st.floats(allow_nan=False, allow_infinity=False, min_value=0.5),
}
GOOD_FIELDS: dict[str, dict[str, tuple[type, Any]]] = {
    "join": {"room": (str, ROOM), "name": (str, "mallory"), "token": (str, "t"), "hideSelf": (bool, False)},
    "offer": {"sdp": (str, "v=0\r\nm=audio 9 x\r\nm=video 9 x\r\n")},
    "setMedia": {"video": (bool, True), "audio": (bool, True)},
    "moderateAudio": {"peerId": (str, "p1"), "muted": (bool, True)},
    "candidate": {"candidate": (dict, {"candidate": "", "sdpMid": "0"})},
}
BAD_NAMES = st.sampled_from(["", "   ", "a\x00b", "tab\there", "\x7f", "\ud800", "x" * 65, "\u0085"])
BAD_ROOMS = st.sampled_from(["", "bad room", "r" * 65, "é", "a/b", "../etc", "\ud800"]) | st.text(
    alphabet="!@#$%^&*() /.", min_size=1, max_size=10
)
BAD_CANDIDATES = st.sampled_from(
    ["x", "candidate:", "candidate:1 1 udp", "candidate:1 1 udp 1 1.2.3.4 99999999 typ host", "candidate:!! 1 udp"]
) | st.text(min_size=1, max_size=40).map(lambda s: "candidate:" + s)


def _dumps(obj: Any) -> str:
    return json.dumps(obj)


@st.composite
def wrong_type_field(draw) -> str:
    """A known message type with its fields right but one, which has the wrong JSON type or is missing."""
    kind = draw(st.sampled_from(sorted(GOOD_FIELDS)))
    fields = {key: value for key, (_, value) in GOOD_FIELDS[kind].items()}
    key = draw(st.sampled_from(sorted(fields)))
    if draw(st.booleans()):
        del fields[key]
    else:
        fields[key] = draw(WRONG_FOR[GOOD_FIELDS[kind][key][0]])
    return _dumps({"type": kind, **fields})


@st.composite
def broken_field(draw) -> str:
    """A known message type with well-typed but invalid contents."""
    choice = draw(st.integers(0, 6))
    if choice == 0:
        return _dumps({"type": "join", "room": draw(BAD_ROOMS), "name": "mallory"})
    if choice == 1:
        return _dumps({"type": "join", "room": ROOM, "name": draw(BAD_NAMES)})
    if choice == 2:
        sdp = draw(st.text(max_size=60) | st.just("v=0\r\nm=audio 9 x\r\n") | st.just("v=0\r\nm=video 9 x\r\n"))
        return _dumps({"type": "offer", "sdp": sdp})
    if choice == 3:
        init = {"candidate": draw(BAD_CANDIDATES), "sdpMid": "0"}
        if draw(st.booleans()):
            init = {"candidate": "", "sdpMLineIndex": draw(st.integers(65536, 2**40) | st.integers(max_value=-1))}
        return _dumps({"type": "candidate", "candidate": init})
    if choice == 4:
        volume = draw(st.floats(min_value=2.0001, max_value=1e9) | st.floats(max_value=-0.0001, min_value=-1e9))
        return _dumps({"type": "moderateAudio", "peerId": "p1", "volume": volume})
    if choice == 5:
        return _dumps({"type": "moderateAudio", "peerId": draw(st.text(max_size=20))})
    layout = draw(
        st.text(max_size=20)
        | st.fixed_dictionaries({"regions": st.lists(JSON_VALUES, max_size=3)})
        | st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=3)
        | st.fixed_dictionaries(
            {
                "regions": st.lists(
                    st.fixed_dictionaries(
                        {
                            "x": st.floats(-2, 2),
                            "y": st.floats(-2, 2),
                            "width": st.floats(-2, 2),
                            "height": st.floats(-2, 2),
                        }
                    ),
                    min_size=1,
                    max_size=3,
                )
            }
        )
    )
    return _dumps({"type": "setLayout", "layout": layout})


def deep_nesting(depth: int, inside: str) -> str:
    """JSON nested `depth` levels, optionally as the value of a field."""
    nested = "[" * depth + "]" * depth
    if inside == "bare":
        return nested
    if inside == "object":
        return '{"a":' * depth + "1" + "}" * depth
    return json.dumps({"type": inside, "room": "PLACEHOLDER", "name": "x"}).replace('"PLACEHOLDER"', nested)


HUGE = st.integers(protocol.MAX_MESSAGE_BYTES + 1, 3 * protocol.MAX_MESSAGE_BYTES)

MALFORMED = st.one_of(
    # Random JSON of any shape, objects with random or missing types among them.
    JSON_VALUES.map(_dumps),
    st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=4).map(_dumps),
    st.builds(
        lambda t, rest: _dumps({"type": t, **rest}),
        JSON_VALUES,
        st.dictionaries(st.text(max_size=8), JSON_SCALARS, max_size=3),
    ),
    st.builds(lambda t: _dumps({"type": t}), st.text(max_size=20).filter(lambda t: t not in protocol_types())),
    # Text that is not JSON at all, JSON's forbidden constants, truncated messages.
    st.text(max_size=200),
    st.sampled_from(["NaN", '{"type": NaN}', "Infinity", '{"type": "join"', "{", "", "null", "1e999999"]),
    st.builds(lambda n: "9" * n, st.integers(4_400, 20_000)),  # an integer too long for Python to convert
    # Wrong types and broken fields in otherwise valid messages.
    wrong_type_field(),
    broken_field(),
    # Huge strings: a field, or the message, over the message size limit.
    st.builds(lambda n, t: _dumps({"type": t, "room": ROOM, "name": "x" * n}), HUGE, st.sampled_from(TYPES)),
    st.builds(lambda n: "x" * n, HUGE),
    # Binary frames, and deep nesting (beyond the JSON parser's recursion limit, and within it).
    st.binary(max_size=300),
    # Around Python's recursion limit (1 000) the parser's verdict depends on how deep the caller's stack
    # already is, in this process and the server's alike: the depths drawn stay clear of it.
    st.builds(
        deep_nesting,
        st.integers(10, 500) | st.integers(2 * sys.getrecursionlimit(), 30_000),
        st.sampled_from(["bare", "object", "join", "offer"]),
    ),
)


def protocol_types() -> set[str]:
    return {
        "join",
        "offer",
        "candidate",
        "leave",
        "setMedia",
        "moderateAudio",
        "startRecording",
        "stopRecording",
        "setLayout",
    }


def expected_code(payload: str | bytes, joined: bool, peer_ids: set[str]) -> str | None:
    """The error code the server must answer with, or None where the message may be valid there."""
    try:
        message = protocol.parse_client_message(payload, FUZZ_LIMITS.max_message_bytes)
    except ProtocolError as exc:
        return exc.code
    if isinstance(message, Join):
        return protocol.ALREADY_JOINED if joined else None
    if not joined:
        return protocol.NOT_JOINED
    if isinstance(message, SetLayout):
        try:
            parse_layout(message.layout)
        except LayoutError:
            return protocol.INVALID_LAYOUT
    if isinstance(message, ModerateAudio) and message.peer_id not in peer_ids:
        return protocol.PARTICIPANT_NOT_FOUND
    return None


# --- the live room: the server in its own process, the peers on an event loop of their own --------------------


def server_failures(log: str) -> list[str]:
    """ERROR and CRITICAL records of a `--log-format json` log, and any traceback printed outside the log."""
    failures = []
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            if "Traceback" in line or "Error" in line:
                failures.append(line)
            continue
        if isinstance(entry, dict) and entry.get("level") in ("ERROR", "CRITICAL"):
            failures.append(line)
    return failures


class LiveRoom:
    """`mcu serve`, two media peers and two raw fuzz connections.

    The server runs as its own process, as in production: Hypothesis's work in
    this process (and its garbage collections) must not be mistaken for the
    server's. The peers and the connections live on a background event loop.
    """

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.process = subprocess.Popen(
                [
                    BIN / "mcu",
                    "serve",
                    "--port",
                    str(self.port),
                    "--size",
                    "640x360",
                    "--fps",
                    "15",
                    "--video-bitrate",
                    "600000",
                    "--log-format",
                    "json",
                    "--max-messages-per-second",
                    str(FUZZ_LIMITS.messages_per_second),
                    "--join-timeout",
                    str(FUZZ_LIMITS.join_timeout),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-loop", daemon=True)
        self.thread.start()
        self.sent = 0
        self.skipped = 0
        self.readers: list[asyncio.Task] = []
        self.replies: dict[aiohttp.ClientWebSocketResponse, asyncio.Queue] = {}

    def run(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as response:
            return json.load(response)

    async def start(self) -> None:
        deadline = time.monotonic() + 20
        while True:
            try:
                await self.loop.run_in_executor(None, self.health)
                break
            except OSError:
                assert time.monotonic() < deadline and self.process.poll() is None, "mcu serve did not start"
                await asyncio.sleep(0.2)
        self.peers = [
            Peer(self.url, ROOM, "alice", video=ColorTrack(COLORS["red"]), audio=ToneTrack(440), decode=False),
            Peer(self.url, ROOM, "bob", video=ColorTrack(COLORS["blue"]), audio=ToneTrack(660), decode=False),
        ]
        for peer in self.peers:
            await peer.join()
        await self.peers[0].wait_for(lambda: all(p.video_frames > 15 for p in self.peers), timeout=20)
        self.session = aiohttp.ClientSession()
        self.joined_ws, _ = await self.connect()
        await self.joined_ws.send_str(json.dumps({"type": "join", "room": ROOM, "name": "mallory"}))
        reply = await self.next_reply(self.joined_ws)
        assert reply["type"] == "joined", reply
        self.fuzzer_id = reply["peerId"]
        self.lobby_ws, _ = await self.connect()

    async def stop(self) -> None:
        if hasattr(self, "session"):
            await self.session.close()
        await asyncio.gather(*self.readers, return_exceptions=True)
        await asyncio.gather(*(peer.close() for peer in getattr(self, "peers", [])), return_exceptions=True)

    def close(self) -> None:
        try:
            self.run(self.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
            stop_process(self.process)

    def frames(self) -> list[int]:
        """Frames each peer received, then frames the room composed."""
        return [peer.video_frames for peer in self.peers] + [self.health()["rooms"][ROOM]["videoFrames"]]

    async def connect(self) -> tuple[aiohttp.ClientWebSocketResponse, asyncio.Queue]:
        """A raw connection, read all the time (its pings answered) into a queue of replies."""
        ws = await self.session.ws_connect(self.url, max_msg_size=0)
        replies: asyncio.Queue = asyncio.Queue()

        async def read() -> None:
            async for msg in ws:
                replies.put_nowait(json.loads(msg.data) if msg.type == aiohttp.WSMsgType.TEXT else msg)
            replies.put_nowait(f"connection closed: {ws.close_code}")

        self.readers.append(asyncio.ensure_future(read()))
        self.replies[ws] = replies
        return ws, replies

    async def next_reply(self, ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
        """The next reply on `ws`, passing over the room's broadcasts."""
        while True:
            reply = await asyncio.wait_for(self.replies[ws].get(), 10)
            assert isinstance(reply, dict), reply
            if reply.get("type") not in BROADCASTS:
                return reply

    async def send_batch(self, payloads: list[str | bytes]) -> list[tuple[str | bytes, str, dict]]:
        """Send each payload (to the joined and the lobby connection in turn); return (payload, expected, reply)."""
        peer_ids = {peer.peer_id for peer in self.peers} | {self.fuzzer_id}
        plan: list[tuple[aiohttp.ClientWebSocketResponse, str | bytes, str]] = []
        for index, payload in enumerate(payloads):
            joined = index % 2 == 0
            code = expected_code(payload, joined, peer_ids)
            if code is None:
                self.skipped += 1
                continue
            ws = self.joined_ws if joined else self.lobby_ws
            plan.append((ws, payload, code))
            if isinstance(payload, bytes):
                await ws.send_bytes(payload)
            else:
                await ws.send_str(payload)
        results = [(payload, code, await self.next_reply(ws)) for ws, payload, code in plan]
        self.sent += len(plan)
        return results


def short(payload: str | bytes) -> str:
    return repr(payload[:120]) + (f"... ({len(payload)} long)" if len(payload) > 120 else "")


def draw_batches() -> list[list[str | bytes]]:
    """Batches of malformed messages, drawn up front: generating them while the room runs would make
    this process's garbage collections and GIL part of what is measured."""
    batches: list[list[str | bytes]] = []

    @settings(
        max_examples=30,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )
    @given(st.lists(MALFORMED, min_size=80, max_size=120))
    def draw(payloads: list[str | bytes]) -> None:
        batches.append(payloads)

    draw()
    return batches


def test_thousands_of_malformed_messages_get_their_errors_and_the_room_runs_on(tmp_path: Path):
    batches = draw_batches()
    live = LiveRoom(tmp_path / "server.log")
    try:
        live.run(live.start())
        # The peers' rate, and the room's, with nothing else going on.
        before, started = live.frames(), time.monotonic()
        time.sleep(3)
        fps_before = [(n - b) / (time.monotonic() - started) for n, b in zip(live.frames(), before)]

        during, started = live.frames(), time.monotonic()
        for payloads in batches:
            for payload, code, reply in live.run(live.send_batch(payloads)):
                assert reply["type"] == "error" and reply["code"] == code, (short(payload), code, reply)
                assert isinstance(reply["message"], str) and reply["message"], reply
            time.sleep(0.1)  # spread over seconds, so that the rate during it is measured over a fair span
        fps_during = [(n - d) / (time.monotonic() - started) for n, d in zip(live.frames(), during)]

        assert live.sent >= MESSAGES, (live.sent, live.skipped)
        for name, was, now in zip(["alice", "bob", "composite"], fps_before, fps_during):
            assert now >= FPS_KEPT * was, (name, fps_before, fps_during)
        assert not any(peer.errors for peer in live.peers), [peer.errors for peer in live.peers]
        # Nobody left: the room still holds both peers and the fuzzer, and the lobby connection can still join.
        assert live.health()["rooms"][ROOM]["peers"] == 3

        async def still_served() -> dict:
            await live.lobby_ws.send_str(json.dumps({"type": "join", "room": ROOM, "name": "late"}))
            return await live.next_reply(live.lobby_ws)

        assert live.run(still_served())["type"] == "joined"
        assert live.process.poll() is None
        assert not server_failures(live.log_path.read_text())
    finally:
        live.close()
