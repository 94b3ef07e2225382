"""
The signaling wire protocol: JSON text messages exchanged over the WebSocket.

Both ends speak through this module, so each message's shape is defined in one place.
The server reads every inbound message with :func:`parse_client_message`, so the rest of
it only ever sees well-formed, typed messages, and builds what it sends with the plain-dict
builders below. The Python client builds what it sends with the same dataclasses
(``to_message``) and reads what it receives with :func:`read_server_message`.
``docs/protocol.md`` is the contract this module implements.
"""

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, NoReturn

MAX_MESSAGE_BYTES = 64 * 1024

# Error codes, sent in the "code" field of an "error" message.
INVALID_JSON = "invalid_json"
INVALID_MESSAGE = "invalid_message"
UNKNOWN_TYPE = "unknown_type"
MESSAGE_TOO_LARGE = "message_too_large"
INVALID_ROOM = "invalid_room"
INVALID_NAME = "invalid_name"
INVALID_SDP = "invalid_sdp"
NOT_JOINED = "not_joined"
ALREADY_JOINED = "already_joined"
INVALID_CANDIDATE = "invalid_candidate"
BINARY_NOT_SUPPORTED = "binary_not_supported"
MEDIA_FAILED = "media_failed"
UNAUTHORIZED = "unauthorized"
FORBIDDEN = "forbidden"
SERVER_SHUTDOWN = "server_shutdown"
TOO_MANY_ROOMS = "too_many_rooms"
ROOM_FULL = "room_full"
RATE_LIMITED = "rate_limited"
JOIN_TIMEOUT = "join_timeout"
SDP_TOO_LARGE = "sdp_too_large"
TOO_MANY_TRACKS = "too_many_tracks"
PARTICIPANT_NOT_FOUND = "participant_not_found"
ROOM_NOT_FOUND = "room_not_found"
SESSION_NOT_FOUND = "session_not_found"
INVALID_VOLUME = "invalid_volume"
INTERNAL_ERROR = "internal_error"
RECORDING_FAILED = "recording_failed"
ALREADY_RECORDING = "already_recording"
NOT_RECORDING = "not_recording"
UNKNOWN_TIER = "unknown_tier"
#: startStream: the URL is not rtmp:// or rtmps://; the room cannot stream; it streams its maximum; no such stream.
INVALID_STREAM_URL = "invalid_stream_url"
STREAM_FAILED = "stream_failed"
TOO_MANY_STREAMS = "too_many_streams"
UNKNOWN_STREAM = "unknown_stream"
INVALID_LAYOUT = "invalid_layout"
UNKNOWN_MODE = "unknown_mode"
MODE_MISMATCH = "mode_mismatch"
UNEXPECTED_ANSWER = "unexpected_answer"
WRONG_MODE = "wrong_mode"
UNKNOWN_PEER = "unknown_peer"
#: Sent to a participant a moderator removed, just before its WebSocket closes.
KICKED = "kicked"
#: A join refused: this token (or identity) was removed from the room a moment ago.
BANNED = "banned"
#: The room's media process (a worker or a node) went away: join again, a new one takes the room.
RECONNECT = "reconnect"
#: The room directory (Redis) is unreachable: a room not already on this node cannot be placed.
DIRECTORY_UNAVAILABLE = "directory_unavailable"
#: A `share` while the room already shows its maximum of shared screens (`mcu serve --max-shares`).
SHARE_LIMIT = "share_limit"
#: A `stopShare` from a participant that shares nothing.
NOT_SHARING = "not_sharing"

#: How a room carries media: composited (mcu), forwarded (sfu) or peer to peer (mesh).
MODES = ("mcu", "sfu", "mesh")

MAX_NAME_LENGTH = 64

_ROOM_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# C0 and C1 controls and DEL, plus lone surrogates, which cannot be encoded as UTF-8
# and would break the participantJoined sent to everybody else.
_NAME_FORBIDDEN_RE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_SDP_START_RE = re.compile(r"v=0\r?\n")
_SDP_AUDIO_RE = re.compile(r"^m=audio ", re.MULTILINE)
_SDP_VIDEO_RE = re.compile(r"^m=video ", re.MULTILINE)
# RFC 8839 candidate-attribute as carried by RTCIceCandidate.candidate: the fixed
# fields that aiortc's candidate_from_sdp() reads, then name/value pairs.
_CANDIDATE_RE = re.compile(
    r"candidate:[A-Za-z0-9+/]{1,32} \d{1,5} [A-Za-z0-9_-]+ \d{1,10} \S+ \d{1,5}"
    r" typ [A-Za-z0-9_-]+(?: \S+ \S+)*"
)
_MAX_SDP_MLINE_INDEX = 65535  # an unsigned short in the W3C API


class ProtocolError(Exception):
    """
    A message broke the protocol; the session answers with an ``error`` message
    carrying :attr:`code` and :attr:`message`, and goes on.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Join:
    """Enter ``room`` (created if needed) under the display ``name``."""

    room: str
    name: str
    #: A join token (signaling/tokens.py); required when the server has a secret.
    token: str | None = None
    #: The output tier to receive ("low", "high", ...); None: the server's default.
    tier: str | None = None
    #: Leave the peer's own tile out of the picture it receives (a personal composite).
    hide_self: bool = False
    #: The room's mode (one of MODES) if this join creates it; None: the server's default.
    mode: str | None = None

    def to_message(self) -> dict[str, Any]:
        """The wire form; optional fields at their default are left out, as the server reads them."""
        message: dict[str, Any] = {"type": "join", "room": self.room, "name": self.name}
        if self.token is not None:
            message["token"] = self.token
        if self.tier is not None:
            message["tier"] = self.tier
        if self.hide_self:
            message["hideSelf"] = True
        if self.mode is not None:
            message["mode"] = self.mode
        return message


@dataclass(frozen=True)
class Offer:
    """The client's SDP offer for its one upstream (audio and video)."""

    sdp: str
    #: Mesh rooms: the peerId of the participant it is for (the server relays it).
    to: str | None = None

    def to_message(self) -> dict[str, Any]:
        return _addressed({"type": "offer", "sdp": self.sdp}, self.to)


@dataclass(frozen=True)
class Answer:
    """The client's SDP answer to an offer of the server (an sfu room's renegotiation)."""

    sdp: str
    #: Mesh rooms: the peerId of the participant whose offer it answers (the server relays it).
    to: str | None = None

    def to_message(self) -> dict[str, Any]:
        return _addressed({"type": "answer", "sdp": self.sdp}, self.to)


@dataclass(frozen=True)
class Candidate:
    """
    A trickled ICE candidate from the client.

    An empty :attr:`candidate` means end-of-candidates.
    """

    candidate: str
    sdp_mid: str | None
    sdp_mline_index: int | None
    #: Mesh rooms: the peerId of the participant it is for (the server relays it).
    to: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The inner candidate object as the wire carries it (what a relay passes on)."""
        return {"candidate": self.candidate, "sdpMid": self.sdp_mid, "sdpMLineIndex": self.sdp_mline_index}

    def to_message(self) -> dict[str, Any]:
        return _addressed({"type": "candidate", "candidate": self.to_json()}, self.to)


@dataclass(frozen=True)
class Leave:
    """Leave the room; the WebSocket stays open and may join again."""

    def to_message(self) -> dict[str, Any]:
        return {"type": "leave"}


@dataclass(frozen=True)
class ModerateAudio:
    """Mute, unmute or set the volume of another participant's voice (grant ``moderate``)."""

    peer_id: str
    muted: bool | None
    volume: float | None

    def to_message(self) -> dict[str, Any]:
        """The wire form: a field left as None is left out (it stays as it is)."""
        message: dict[str, Any] = {"type": "moderateAudio", "peerId": self.peer_id}
        if self.muted is not None:
            message["muted"] = self.muted
        if self.volume is not None:
            message["volume"] = self.volume
        return message


@dataclass(frozen=True)
class Kick:
    """Remove another participant from the room (grant ``moderate``); its token may not rejoin for a while."""

    peer_id: str
    #: Told to the removed participant (at most MAX_REASON_LENGTH characters); None: no reason given.
    reason: str | None = None

    def to_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "kick", "peerId": self.peer_id}
        if self.reason is not None:
            message["reason"] = self.reason
        return message


@dataclass(frozen=True)
class SetMedia:
    """What the peer is sending: a camera turned off shows the placeholder, not black."""

    video: bool
    audio: bool

    def to_message(self) -> dict[str, Any]:
        return {"type": "setMedia", "video": self.video, "audio": self.audio}


@dataclass(frozen=True)
class StartRecording:
    """Record the room's composite and mix to a file on the server (grant ``record``)."""

    def to_message(self) -> dict[str, Any]:
        return {"type": "startRecording"}


@dataclass(frozen=True)
class StopRecording:
    """Stop the room's recording and finish its file (grant ``record``)."""

    def to_message(self) -> dict[str, Any]:
        return {"type": "stopRecording"}


@dataclass(frozen=True)
class StartStream:
    """Push the room's composite (H.264 of ``tier``, the server's default if None) and mix (AAC) to an RTMP(S)
    ``url`` (grant ``record``): a broadcast platform's ingest, its stream key in the URL."""

    url: str
    tier: str | None = None

    def to_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "startStream", "url": self.url}
        if self.tier is not None:
            message["tier"] = self.tier
        return message


@dataclass(frozen=True)
class StopStream:
    """End the room's stream ``id`` (grant ``record``)."""

    id: str

    def to_message(self) -> dict[str, Any]:
        return {"type": "stopStream", "id": self.id}


@dataclass(frozen=True)
class SetLayout:
    """Change the room's layout (grant ``layout``): a built-in name or ``{"regions": [...]}``.

    Only the shape is checked here; the media side validates the layout itself
    (``invalid_layout``).
    """

    layout: str | dict[str, Any]

    def to_message(self) -> dict[str, Any]:
        return {"type": "setLayout", "layout": self.layout}


@dataclass(frozen=True)
class Share:
    """Show the video of the offer's section ``mid`` as this peer's shared screen (grant ``publish``).

    The section is a second video the client adds (``sendonly``) and offers on its peer
    connection, before or after this message: the server shows it from its first keyframe.
    """

    mid: str

    def to_message(self) -> dict[str, Any]:
        return {"type": "share", "mid": self.mid}


@dataclass(frozen=True)
class StopShare:
    """Stop showing this peer's shared screen; the room's layout goes back to what it was."""

    def to_message(self) -> dict[str, Any]:
        return {"type": "stopShare"}


def _addressed(message: dict[str, Any], to: str | None) -> dict[str, Any]:
    """A mesh room's message names the peer it is for; any other goes to the server, without ``to``."""
    return message if to is None else {**message, "to": to}


ClientMessage = (
    Join
    | Offer
    | Answer
    | Candidate
    | Leave
    | SetMedia
    | StartRecording
    | StopRecording
    | SetLayout
    | ModerateAudio
    | Kick
    | Share
    | StopShare
    | StartStream
    | StopStream
)


def _reject_constant(name: str) -> NoReturn:
    # JSON has no NaN or Infinity; Python's json accepts them unless told not to.
    raise ValueError(f"{name} is not valid JSON")


_KIND_NAMES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    dict: "an object",
    bool: "true or false",
    list: "an array",
}


def typed_field(obj: dict[str, Any], key: str, kind: type, label: str, optional: bool = False) -> Any:
    """
    Return ``obj[key]`` checked against ``kind``; errors name the field as ``label``.

    An optional field may be absent or null, which gives None.
    """
    value = obj.get(key)
    if value is None and optional:
        return None
    if key not in obj:
        raise ProtocolError(INVALID_MESSAGE, f'The "{label}" field is missing.')
    # bool is a subclass of int, but true is not a number in JSON.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        expected = _KIND_NAMES[kind] + (" or null" if optional else "")
        raise ProtocolError(INVALID_MESSAGE, f'The "{label}" field must be {expected}.')
    return value


def check_room(room: str) -> str:
    """`room` if it may name a room (as a join names it; a WHIP publisher too), else `invalid_room`."""
    if not _ROOM_RE.fullmatch(room):
        raise ProtocolError(
            INVALID_ROOM,
            "The room name must be 1 to 64 characters among letters A-Z and a-z, digits, underscore and hyphen.",
        )
    return room


def check_name(name: str) -> str:
    """A participant's name, stripped, if it may be shown (a join's, a WHIP publisher's); else `invalid_name`."""
    name = name.strip()
    if not name:
        raise ProtocolError(INVALID_NAME, "The name must not be empty.")
    if len(name) > MAX_NAME_LENGTH:
        raise ProtocolError(INVALID_NAME, f"The name must be at most {MAX_NAME_LENGTH} characters.")
    if _NAME_FORBIDDEN_RE.search(name):
        raise ProtocolError(
            INVALID_NAME,
            "The name must not contain control characters or invalid Unicode.",
        )
    return name


def _parse_join(obj: dict[str, Any]) -> Join:
    room = check_room(typed_field(obj, "room", str, "room"))
    name = check_name(typed_field(obj, "name", str, "name"))
    token = typed_field(obj, "token", str, "token", optional=True)
    tier = typed_field(obj, "tier", str, "tier", optional=True)
    hide_self = typed_field(obj, "hideSelf", bool, "hideSelf", optional=True) or False
    mode = typed_field(obj, "mode", str, "mode", optional=True)
    if mode is not None and mode not in MODES:
        raise ProtocolError(UNKNOWN_MODE, f"The mode must be one of {', '.join(MODES)}, not {mode[:32]!r}.")
    return Join(room=room, name=name, token=token, tier=tier, hide_self=hide_self, mode=mode)


def _parse_offer(obj: dict[str, Any]) -> Offer:
    sdp = typed_field(obj, "sdp", str, "sdp")
    if not _SDP_START_RE.match(sdp):
        raise ProtocolError(
            INVALID_SDP,
            'The offer is not an SDP description: it must start with a "v=0" line.',
        )
    if not (_SDP_AUDIO_RE.search(sdp) and _SDP_VIDEO_RE.search(sdp)):
        raise ProtocolError(INVALID_SDP, "The offer must contain an audio and a video media section.")
    return Offer(sdp=sdp, to=typed_field(obj, "to", str, "to", optional=True))


def _parse_answer(obj: dict[str, Any]) -> Answer:
    sdp = typed_field(obj, "sdp", str, "sdp")
    if not _SDP_START_RE.match(sdp):
        raise ProtocolError(INVALID_SDP, 'The answer is not an SDP description: it must start with a "v=0" line.')
    return Answer(sdp=sdp, to=typed_field(obj, "to", str, "to", optional=True))


def is_candidate_line(candidate: str) -> bool:
    """Whether `candidate` ("candidate:...", as in `candidate.candidate` or an SDP fragment) is one aiortc can read."""
    return bool(_CANDIDATE_RE.fullmatch(candidate))


def _parse_candidate(obj: dict[str, Any]) -> Candidate:
    init = typed_field(obj, "candidate", dict, "candidate")
    candidate = typed_field(init, "candidate", str, "candidate.candidate")
    sdp_mid = typed_field(init, "sdpMid", str, "candidate.sdpMid", optional=True)
    sdp_mline_index = typed_field(init, "sdpMLineIndex", int, "candidate.sdpMLineIndex", optional=True)

    if sdp_mline_index is not None and not (0 <= sdp_mline_index <= _MAX_SDP_MLINE_INDEX):
        raise ProtocolError(
            INVALID_CANDIDATE,
            f"The sdpMLineIndex must be between 0 and {_MAX_SDP_MLINE_INDEX}.",
        )
    if candidate:
        if not is_candidate_line(candidate):
            raise ProtocolError(
                INVALID_CANDIDATE,
                'The candidate must be an ICE candidate line ("candidate:<foundation> <component> <transport> ...").',
            )
        if sdp_mid is None and sdp_mline_index is None:
            raise ProtocolError(
                INVALID_CANDIDATE,
                "The candidate must name its media section with sdpMid or sdpMLineIndex.",
            )
    return Candidate(
        candidate=candidate,
        sdp_mid=sdp_mid,
        sdp_mline_index=sdp_mline_index,
        to=typed_field(obj, "to", str, "to", optional=True),
    )


def _parse_leave(obj: dict[str, Any]) -> Leave:
    return Leave()


def _parse_set_media(obj: dict[str, Any]) -> SetMedia:
    return SetMedia(video=typed_field(obj, "video", bool, "video"), audio=typed_field(obj, "audio", bool, "audio"))


def _parse_set_layout(obj: dict[str, Any]) -> SetLayout:
    layout = obj.get("layout")
    if not isinstance(layout, (str, dict)):
        raise ProtocolError(INVALID_MESSAGE, 'The "layout" field must be a layout name or an object with regions.')
    return SetLayout(layout=layout)


#: The longest `mid` a `share` may name (RFC 8843 gives none; browsers use a few digits).
MAX_MID_LENGTH = 32


def _parse_share(obj: dict[str, Any]) -> Share:
    mid = typed_field(obj, "mid", str, "mid")
    if not 1 <= len(mid) <= MAX_MID_LENGTH:
        raise ProtocolError(INVALID_MESSAGE, f'The "mid" field must have 1 to {MAX_MID_LENGTH} characters.')
    return Share(mid)


#: The gain a moderator may give a participant's voice: 0 (silent) to 2 (+6 dB).
MAX_VOLUME = 2.0


def parse_moderate_audio(obj: dict[str, Any]) -> ModerateAudio:
    peer_id = typed_field(obj, "peerId", str, "peerId")
    muted = typed_field(obj, "muted", bool, "muted", optional=True)
    volume = obj.get("volume")
    if volume is not None:
        if isinstance(volume, bool) or not isinstance(volume, (int, float)):
            raise ProtocolError(INVALID_MESSAGE, 'The "volume" field must be a number or null.')
        if not 0 <= volume <= MAX_VOLUME:
            raise ProtocolError(INVALID_VOLUME, f"The volume must be a gain from 0 to {MAX_VOLUME:g}.")
    if muted is None and volume is None:
        raise ProtocolError(INVALID_MESSAGE, 'Give "muted", "volume" or both.')
    return ModerateAudio(peer_id=peer_id, muted=muted, volume=None if volume is None else float(volume))


#: The longest reason a moderator may give for removing a participant.
MAX_REASON_LENGTH = 200


def parse_kick(obj: dict[str, Any]) -> Kick:
    reason = typed_field(obj, "reason", str, "reason", optional=True)
    if reason is not None and (len(reason) > MAX_REASON_LENGTH or _NAME_FORBIDDEN_RE.search(reason)):
        raise ProtocolError(
            INVALID_MESSAGE, f"The reason must be at most {MAX_REASON_LENGTH} characters, without control characters."
        )
    return Kick(peer_id=typed_field(obj, "peerId", str, "peerId"), reason=reason or None)


_PARSERS: dict[str, Callable[[dict[str, Any]], ClientMessage]] = {
    "join": _parse_join,
    "offer": _parse_offer,
    "answer": _parse_answer,
    "candidate": _parse_candidate,
    "leave": _parse_leave,
    "setMedia": _parse_set_media,
    "moderateAudio": parse_moderate_audio,
    "kick": parse_kick,
    "startRecording": lambda obj: StartRecording(),
    "stopRecording": lambda obj: StopRecording(),
    "startStream": lambda obj: StartStream(
        typed_field(obj, "url", str, "url"), typed_field(obj, "tier", str, "tier", optional=True)
    ),
    "stopStream": lambda obj: StopStream(typed_field(obj, "id", str, "id")),
    "setLayout": _parse_set_layout,
    "share": _parse_share,
    "stopShare": lambda obj: StopShare(),
}


def parse_client_message(text: str | bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> ClientMessage:
    """
    Validate one WebSocket message from a client and return it typed.

    :raises ProtocolError: with the code to send back in an ``error`` message.
    """
    if isinstance(text, bytes):
        raise ProtocolError(BINARY_NOT_SUPPORTED, "Binary messages are not supported: send JSON text.")
    # A character is at least one byte, so a long string needs no encoding to reject.
    if len(text) > max_bytes or len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise ProtocolError(MESSAGE_TOO_LARGE, f"The message is larger than {max_bytes} bytes.")

    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        # ValueError covers JSONDecodeError, NaN/Infinity and oversized integers.
        raise ProtocolError(INVALID_JSON, "The message is not valid JSON.") from None

    if not isinstance(obj, dict):
        raise ProtocolError(INVALID_MESSAGE, "The message must be a JSON object.")
    message_type = typed_field(obj, "type", str, "type")
    parser = _PARSERS.get(message_type)
    if parser is None:
        raise ProtocolError(UNKNOWN_TYPE, f"The message type {message_type[:64]!r} is not known.")
    return parser(obj)


def joined(
    room: str,
    peer_id: str,
    participants: list[dict],
    ice_servers: list[dict],
    recording: dict | None = None,
    layout: str | dict = "grid",
    mode: str = "mcu",
    grants: Iterable[str] = (),
    layouts: Iterable[str] = (),
    screens: list[str] | None = None,
) -> dict:
    """
    Confirm a join: the caller's ``peer_id``, who else is in the room (dicts with
    ``peerId`` and ``name``), the ICE servers to configure before offering,
    the room's recording in progress (``file``, ``startedAt``) or None, the
    room's current layout (as ``setLayout`` takes it) and the room's mode, what
    the caller may do (its grants: a page shows the controls they allow), the
    built-in layouts ``setLayout`` accepts by name, and the peerIds of those who
    share a screen now.
    """
    return {
        "type": "joined",
        "room": room,
        "peerId": peer_id,
        "participants": list(participants),
        "iceServers": list(ice_servers),
        "recording": recording,
        "layout": layout,
        "mode": mode,
        "grants": sorted(grants),
        "layouts": list(layouts),
        "screens": list(screens or ()),
    }


def answer(sdp: str) -> dict:
    """The server's SDP answer; it carries all of the server's ICE candidates (a client's answer's shape)."""
    return Answer(sdp).to_message()


def server_offer(sdp: str, tracks: list[dict]) -> dict:
    """The server's renegotiation offer in an sfu room, with the full map of ``mid`` to publisher
    (``peerId``, ``kind``) of the tracks it forwards to this peer; the client answers."""
    return {"type": "offer", "sdp": sdp, "tracks": list(tracks)}


def relayed(sender: str, message: Offer | Answer | Candidate) -> dict:
    """A mesh peer's message as the server delivers it: ``from``, the sender's peerId, in place of ``to``."""
    return {**replace(message, to=None).to_message(), "from": sender}


def participant_joined(peer_id: str, name: str) -> dict:
    """Tell the others in a room that a peer joined."""
    return {"type": "participantJoined", "peerId": peer_id, "name": name}


#: Why a participant left, as ``participantLeft`` says: it sent ``leave``, its connection
#: closed or failed, or a moderator removed it.
LEFT = "left"
DISCONNECTED = "disconnected"
KICKED_OUT = "kicked"


def participant_left(peer_id: str, reason: str) -> dict:
    """Tell the others in a room that a peer left, and why (LEFT, DISCONNECTED, KICKED_OUT)."""
    return {"type": "participantLeft", "peerId": peer_id, "reason": reason}


def participant_media(peer_id: str, video: bool, audio: bool) -> dict:
    """Tell the room what a peer now sends (camera or microphone turned off or on)."""
    return {"type": "participantMedia", "peerId": peer_id, "video": video, "audio": audio}


def participant_audio(peer_id: str, muted: bool, volume: float, by: str | None) -> dict:
    """Tell the room that a moderator (`by`; None: the HTTP API) muted or set the volume of a peer."""
    return {"type": "participantAudio", "peerId": peer_id, "muted": muted, "volume": volume, "by": by}


def speaking(peer_id: str, is_speaking: bool) -> dict:
    """Tell the room that a participant started or stopped speaking."""
    return {"type": "speaking", "peerId": peer_id, "speaking": is_speaking}


def active_speaker(peer_id: str | None) -> dict:
    """Tell the room who holds the floor now (None: its holder left, nobody has it)."""
    return {"type": "activeSpeaker", "peerId": peer_id}


def recording_started(file: str, started_at: int) -> dict:
    """Tell the room that its recording started: the file name and when its time 0 was (ms since the epoch)."""
    return {"type": "recordingStarted", "file": file, "startedAt": started_at}


def recording_stopped(
    file: str, started_at: int | None, duration: float, reason: str, message: str | None = None
) -> dict:
    """Tell the room that its recording ended (`reason` "stopped" or "failed", with a `message`).

    `started_at` is None when it ended before the file's first picture.
    """
    stopped = {"type": "recordingStopped", "file": file, "startedAt": started_at, "duration": duration}
    stopped["reason"] = reason
    if message is not None:
        stopped["message"] = message
    return stopped


def stream_started(stream: dict) -> dict:
    """Tell the room that a stream is live: as the server describes it (``id``, ``url`` with its key
    redacted, ``tier``, ``state``, ``failures``)."""
    return {"type": "streamStarted", **stream}


def stream_failed(stream: dict) -> dict:
    """Tell the room that a stream's attempt failed (``error``) and when it tries again (``retryIn`` s)."""
    return {"type": "streamFailed", **stream}


def stream_stopped(stream: dict, reason: str) -> dict:
    """Tell the room that a stream ended (``reason`` "stopped")."""
    return {"type": "streamStopped", **stream, "reason": reason}


def tier(name: str, reason: str, ceiling: str) -> dict:
    """The tier this peer now receives ("audio": no video), why ("join", "congestion", "probe"), and its ceiling."""
    return {"type": "tier", "tier": name, "reason": reason, "ceiling": ceiling}


def visibility(on_screen: bool, send_video: bool) -> dict:
    """To a publisher of an mcu room: whether its video is in a canvas, and whether to send it."""
    return {"type": "visibility", "onScreen": on_screen, "sendVideo": send_video}


def layout_changed(layout: str | dict, by: str | None) -> dict:
    """Tell the room its layout changed: the layout as ``setLayout`` takes it, and who set it (None: the API)."""
    return {"type": "layoutChanged", "layout": layout, "by": by}


def screen_share(peer_id: str, sharing: bool) -> dict:
    """To everybody in the room: ``peer_id`` started or stopped sharing a screen."""
    return {"type": "screenShare", "peerId": peer_id, "sharing": sharing}


def error(code: str, message: str) -> dict:
    """Report a refused message; the connection and the room go on."""
    return {"type": "error", "code": code, "message": message}


# What the client reads: a typed view of each server message it acts on (``read_server_message``).


@dataclass(frozen=True)
class Participant:
    """Another participant as ``joined`` lists it."""

    peer_id: str
    name: str


@dataclass(frozen=True)
class Joined:
    """The server's reply to a successful ``join`` (see :func:`joined`)."""

    room: str
    peer_id: str
    participants: tuple[Participant, ...]
    #: RTCIceServer dictionaries, as signaling.ice.rtc_configuration() takes them.
    ice_servers: list[dict[str, Any]]
    recording: dict[str, Any] | None
    layout: str | dict[str, Any]
    mode: str
    #: What this participant may do (signaling/grants.py); empty from a server older than the field.
    grants: frozenset[str] = frozenset()
    #: The built-in layout names the server accepts; empty from a server older than the field.
    layouts: tuple[str, ...] = ()
    #: The peerIds of those sharing a screen when it joined.
    screens: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServerAnswer:
    """The server's SDP answer to the client's offer."""

    sdp: str


@dataclass(frozen=True)
class ForwardedTrack:
    """sfu rooms: whose track (``peer_id``, ``kind``) the server's offer carries on ``mid``."""

    mid: str
    peer_id: str
    kind: str


@dataclass(frozen=True)
class ServerOffer:
    """sfu rooms: the server's renegotiation offer and its full map of forwarded tracks (see :func:`server_offer`)."""

    sdp: str
    tracks: tuple[ForwardedTrack, ...]


@dataclass(frozen=True)
class Relayed:
    """Mesh rooms: another peer's offer, answer or candidate, relayed by the server (see :func:`relayed`)."""

    sender: str
    #: The message as its sender built it, less ``to`` (which named us): the server drops it.
    message: Offer | Answer | Candidate


@dataclass(frozen=True)
class ParticipantJoined:
    peer_id: str
    name: str


@dataclass(frozen=True)
class ParticipantLeft:
    peer_id: str
    #: "left", "disconnected" or "kicked"; None from a server older than the field.
    reason: str | None = None


@dataclass(frozen=True)
class LayoutChanged:
    layout: str | dict[str, Any]
    #: Who set it; None: the HTTP API.
    by: str | None


@dataclass(frozen=True)
class Tier:
    """The tier the peer now receives, why it changed, and the ceiling it may climb back to (see :func:`tier`)."""

    tier: str
    reason: str
    ceiling: str


@dataclass(frozen=True)
class Visibility:
    """mcu rooms: whether the peer's video is in a canvas, and whether the server wants it sent."""

    on_screen: bool
    send_video: bool


@dataclass(frozen=True)
class ScreenShare:
    """Someone started or stopped sharing a screen (mcu rooms)."""

    peer_id: str
    sharing: bool


@dataclass(frozen=True)
class Error:
    """A refused message (on the WebSocket, or on the chat channel); the session goes on."""

    code: str
    message: str


ServerMessage = (
    Joined
    | ServerAnswer
    | ServerOffer
    | Relayed
    | ParticipantJoined
    | ParticipantLeft
    | LayoutChanged
    | Tier
    | Visibility
    | ScreenShare
    | Error
)

#: The client's messages that a mesh room's server relays from peer to peer.
_RELAYED_PARSERS: dict[str, Callable[[dict[str, Any]], Offer | Answer | Candidate]] = {
    "offer": _parse_offer,
    "answer": _parse_answer,
    "candidate": _parse_candidate,
}


def _read_joined(obj: dict[str, Any]) -> Joined:
    participants = []
    for entry in typed_field(obj, "participants", list, "participants"):
        if not isinstance(entry, dict):
            raise ProtocolError(INVALID_MESSAGE, 'Each of "participants" must be an object.')
        peer_id, name = typed_field(entry, "peerId", str, "peerId"), typed_field(entry, "name", str, "name")
        participants.append(Participant(peer_id, name))
    layout = obj.get("layout")
    if not isinstance(layout, (str, dict)):
        raise ProtocolError(INVALID_MESSAGE, 'The "layout" field must be a layout name or an object with regions.')
    return Joined(
        room=typed_field(obj, "room", str, "room"),
        peer_id=typed_field(obj, "peerId", str, "peerId"),
        participants=tuple(participants),
        ice_servers=typed_field(obj, "iceServers", list, "iceServers"),
        recording=typed_field(obj, "recording", dict, "recording", optional=True),
        layout=layout,
        mode=typed_field(obj, "mode", str, "mode"),
        grants=frozenset(_strings(obj, "grants")),
        layouts=tuple(_strings(obj, "layouts")),
        screens=tuple(_strings(obj, "screens")),
    )


def _strings(obj: dict[str, Any], key: str) -> list[str]:
    """An optional array of strings (absent or null: empty)."""
    values = typed_field(obj, key, list, key, optional=True) or []
    if not all(isinstance(value, str) for value in values):
        raise ProtocolError(INVALID_MESSAGE, f'Each of "{key}" must be a string.')
    return values


def _read_server_offer(obj: dict[str, Any]) -> ServerOffer:
    tracks = []
    for entry in typed_field(obj, "tracks", list, "tracks"):
        if not isinstance(entry, dict):
            raise ProtocolError(INVALID_MESSAGE, 'Each of "tracks" must be an object.')
        tracks.append(
            ForwardedTrack(
                mid=typed_field(entry, "mid", str, "mid"),
                peer_id=typed_field(entry, "peerId", str, "peerId"),
                kind=typed_field(entry, "kind", str, "kind"),
            )
        )
    return ServerOffer(sdp=typed_field(obj, "sdp", str, "sdp"), tracks=tuple(tracks))


def _read_layout_changed(obj: dict[str, Any]) -> LayoutChanged:
    layout = _parse_set_layout(obj).layout
    return LayoutChanged(layout=layout, by=typed_field(obj, "by", str, "by", optional=True))


def read_error(obj: dict[str, Any]) -> Error:
    """An ``error`` object, from the WebSocket or from the chat channel."""
    return Error(typed_field(obj, "code", str, "code"), typed_field(obj, "message", str, "message"))


_READERS: dict[str, Callable[[dict[str, Any]], ServerMessage]] = {
    "joined": _read_joined,
    "answer": lambda obj: ServerAnswer(typed_field(obj, "sdp", str, "sdp")),
    "offer": _read_server_offer,
    "participantJoined": lambda obj: ParticipantJoined(
        typed_field(obj, "peerId", str, "peerId"), typed_field(obj, "name", str, "name")
    ),
    "participantLeft": lambda obj: ParticipantLeft(
        typed_field(obj, "peerId", str, "peerId"), typed_field(obj, "reason", str, "reason", optional=True)
    ),
    "layoutChanged": _read_layout_changed,
    "tier": lambda obj: Tier(
        typed_field(obj, "tier", str, "tier"),
        typed_field(obj, "reason", str, "reason"),
        typed_field(obj, "ceiling", str, "ceiling"),
    ),
    "visibility": lambda obj: Visibility(
        typed_field(obj, "onScreen", bool, "onScreen"), typed_field(obj, "sendVideo", bool, "sendVideo")
    ),
    "screenShare": lambda obj: ScreenShare(
        typed_field(obj, "peerId", str, "peerId"), typed_field(obj, "sharing", bool, "sharing")
    ),
    "error": read_error,
}


def read_server_message(obj: Any) -> ServerMessage | None:
    """
    The typed view of one decoded message from the server; None for a type the client
    does not act on (``speaking``, ``recordingStarted``...: it keeps them as they came).

    An ``offer``, ``answer`` or ``candidate`` with ``from`` is another peer's, relayed in a
    mesh room, and is checked as the server checked it before relaying.

    :raises ProtocolError: ``invalid_message`` when a message the client acts on is malformed.
    """
    if not isinstance(obj, dict):
        raise ProtocolError(INVALID_MESSAGE, "The message must be a JSON object.")
    message_type = typed_field(obj, "type", str, "type")
    relayed_parser = _RELAYED_PARSERS.get(message_type)
    if relayed_parser is not None and "from" in obj:
        sender = typed_field(obj, "from", str, "from")
        return Relayed(sender=sender, message=relayed_parser(obj))
    reader = _READERS.get(message_type)
    return None if reader is None else reader(obj)
