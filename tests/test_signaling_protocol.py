"""Every rule of the signaling wire protocol (docs/protocol.md), one table row each."""

import json
from pathlib import Path
from typing import Any

import pytest

from signaling import protocol
from signaling.protocol import (
    MAX_MESSAGE_BYTES,
    MODES,
    Candidate,
    Join,
    Leave,
    Offer,
    ProtocolError,
    parse_client_message,
)

SDP = (
    "v=0\r\n"
    "o=- 3920 1 IN IP4 0.0.0.0\r\n"
    "s=-\r\n"
    "t=0 0\r\n"
    "a=group:BUNDLE 0 1\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
    "c=IN IP4 0.0.0.0\r\n"
    "a=mid:0\r\n"
    "a=sendrecv\r\n"
    "a=rtpmap:111 opus/48000/2\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
    "c=IN IP4 0.0.0.0\r\n"
    "a=mid:1\r\n"
    "a=sendrecv\r\n"
    "a=rtpmap:96 VP8/90000\r\n"
)
HOST = "candidate:1 1 udp 2122260223 192.168.1.2 54321 typ host"
SRFLX = (
    "candidate:842163049 1 udp 1677729535 203.0.113.7 54321 typ srflx"
    " raddr 0.0.0.0 rport 0 generation 0 ufrag Ab12 network-cost 999"
)


def dumps(obj: Any) -> str:
    return json.dumps(obj)


def join(room: Any = "room", name: Any = "Ana") -> str:
    return dumps({"type": "join", "room": room, "name": name})


def offer(sdp: Any) -> str:
    return dumps({"type": "offer", "sdp": sdp})


def candidate(**init: Any) -> str:
    return dumps({"type": "candidate", "candidate": init})


def in_mid0(line: str) -> str:
    return candidate(candidate=line, sdpMid="0")


def padded(size: int) -> str:
    """A valid leave message of exactly ``size`` UTF-8 bytes."""
    base = '{"type": "leave", "pad": ""}'
    return base[:-2] + "x" * (size - len(base)) + base[-2:]


def padded_multibyte(size: int) -> str:
    """A valid leave message of ``size`` UTF-8 bytes, mostly two-byte characters."""
    base = '{"type": "leave", "pad": ""}'
    room = size - len(base)
    pad = "é" * (room // 2) + "x" * (room % 2)
    return base[:-2] + pad + base[-2:]


VALID = [
    # join
    (join("room", "Ana"), Join(room="room", name="Ana")),
    (join("A-z_0-9", "x"), Join(room="A-z_0-9", name="x")),
    (join("r" * 64, "n" * 64), Join(room="r" * 64, name="n" * 64)),
    (join("room", "  Zoë Ünal \t\n"), Join(room="room", name="Zoë Ünal")),
    (join("room", "李小龙 🎥"), Join(room="room", name="李小龙 🎥")),
    (join("room", "👩‍💻" * 16), Join(room="room", name="👩‍💻" * 16)),
    (join("room", " " + "n" * 64 + " "), Join(room="room", name="n" * 64)),
    (
        dumps({"type": "join", "room": "r", "name": "n", "extra": 1, "v": [1]}),
        Join(room="r", name="n"),
    ),
    *[(dumps({"type": "join", "room": "r", "name": "n", "mode": m}), Join(room="r", name="n", mode=m)) for m in MODES],
    (dumps({"type": "join", "room": "r", "name": "n", "mode": None}), Join(room="r", name="n")),
    # answer (to a server offer in an sfu room)
    (dumps({"type": "answer", "sdp": SDP}), protocol.Answer(sdp=SDP)),
    # offer
    (offer(SDP), Offer(sdp=SDP)),
    (offer(SDP.replace("\r\n", "\n")), Offer(sdp=SDP.replace("\r\n", "\n"))),
    (dumps({"type": "offer", "sdp": SDP, "extra": None}), Offer(sdp=SDP)),
    # candidate
    (
        candidate(candidate=HOST, sdpMid="0", sdpMLineIndex=0),
        Candidate(candidate=HOST, sdp_mid="0", sdp_mline_index=0),
    ),
    (
        candidate(candidate=SRFLX, sdpMid="1", sdpMLineIndex=1, usernameFragment="a"),
        Candidate(candidate=SRFLX, sdp_mid="1", sdp_mline_index=1),
    ),
    (
        candidate(candidate=HOST, sdpMid="audio"),
        Candidate(candidate=HOST, sdp_mid="audio", sdp_mline_index=None),
    ),
    (
        candidate(candidate=HOST, sdpMid=None, sdpMLineIndex=65535),
        Candidate(candidate=HOST, sdp_mid=None, sdp_mline_index=65535),
    ),
    (
        candidate(
            candidate="candidate:3 1 TCP 2105524479 abcd-01.local 9 typ host "
            "tcptype active",
            sdpMid="0",
        ),
        Candidate(
            candidate="candidate:3 1 TCP 2105524479 abcd-01.local 9 typ host "
            "tcptype active",
            sdp_mid="0",
            sdp_mline_index=None,
        ),
    ),
    (
        in_mid0("candidate:a+/B 1 udp 1 2001:db8::1 1 typ relay"),
        Candidate(
            candidate="candidate:a+/B 1 udp 1 2001:db8::1 1 typ relay",
            sdp_mid="0",
            sdp_mline_index=None,
        ),
    ),
    # end-of-candidates: valid with or without a media section
    (
        candidate(candidate="", sdpMid="0", sdpMLineIndex=0),
        Candidate(candidate="", sdp_mid="0", sdp_mline_index=0),
    ),
    (
        candidate(candidate=""),
        Candidate(candidate="", sdp_mid=None, sdp_mline_index=None),
    ),
    # leave
    ('{"type":"leave"}', Leave()),
    (' \n{"type": "leave", "reason": "bye", "nested": {"a": [[[[1]]]]}}\n ', Leave()),
    (dumps({"type": "leave", "deep": json.loads("[" * 500 + "]" * 500)}), Leave()),
    # size boundary
    (padded(MAX_MESSAGE_BYTES), Leave()),
    (padded_multibyte(MAX_MESSAGE_BYTES), Leave()),
]

INVALID = [
    # transport
    (b'{"type": "leave"}', protocol.BINARY_NOT_SUPPORTED),
    (b"", protocol.BINARY_NOT_SUPPORTED),
    (padded(MAX_MESSAGE_BYTES + 1), protocol.MESSAGE_TOO_LARGE),
    (padded_multibyte(MAX_MESSAGE_BYTES + 1), protocol.MESSAGE_TOO_LARGE),
    ("[" * 100_000, protocol.MESSAGE_TOO_LARGE),
    # JSON
    ("", protocol.INVALID_JSON),
    ("not json", protocol.INVALID_JSON),
    ('{"type": "leave"', protocol.INVALID_JSON),
    ("{'type': 'leave'}", protocol.INVALID_JSON),
    ('{"type": "leave"} {}', protocol.INVALID_JSON),
    ('{"type": "leave", "x": NaN}', protocol.INVALID_JSON),
    ('{"type": "leave", "x": Infinity}', protocol.INVALID_JSON),
    ('{"type": "leave", "x": -Infinity}', protocol.INVALID_JSON),
    ('{"type": "leave", "x": ' + "1" * 5000 + "}", protocol.INVALID_JSON),
    ("[" * 60_000, protocol.INVALID_JSON),
    ("[" * 30_000 + "]" * 30_000, protocol.INVALID_JSON),
    (dumps({"type": "leave"})[:-1] + ', "x": ' + "{" * 30_000, protocol.INVALID_JSON),
    # envelope
    ("[]", protocol.INVALID_MESSAGE),
    ('"join"', protocol.INVALID_MESSAGE),
    ("null", protocol.INVALID_MESSAGE),
    ("42", protocol.INVALID_MESSAGE),
    ("{}", protocol.INVALID_MESSAGE),
    ('{"room": "r", "name": "n"}', protocol.INVALID_MESSAGE),
    ('{"type": null}', protocol.INVALID_MESSAGE),
    ('{"type": 1}', protocol.INVALID_MESSAGE),
    ('{"type": ["join"]}', protocol.INVALID_MESSAGE),
    ('{"type": "bye"}', protocol.UNKNOWN_TYPE),
    ('{"type": ""}', protocol.UNKNOWN_TYPE),
    ('{"type": "Join", "room": "r", "name": "n"}', protocol.UNKNOWN_TYPE),
    ('{"type": "answered", "sdp": "v=0\\r\\n"}', protocol.UNKNOWN_TYPE),
    # join: the mode
    (dumps({"type": "join", "room": "r", "name": "n", "mode": "p2p"}), protocol.UNKNOWN_MODE),
    (dumps({"type": "join", "room": "r", "name": "n", "mode": "SFU"}), protocol.UNKNOWN_MODE),
    (dumps({"type": "join", "room": "r", "name": "n", "mode": 1}), protocol.INVALID_MESSAGE),
    # answer
    ('{"type": "answer"}', protocol.INVALID_MESSAGE),
    ('{"type": "answer", "sdp": "hello"}', protocol.INVALID_SDP),
    ('{"type": "joined"}', protocol.UNKNOWN_TYPE),
    # join: field types
    ('{"type": "join", "name": "n"}', protocol.INVALID_MESSAGE),
    ('{"type": "join", "room": "r"}', protocol.INVALID_MESSAGE),
    (join(room=None), protocol.INVALID_MESSAGE),
    (join(room=7), protocol.INVALID_MESSAGE),
    (join(room=["r"]), protocol.INVALID_MESSAGE),
    (join(name=None), protocol.INVALID_MESSAGE),
    (join(name=True), protocol.INVALID_MESSAGE),
    (join(name={"first": "Ana"}), protocol.INVALID_MESSAGE),
    # join: room
    (join(room=""), protocol.INVALID_ROOM),
    (join(room="r" * 65), protocol.INVALID_ROOM),
    (join(room="my room"), protocol.INVALID_ROOM),
    (join(room=" room"), protocol.INVALID_ROOM),
    (join(room="room\n"), protocol.INVALID_ROOM),
    (join(room="a/b"), protocol.INVALID_ROOM),
    (join(room="../etc"), protocol.INVALID_ROOM),
    (join(room="salle-é"), protocol.INVALID_ROOM),
    (join(room="٣"), protocol.INVALID_ROOM),  # a non-ASCII digit
    (join(room="bad room", name=""), protocol.INVALID_ROOM),  # room checked first
    # join: name
    (join(name=""), protocol.INVALID_NAME),
    (join(name="   \t\n "), protocol.INVALID_NAME),
    (join(name="n" * 65), protocol.INVALID_NAME),
    (join(name="é" * 65), protocol.INVALID_NAME),
    (join(name="Ana\x00"), protocol.INVALID_NAME),
    (join(name="A\nna"), protocol.INVALID_NAME),
    (join(name="A\tna"), protocol.INVALID_NAME),
    (join(name="Ana\x1b[31m"), protocol.INVALID_NAME),
    (join(name="A\x7fna"), protocol.INVALID_NAME),
    (join(name="A\x85na"), protocol.INVALID_NAME),
    ('{"type": "join", "room": "r", "name": "A\\ud800na"}', protocol.INVALID_NAME),
    # offer
    ('{"type": "offer"}', protocol.INVALID_MESSAGE),
    (offer(None), protocol.INVALID_MESSAGE),
    (offer({"type": "offer", "sdp": SDP}), protocol.INVALID_MESSAGE),
    (offer(""), protocol.INVALID_SDP),
    (offer("v=0"), protocol.INVALID_SDP),
    (offer("hello"), protocol.INVALID_SDP),
    (offer(" " + SDP), protocol.INVALID_SDP),
    (offer("v=01\r\n" + SDP[5:]), protocol.INVALID_SDP),
    (offer("o=- 1 1 IN IP4 0.0.0.0\r\n" + SDP), protocol.INVALID_SDP),
    (offer(SDP.replace("m=video", "m=application")), protocol.INVALID_SDP),
    (offer(SDP.replace("m=audio", "m=application")), protocol.INVALID_SDP),
    (offer(SDP.replace("\r\nm=video", "\r\na=x m=video")), protocol.INVALID_SDP),
    (offer("v=0\r\ns=m=audio m=video\r\n"), protocol.INVALID_SDP),
    # candidate: field types
    ('{"type": "candidate"}', protocol.INVALID_MESSAGE),
    (dumps({"type": "candidate", "candidate": HOST}), protocol.INVALID_MESSAGE),
    (dumps({"type": "candidate", "candidate": None}), protocol.INVALID_MESSAGE),
    (dumps({"type": "candidate", "candidate": [HOST]}), protocol.INVALID_MESSAGE),
    (candidate(sdpMid="0", sdpMLineIndex=0), protocol.INVALID_MESSAGE),
    (candidate(candidate=None, sdpMid="0"), protocol.INVALID_MESSAGE),
    (candidate(candidate=1, sdpMid="0"), protocol.INVALID_MESSAGE),
    (candidate(candidate=HOST, sdpMid=0), protocol.INVALID_MESSAGE),
    (candidate(candidate=HOST, sdpMid=["0"]), protocol.INVALID_MESSAGE),
    (candidate(candidate=HOST, sdpMLineIndex="0"), protocol.INVALID_MESSAGE),
    (candidate(candidate=HOST, sdpMLineIndex=0.0), protocol.INVALID_MESSAGE),
    (candidate(candidate=HOST, sdpMLineIndex=True), protocol.INVALID_MESSAGE),
    (candidate(candidate=HOST, sdpMLineIndex=False), protocol.INVALID_MESSAGE),
    (candidate(candidate="", sdpMLineIndex=False), protocol.INVALID_MESSAGE),
    # candidate: values
    (candidate(candidate=HOST, sdpMLineIndex=-1), protocol.INVALID_CANDIDATE),
    (candidate(candidate=HOST, sdpMLineIndex=65536), protocol.INVALID_CANDIDATE),
    (candidate(candidate=HOST), protocol.INVALID_CANDIDATE),
    (
        candidate(candidate=HOST, sdpMid=None, sdpMLineIndex=None),
        protocol.INVALID_CANDIDATE,
    ),
    (in_mid0(HOST[len("candidate:") :]), protocol.INVALID_CANDIDATE),  # aiortc's form
    (in_mid0("garbage"), protocol.INVALID_CANDIDATE),
    (in_mid0("candidate:"), protocol.INVALID_CANDIDATE),
    (in_mid0(" "), protocol.INVALID_CANDIDATE),
    (in_mid0(HOST + "\r\n"), protocol.INVALID_CANDIDATE),
    (in_mid0(HOST.replace("54321", "port")), protocol.INVALID_CANDIDATE),
    (in_mid0(HOST.replace("2122260223", "-1")), protocol.INVALID_CANDIDATE),
    (in_mid0(HOST.replace(" typ ", " type ")), protocol.INVALID_CANDIDATE),
    (in_mid0(HOST.replace(" 1 udp", " one udp")), protocol.INVALID_CANDIDATE),
    (in_mid0(HOST.replace(":1 ", ":a.b ")), protocol.INVALID_CANDIDATE),
    (in_mid0(HOST + " generation"), protocol.INVALID_CANDIDATE),
    (in_mid0(HOST.replace(" ", "  ")), protocol.INVALID_CANDIDATE),
]

ERROR_CODES = {
    "INVALID_JSON": "invalid_json",
    "INVALID_MESSAGE": "invalid_message",
    "UNKNOWN_TYPE": "unknown_type",
    "MESSAGE_TOO_LARGE": "message_too_large",
    "INVALID_ROOM": "invalid_room",
    "INVALID_NAME": "invalid_name",
    "INVALID_SDP": "invalid_sdp",
    "NOT_JOINED": "not_joined",
    "ALREADY_JOINED": "already_joined",
    "INVALID_CANDIDATE": "invalid_candidate",
    "BINARY_NOT_SUPPORTED": "binary_not_supported",
    "INTERNAL_ERROR": "internal_error",
}


def short_id(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:50]}...({len(text)})"


@pytest.mark.parametrize("text, expected", VALID, ids=[short_id(v[0]) for v in VALID])
def test_valid(text: str, expected: protocol.ClientMessage) -> None:
    assert parse_client_message(text) == expected


@pytest.mark.parametrize("text, code", INVALID, ids=[short_id(v[0]) for v in INVALID])
def test_invalid(text: str | bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_message(text)
    assert info.value.code == code
    # A sentence for a person, short enough to show in a UI.
    message = info.value.message
    assert message[:1].isupper() and message.endswith(".")
    assert len(message) < 200
    assert str(info.value) == message


def test_padding_helpers() -> None:
    for size in (MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES + 1):
        assert len(padded(size).encode()) == size
        assert len(padded_multibyte(size).encode()) == size
    # The multibyte case is under the limit in characters, over it in bytes.
    assert len(padded_multibyte(MAX_MESSAGE_BYTES + 1)) < MAX_MESSAGE_BYTES


@pytest.mark.parametrize(
    "text, field",
    [
        ('{"type": 1}', '"type"'),
        ('{"type": "join", "name": "n"}', '"room"'),
        (join(name=7), '"name"'),
        (offer(1), '"sdp"'),
        (candidate(candidate=None), '"candidate.candidate"'),
        (candidate(candidate="", sdpMid=1), '"candidate.sdpMid"'),
        (candidate(candidate="", sdpMLineIndex=True), '"candidate.sdpMLineIndex"'),
    ],
)
def test_invalid_message_names_the_field(text: str, field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_message(text)
    assert info.value.code == protocol.INVALID_MESSAGE
    assert field in info.value.message


def test_unknown_type_is_named_but_bounded() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_message(dumps({"type": "x" * 10_000}))
    assert info.value.code == protocol.UNKNOWN_TYPE
    assert len(info.value.message) < 200


def test_messages_are_frozen() -> None:
    message = parse_client_message(join())
    with pytest.raises(AttributeError):
        message.room = "other"  # type: ignore[misc]


def test_error_codes() -> None:
    assert protocol.MAX_MESSAGE_BYTES == 65536
    for constant, value in ERROR_CODES.items():
        assert getattr(protocol, constant) == value


def test_error_codes_are_documented() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    for value in ERROR_CODES.values():
        assert f"| `{value}`" in doc


def test_protocol_error() -> None:
    exc = ProtocolError(protocol.NOT_JOINED, "Join a room first.")
    assert exc.code == "not_joined"
    assert exc.message == str(exc) == "Join a room first."


def test_server_messages() -> None:
    participants = [{"peerId": "p1", "name": "Ana"}]
    ice_servers = [{"urls": ["stun:stun.example.org:3478"]}]
    cases = [
        (
            protocol.joined("room", "p2", participants, ice_servers, {"file": "f.webm", "startedAt": 1}, "pip"),
            {
                "type": "joined",
                "room": "room",
                "peerId": "p2",
                "participants": participants,
                "iceServers": ice_servers,
                "recording": {"file": "f.webm", "startedAt": 1},
                "layout": "pip",
                "mode": "mcu",
            },
        ),
        (
            protocol.joined("r", "p1", [], []),
            {
                "type": "joined",
                "room": "r",
                "peerId": "p1",
                "participants": [],
                "iceServers": [],
                "recording": None,
                "layout": "grid",
                "mode": "mcu",
            },
        ),
        (
            protocol.server_offer(SDP, [{"mid": "2", "peerId": "p1", "kind": "video"}]),
            {"type": "offer", "sdp": SDP, "tracks": [{"mid": "2", "peerId": "p1", "kind": "video"}]},
        ),
        (protocol.answer(SDP), {"type": "answer", "sdp": SDP}),
        (
            protocol.participant_joined("p3", "Zoë"),
            {"type": "participantJoined", "peerId": "p3", "name": "Zoë"},
        ),
        (protocol.participant_left("p3"), {"type": "participantLeft", "peerId": "p3"}),
        (
            protocol.error(protocol.INVALID_ROOM, "Bad room."),
            {"type": "error", "code": "invalid_room", "message": "Bad room."},
        ),
    ]
    for built, expected in cases:
        assert built == expected
        assert json.loads(json.dumps(built)) == expected


def test_joined_snapshots_its_lists() -> None:
    participants = [{"peerId": "p1", "name": "Ana"}]
    message = protocol.joined("room", "p2", participants, [])
    participants.append({"peerId": "p3", "name": "Bo"})
    assert message["participants"] == [{"peerId": "p1", "name": "Ana"}]


def test_name_round_trips_through_the_server_messages() -> None:
    name = parse_client_message(join(name="  李小龙 🎥 Zoë  ")).name
    sent = json.dumps(protocol.participant_joined("p1", name), ensure_ascii=False)
    assert json.loads(sent.encode("utf-8"))["name"] == "李小龙 🎥 Zoë"
