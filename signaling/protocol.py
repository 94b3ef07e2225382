"""
The signaling wire protocol: JSON text messages exchanged over the WebSocket.

Every inbound message goes through :func:`parse_client_message`, so the rest of the
server only ever sees well-formed, typed messages. Outbound messages are plain dicts
built here so their shape is defined in one place. ``docs/protocol.md`` is the contract
this module implements.
"""

import json
import re
from dataclasses import dataclass
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
INVALID_VOLUME = "invalid_volume"
INTERNAL_ERROR = "internal_error"
RECORDING_FAILED = "recording_failed"
ALREADY_RECORDING = "already_recording"
NOT_RECORDING = "not_recording"
UNKNOWN_TIER = "unknown_tier"
INVALID_LAYOUT = "invalid_layout"
UNKNOWN_MODE = "unknown_mode"
MODE_MISMATCH = "mode_mismatch"
UNEXPECTED_ANSWER = "unexpected_answer"
WRONG_MODE = "wrong_mode"
UNKNOWN_PEER = "unknown_peer"
#: The room's media process (a worker or a node) went away: join again, a new one takes the room.
RECONNECT = "reconnect"
#: The room directory (Redis) is unreachable: a room not already on this node cannot be placed.
DIRECTORY_UNAVAILABLE = "directory_unavailable"

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


@dataclass(frozen=True)
class Offer:
    """The client's SDP offer for its one upstream (audio and video)."""

    sdp: str
    #: Mesh rooms: the peerId of the participant it is for (the server relays it).
    to: str | None = None


@dataclass(frozen=True)
class Answer:
    """The client's SDP answer to an offer of the server (an sfu room's renegotiation)."""

    sdp: str
    #: Mesh rooms: the peerId of the participant whose offer it answers (the server relays it).
    to: str | None = None


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


@dataclass(frozen=True)
class Leave:
    """Leave the room; the WebSocket stays open and may join again."""


@dataclass(frozen=True)
class ModerateAudio:
    """Mute, unmute or set the volume of another participant's voice (grant ``moderate``)."""

    peer_id: str
    muted: bool | None
    volume: float | None


@dataclass(frozen=True)
class SetMedia:
    """What the peer is sending: a camera turned off shows the placeholder, not black."""

    video: bool
    audio: bool


@dataclass(frozen=True)
class StartRecording:
    """Record the room's composite and mix to a file on the server (grant ``record``)."""


@dataclass(frozen=True)
class StopRecording:
    """Stop the room's recording and finish its file (grant ``record``)."""


@dataclass(frozen=True)
class SetLayout:
    """Change the room's layout (grant ``layout``): a built-in name or ``{"regions": [...]}``.

    Only the shape is checked here; the media side validates the layout itself
    (``invalid_layout``).
    """

    layout: str | dict[str, Any]


ClientMessage = (
    Join | Offer | Answer | Candidate | Leave | SetMedia | StartRecording | StopRecording | SetLayout | ModerateAudio
)


def _reject_constant(name: str) -> NoReturn:
    # JSON has no NaN or Infinity; Python's json accepts them unless told not to.
    raise ValueError(f"{name} is not valid JSON")


_KIND_NAMES: dict[type, str] = {str: "a string", int: "an integer", dict: "an object", bool: "true or false"}


def _field(
    obj: dict[str, Any], key: str, kind: type, label: str, optional: bool = False
) -> Any:
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


def _parse_join(obj: dict[str, Any]) -> Join:
    room = _field(obj, "room", str, "room")
    if not _ROOM_RE.fullmatch(room):
        raise ProtocolError(
            INVALID_ROOM,
            "The room name must be 1 to 64 characters among letters A-Z and a-z, "
            "digits, underscore and hyphen.",
        )

    name = _field(obj, "name", str, "name").strip()
    if not name:
        raise ProtocolError(INVALID_NAME, "The name must not be empty.")
    if len(name) > MAX_NAME_LENGTH:
        raise ProtocolError(
            INVALID_NAME, f"The name must be at most {MAX_NAME_LENGTH} characters."
        )
    if _NAME_FORBIDDEN_RE.search(name):
        raise ProtocolError(
            INVALID_NAME,
            "The name must not contain control characters or invalid Unicode.",
        )
    token = _field(obj, "token", str, "token", optional=True)
    tier = _field(obj, "tier", str, "tier", optional=True)
    hide_self = _field(obj, "hideSelf", bool, "hideSelf", optional=True) or False
    mode = _field(obj, "mode", str, "mode", optional=True)
    if mode is not None and mode not in MODES:
        raise ProtocolError(UNKNOWN_MODE, f"The mode must be one of {', '.join(MODES)}, not {mode[:32]!r}.")
    return Join(room=room, name=name, token=token, tier=tier, hide_self=hide_self, mode=mode)


def _parse_offer(obj: dict[str, Any]) -> Offer:
    sdp = _field(obj, "sdp", str, "sdp")
    if not _SDP_START_RE.match(sdp):
        raise ProtocolError(
            INVALID_SDP,
            'The offer is not an SDP description: it must start with a "v=0" line.',
        )
    if not (_SDP_AUDIO_RE.search(sdp) and _SDP_VIDEO_RE.search(sdp)):
        raise ProtocolError(
            INVALID_SDP, "The offer must contain an audio and a video media section."
        )
    return Offer(sdp=sdp, to=_field(obj, "to", str, "to", optional=True))


def _parse_answer(obj: dict[str, Any]) -> Answer:
    sdp = _field(obj, "sdp", str, "sdp")
    if not _SDP_START_RE.match(sdp):
        raise ProtocolError(INVALID_SDP, 'The answer is not an SDP description: it must start with a "v=0" line.')
    return Answer(sdp=sdp, to=_field(obj, "to", str, "to", optional=True))


def _parse_candidate(obj: dict[str, Any]) -> Candidate:
    init = _field(obj, "candidate", dict, "candidate")
    candidate = _field(init, "candidate", str, "candidate.candidate")
    sdp_mid = _field(init, "sdpMid", str, "candidate.sdpMid", optional=True)
    sdp_mline_index = _field(
        init, "sdpMLineIndex", int, "candidate.sdpMLineIndex", optional=True
    )

    if sdp_mline_index is not None and not (
        0 <= sdp_mline_index <= _MAX_SDP_MLINE_INDEX
    ):
        raise ProtocolError(
            INVALID_CANDIDATE,
            f"The sdpMLineIndex must be between 0 and {_MAX_SDP_MLINE_INDEX}.",
        )
    if candidate:
        if not _CANDIDATE_RE.fullmatch(candidate):
            raise ProtocolError(
                INVALID_CANDIDATE,
                "The candidate must be an ICE candidate line "
                '("candidate:<foundation> <component> <transport> ...").',
            )
        if sdp_mid is None and sdp_mline_index is None:
            raise ProtocolError(
                INVALID_CANDIDATE,
                "The candidate must name its media section with sdpMid or "
                "sdpMLineIndex.",
            )
    return Candidate(
        candidate=candidate,
        sdp_mid=sdp_mid,
        sdp_mline_index=sdp_mline_index,
        to=_field(obj, "to", str, "to", optional=True),
    )


def _parse_leave(obj: dict[str, Any]) -> Leave:
    return Leave()


def _parse_set_media(obj: dict[str, Any]) -> SetMedia:
    return SetMedia(video=_field(obj, "video", bool, "video"), audio=_field(obj, "audio", bool, "audio"))


def _parse_set_layout(obj: dict[str, Any]) -> SetLayout:
    layout = obj.get("layout")
    if not isinstance(layout, (str, dict)):
        raise ProtocolError(INVALID_MESSAGE, 'The "layout" field must be a layout name or an object with regions.')
    return SetLayout(layout=layout)


#: The gain a moderator may give a participant's voice: 0 (silent) to 2 (+6 dB).
MAX_VOLUME = 2.0


def parse_moderate_audio(obj: dict[str, Any]) -> ModerateAudio:
    peer_id = _field(obj, "peerId", str, "peerId")
    muted = _field(obj, "muted", bool, "muted", optional=True)
    volume = obj.get("volume")
    if volume is not None:
        if isinstance(volume, bool) or not isinstance(volume, (int, float)):
            raise ProtocolError(INVALID_MESSAGE, 'The "volume" field must be a number or null.')
        if not 0 <= volume <= MAX_VOLUME:
            raise ProtocolError(INVALID_VOLUME, f"The volume must be a gain from 0 to {MAX_VOLUME:g}.")
    if muted is None and volume is None:
        raise ProtocolError(INVALID_MESSAGE, 'Give "muted", "volume" or both.')
    return ModerateAudio(peer_id=peer_id, muted=muted, volume=None if volume is None else float(volume))


_PARSERS = {
    "join": _parse_join,
    "offer": _parse_offer,
    "answer": _parse_answer,
    "candidate": _parse_candidate,
    "leave": _parse_leave,
    "setMedia": _parse_set_media,
    "moderateAudio": parse_moderate_audio,
    "startRecording": lambda obj: StartRecording(),
    "stopRecording": lambda obj: StopRecording(),
    "setLayout": _parse_set_layout,
}


def parse_client_message(text: str | bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> ClientMessage:
    """
    Validate one WebSocket message from a client and return it typed.

    :raises ProtocolError: with the code to send back in an ``error`` message.
    """
    if isinstance(text, bytes):
        raise ProtocolError(
            BINARY_NOT_SUPPORTED, "Binary messages are not supported: send JSON text."
        )
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
    message_type = _field(obj, "type", str, "type")
    parser = _PARSERS.get(message_type)
    if parser is None:
        raise ProtocolError(
            UNKNOWN_TYPE, f"The message type {message_type[:64]!r} is not known."
        )
    return parser(obj)


def joined(
    room: str,
    peer_id: str,
    participants: list[dict],
    ice_servers: list[dict],
    recording: dict | None = None,
    layout: str | dict = "grid",
    mode: str = "mcu",
) -> dict:
    """
    Confirm a join: the caller's ``peer_id``, who else is in the room (dicts with
    ``peerId`` and ``name``), the ICE servers to configure before offering,
    the room's recording in progress (``file``, ``startedAt``) or None, and the
    room's current layout (as ``setLayout`` takes it) and the room's mode.
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
    }


def answer(sdp: str) -> dict:
    """The server's SDP answer; it carries all of the server's ICE candidates."""
    return {"type": "answer", "sdp": sdp}


def server_offer(sdp: str, tracks: list[dict]) -> dict:
    """The server's renegotiation offer in an sfu room, with the full map of ``mid`` to publisher
    (``peerId``, ``kind``) of the tracks it forwards to this peer; the client answers."""
    return {"type": "offer", "sdp": sdp, "tracks": list(tracks)}


def participant_joined(peer_id: str, name: str) -> dict:
    """Tell the others in a room that a peer joined."""
    return {"type": "participantJoined", "peerId": peer_id, "name": name}


def participant_left(peer_id: str) -> dict:
    """Tell the others in a room that a peer left, closed or lost its connection."""
    return {"type": "participantLeft", "peerId": peer_id}


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


def tier(name: str, reason: str, ceiling: str) -> dict:
    """The tier this peer now receives ("audio": no video), why ("join", "congestion", "probe"), and its ceiling."""
    return {"type": "tier", "tier": name, "reason": reason, "ceiling": ceiling}


def visibility(on_screen: bool, send_video: bool) -> dict:
    """To a publisher of an mcu room: whether its video is in a canvas, and whether to send it."""
    return {"type": "visibility", "onScreen": on_screen, "sendVideo": send_video}


def layout_changed(layout: str | dict, by: str | None) -> dict:
    """Tell the room its layout changed: the layout as ``setLayout`` takes it, and who set it (None: the API)."""
    return {"type": "layoutChanged", "layout": layout, "by": by}


def error(code: str, message: str) -> dict:
    """Report a refused message; the connection and the room go on."""
    return {"type": "error", "code": code, "message": message}
