"""Every rule of the signaling wire protocol (docs/protocol.md), one table row each."""

import json
from pathlib import Path
from typing import Any, get_args

import pytest

from signaling import chat, protocol
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
            candidate="candidate:3 1 TCP 2105524479 abcd-01.local 9 typ host tcptype active",
            sdpMid="0",
        ),
        Candidate(
            candidate="candidate:3 1 TCP 2105524479 abcd-01.local 9 typ host tcptype active",
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
    ('{"type": "share", "mid": "2"}', protocol.Share("2")),
    ('{"type": "stopShare"}', protocol.StopShare()),
]

INVALID = [
    # share: its mid
    ('{"type": "share"}', protocol.INVALID_MESSAGE),
    ('{"type": "share", "mid": 2}', protocol.INVALID_MESSAGE),
    ('{"type": "share", "mid": ""}', protocol.INVALID_MESSAGE),
    (dumps({"type": "share", "mid": "9" * 33}), protocol.INVALID_MESSAGE),
    # startStream / stopStream: the URL itself is checked by the server (mcu/rooms/streams.py)
    ('{"type": "startStream"}', protocol.INVALID_MESSAGE),
    ('{"type": "startStream", "url": 5}', protocol.INVALID_MESSAGE),
    ('{"type": "startStream", "url": "rtmp://h/a/k", "tier": 1}', protocol.INVALID_MESSAGE),
    ('{"type": "stopStream"}', protocol.INVALID_MESSAGE),
    ('{"type": "stopStream", "id": null}', protocol.INVALID_MESSAGE),
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
                "grants": [],
                "layouts": [],
                "screens": [],
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
                "grants": [],
                "layouts": [],
                "screens": [],
            },
        ),
        (
            protocol.screen_share("p3", True),
            {"type": "screenShare", "peerId": "p3", "sharing": True},
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
        (
            protocol.participant_left("p3", protocol.KICKED_OUT),
            {"type": "participantLeft", "peerId": "p3", "reason": "kicked"},
        ),
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


# The client's side: what it builds, the server's parser reads back; what the server builds, the client reads.

REGIONS = {"regions": [{"x": 0, "y": 0, "width": 1, "height": 1, "peer": "p1"}]}
END_OF_CANDIDATES = Candidate(candidate="", sdp_mid="0", sdp_mline_index=0)
CLIENT_MESSAGES: list[protocol.ClientMessage] = [
    Join(room="room", name="Ana"),
    Join(room="room", name="Zoë", token="t.k", tier="low", hide_self=True, mode="sfu"),
    Offer(sdp=SDP),
    Offer(sdp=SDP, to="p3"),
    protocol.Answer(sdp=SDP),
    protocol.Answer(sdp=SDP, to="p3"),
    Candidate(candidate=SRFLX, sdp_mid="0", sdp_mline_index=0),
    Candidate(candidate=HOST, sdp_mid=None, sdp_mline_index=1, to="p3"),
    END_OF_CANDIDATES,
    Leave(),
    protocol.SetMedia(video=False, audio=True),
    protocol.SetLayout(layout="speaker"),
    protocol.SetLayout(layout=REGIONS),
    protocol.ModerateAudio(peer_id="p5", muted=True, volume=None),
    protocol.ModerateAudio(peer_id="p5", muted=None, volume=0.5),
    protocol.ModerateAudio(peer_id="p5", muted=False, volume=2.0),
    protocol.Kick(peer_id="p5"),
    protocol.Kick(peer_id="p5", reason="Spam in the chat."),
    protocol.StartRecording(),
    protocol.StopRecording(),
    protocol.Share(mid="2"),
    protocol.StopShare(),
    protocol.StartStream(url="rtmp://live.example/app/key"),
    protocol.StartStream(url="rtmps://live.example/app/key", tier="low"),
    protocol.StopStream(id="0d41778f"),
]


def test_the_client_builds_every_message_the_server_reads() -> None:
    assert {type(message) for message in CLIENT_MESSAGES} == set(get_args(protocol.ClientMessage))


@pytest.mark.parametrize("message", CLIENT_MESSAGES, ids=repr)
def test_what_the_client_builds_the_server_parses_back(message: protocol.ClientMessage) -> None:
    assert parse_client_message(json.dumps(message.to_message())) == message


@pytest.mark.parametrize("text", [text for text, _ in VALID], ids=[short_id(v[0]) for v in VALID])
def test_what_the_server_parses_the_client_builds_back(text: str) -> None:
    """Built again from its parse, a message says the same (what the server ignores or trims aside)."""
    parsed = parse_client_message(text)
    assert parse_client_message(json.dumps(parsed.to_message())) == parsed


def test_the_client_messages_on_the_wire() -> None:
    """The fields as docs/protocol.md spells them; an optional field at its default is left out."""
    assert Join(room="standup", name="Zoë").to_message() == {"type": "join", "room": "standup", "name": "Zoë"}
    assert Join(room="standup", name="Zoë", tier="low", hide_self=True).to_message() == {
        "type": "join",
        "room": "standup",
        "name": "Zoë",
        "tier": "low",
        "hideSelf": True,
    }
    assert Join(room="r", name="n", token="t", mode="mesh").to_message() == {
        "type": "join",
        "room": "r",
        "name": "n",
        "token": "t",
        "mode": "mesh",
    }
    assert Offer(sdp=SDP).to_message() == {"type": "offer", "sdp": SDP}
    assert Offer(sdp=SDP, to="p3").to_message() == {"type": "offer", "to": "p3", "sdp": SDP}
    assert protocol.Answer(sdp=SDP, to="p3").to_message() == {"type": "answer", "to": "p3", "sdp": SDP}
    assert END_OF_CANDIDATES.to_message() == {
        "type": "candidate",
        "candidate": {"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0},
    }
    assert Leave().to_message() == {"type": "leave"}
    set_media = protocol.SetMedia(video=False, audio=True)
    assert set_media.to_message() == {"type": "setMedia", "video": False, "audio": True}
    assert protocol.SetLayout(layout="speaker").to_message() == {"type": "setLayout", "layout": "speaker"}
    assert protocol.ModerateAudio(peer_id="p5", muted=None, volume=0.5).to_message() == {
        "type": "moderateAudio",
        "peerId": "p5",
        "volume": 0.5,
    }
    assert protocol.Kick(peer_id="p5").to_message() == {"type": "kick", "peerId": "p5"}
    assert protocol.Kick(peer_id="p5", reason="Spam").to_message() == {"type": "kick", "peerId": "p5", "reason": "Spam"}
    assert protocol.StartRecording().to_message() == {"type": "startRecording"}
    assert protocol.StopRecording().to_message() == {"type": "stopRecording"}
    assert protocol.Share(mid="2").to_message() == {"type": "share", "mid": "2"}
    assert protocol.StopShare().to_message() == {"type": "stopShare"}
    assert protocol.StartStream(url="rtmp://h/a/k").to_message() == {"type": "startStream", "url": "rtmp://h/a/k"}
    assert protocol.StartStream(url="rtmp://h/a/k", tier="low").to_message() == {
        "type": "startStream",
        "url": "rtmp://h/a/k",
        "tier": "low",
    }
    assert protocol.StopStream(id="0d41778f").to_message() == {"type": "stopStream", "id": "0d41778f"}


@pytest.mark.parametrize(
    "message",
    [
        {"type": "kick"},
        {"type": "kick", "peerId": 5},
        {"type": "kick", "peerId": "p5", "reason": 3},
        {"type": "kick", "peerId": "p5", "reason": "x" * (protocol.MAX_REASON_LENGTH + 1)},
        {"type": "kick", "peerId": "p5", "reason": "bell\x07"},
    ],
    ids=repr,
)
def test_a_malformed_kick_is_refused(message: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as refused:
        parse_client_message(json.dumps(message))
    assert refused.value.code == protocol.INVALID_MESSAGE


def read(message: dict[str, Any]) -> protocol.ServerMessage | None:
    """What the client reads from a message of the server, once through JSON as the wire carries it."""
    return protocol.read_server_message(json.loads(json.dumps(message)))


ICE_SERVERS = [{"urls": ["turn:203.0.113.1:3478"], "username": "u", "credential": "c"}]
SERVER_MESSAGES: list[tuple[dict[str, Any], protocol.ServerMessage]] = [
    (
        protocol.joined(
            "room",
            "p7",
            [{"peerId": "p3", "name": "Ana", "video": True, "audio": True}],
            ICE_SERVERS,
            {"file": "f.webm", "startedAt": 1},
            REGIONS,
            "mesh",
            grants={"publish", "moderate"},
            layouts=["grid", "speaker"],
            screens=["p3"],
        ),
        protocol.Joined(
            room="room",
            peer_id="p7",
            participants=(protocol.Participant("p3", "Ana"),),
            ice_servers=ICE_SERVERS,
            recording={"file": "f.webm", "startedAt": 1},
            layout=REGIONS,
            mode="mesh",
            grants=frozenset({"publish", "moderate"}),
            layouts=("grid", "speaker"),
            screens=("p3",),
        ),
    ),
    (
        protocol.joined("r", "p1", [], []),
        protocol.Joined("r", "p1", (), [], recording=None, layout="grid", mode="mcu"),
    ),
    (protocol.answer(SDP), protocol.ServerAnswer(SDP)),
    (
        protocol.server_offer(SDP, [{"mid": "3", "peerId": "p3", "kind": "audio"}]),
        protocol.ServerOffer(SDP, (protocol.ForwardedTrack(mid="3", peer_id="p3", kind="audio"),)),
    ),
    (protocol.server_offer(SDP, []), protocol.ServerOffer(SDP, ())),
    (protocol.relayed("p7", Offer(SDP, to="p3")), protocol.Relayed("p7", Offer(SDP))),
    (protocol.relayed("p7", protocol.Answer(SDP, to="p3")), protocol.Relayed("p7", protocol.Answer(SDP))),
    (protocol.relayed("p7", END_OF_CANDIDATES), protocol.Relayed("p7", END_OF_CANDIDATES)),
    (protocol.participant_joined("p8", "Chen"), protocol.ParticipantJoined("p8", "Chen")),
    (  # a server older than "grants" and "layouts"
        {
            "type": "joined",
            "room": "r",
            "peerId": "p1",
            "participants": [],
            "iceServers": [],
            "layout": "grid",
            "mode": "mcu",
        },
        protocol.Joined("r", "p1", (), [], recording=None, layout="grid", mode="mcu"),
    ),
    (protocol.participant_left("p3", protocol.LEFT), protocol.ParticipantLeft("p3", "left")),
    ({"type": "participantLeft", "peerId": "p3"}, protocol.ParticipantLeft("p3")),  # a server older than "reason"
    (protocol.layout_changed("pip", "p5"), protocol.LayoutChanged("pip", "p5")),
    (protocol.layout_changed(REGIONS, None), protocol.LayoutChanged(REGIONS, None)),
    (protocol.tier("low", "congestion", "high"), protocol.Tier(tier="low", reason="congestion", ceiling="high")),
    (protocol.visibility(False, False), protocol.Visibility(on_screen=False, send_video=False)),
    (protocol.visibility(True, True), protocol.Visibility(on_screen=True, send_video=True)),
    (protocol.screen_share("p3", True), protocol.ScreenShare(peer_id="p3", sharing=True)),
    (protocol.screen_share("p3", False), protocol.ScreenShare(peer_id="p3", sharing=False)),
    # A server before screen sharing sends no `screens`: nobody shares.
    (
        {
            "type": "joined",
            "room": "r",
            "peerId": "p1",
            "participants": [],
            "iceServers": [],
            "layout": "grid",
            "recording": None,
            "mode": "mcu",
        },
        protocol.Joined("r", "p1", (), [], recording=None, layout="grid", mode="mcu"),
    ),  # fmt: skip
    (protocol.error(protocol.RECONNECT, "Join again."), protocol.Error(code="reconnect", message="Join again.")),
]


def test_the_client_reads_every_message_it_acts_on() -> None:
    assert {type(typed) for _, typed in SERVER_MESSAGES} == set(get_args(protocol.ServerMessage))


@pytest.mark.parametrize("built, typed", SERVER_MESSAGES, ids=lambda v: str(v)[:40])
def test_what_the_server_builds_the_client_reads(built: dict[str, Any], typed: protocol.ServerMessage) -> None:
    assert read(built) == typed


def test_a_mesh_message_reaches_its_peer_as_the_docs_show() -> None:
    """The client's offer `to` p3, parsed by the server and relayed `from` p7: only the addressing changes."""
    sent = Offer(SDP, to="p3").to_message()
    relayed = protocol.relayed("p7", parse_client_message(json.dumps(sent)))  # type: ignore[arg-type]
    assert relayed == {"type": "offer", "sdp": SDP, "from": "p7"}
    candidate = Candidate(candidate=HOST, sdp_mid="0", sdp_mline_index=0, to="p3")
    assert protocol.relayed("p7", candidate) == {
        "type": "candidate",
        "candidate": {"candidate": HOST, "sdpMid": "0", "sdpMLineIndex": 0},
        "from": "p7",
    }


@pytest.mark.parametrize(
    "built",
    [
        protocol.speaking("p5", True),
        protocol.active_speaker(None),
        protocol.participant_media("p5", False, True),
        protocol.participant_audio("p5", False, 0.5, "p3"),
        protocol.recording_started("f.webm", 1),
        protocol.recording_stopped("f.webm", None, 0.0, "failed", "No space."),
        {"type": "fromTheFuture", "x": 1},
    ],
    ids=lambda built: built["type"],
)
def test_the_client_reads_nothing_from_what_it_does_not_act_on(built: dict[str, Any]) -> None:
    assert read(built) is None


@pytest.mark.parametrize(
    "obj",
    [
        [],
        {},
        {"type": 5},
        {"type": "joined", "room": "r", "participants": [], "iceServers": [], "layout": "grid", "mode": "mcu"},
        {"type": "joined", "room": "r", "peerId": "p1", "participants": {}, "iceServers": [], "mode": "mcu"},
        {"type": "joined", "room": "r", "peerId": "p1", "participants": ["p2"], "iceServers": [], "mode": "mcu"},
        {"type": "joined", "room": "r", "peerId": "p1", "participants": [], "iceServers": [], "layout": 1},
        {"type": "answer"},
        {"type": "offer", "sdp": SDP},
        {"type": "offer", "sdp": SDP, "tracks": [{"mid": "1", "peerId": "p3"}]},
        {"type": "offer", "sdp": "not sdp", "from": "p3"},
        {"type": "offer", "sdp": SDP, "from": 3},
        {"type": "candidate", "candidate": {"candidate": "bogus", "sdpMid": "0"}, "from": "p3"},
        {"type": "participantJoined", "peerId": "p3"},
        {"type": "layoutChanged", "layout": None, "by": None},
        {"type": "tier", "tier": "low", "reason": "join"},
        {"type": "visibility", "onScreen": True, "sendVideo": "no"},
        {"type": "screenShare", "peerId": "p3"},
        {"type": "screenShare", "peerId": "p3", "sharing": "yes"},
        {
            "type": "joined",
            "room": "r",
            "peerId": "p1",
            "participants": [],
            "iceServers": [],
            "layout": "grid",
            "mode": "mcu",
            "screens": [3],
        },  # fmt: skip
        {"type": "error", "code": "reconnect"},
    ],
    ids=lambda obj: json.dumps(obj)[:50],
)
def test_a_malformed_server_message_is_refused(obj: Any) -> None:
    with pytest.raises(ProtocolError) as caught:
        protocol.read_server_message(obj)
    assert caught.value.code in (protocol.INVALID_MESSAGE, protocol.INVALID_SDP, protocol.INVALID_CANDIDATE)


def test_chat_what_the_client_says_the_server_reads() -> None:
    for text in ("hello", "Ready when you are 👋", "tab\tand\nline"):
        assert chat.parse_chat(chat.say(text)) == text
    # Sent as UTF-8, not escaped: the size limit counts bytes.
    assert chat.say("Zoë 👋") == '{"type": "chat", "text": "Zoë 👋"}'


def test_chat_what_the_server_relays_the_client_reads() -> None:
    relayed = chat.chat("p7", "Zoë", "hi", 1767225600123)
    assert chat.read_chat(json.loads(json.dumps(relayed, ensure_ascii=False))) == chat.ChatMessage(
        sender="p7", name="Zoë", text="hi", timestamp=1767225600123
    )
    refused = protocol.error(chat.CHAT_RATE_LIMITED, "Too many.")
    assert chat.read_chat(refused) == protocol.Error(code="chat_rate_limited", message="Too many.")
    assert chat.read_chat({"type": "typing", "from": "p7"}) is None
    malformed: Any
    for malformed in ([], {"type": "chat", "from": "p7", "name": "Zoë", "text": "hi"}, {"type": "error", "code": 1}):
        with pytest.raises(ProtocolError):
            chat.read_chat(malformed)
