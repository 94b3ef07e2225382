"""The messages between the server and a room's video process, and the one codec for them.

The server (`mcu.media.video_pipeline.VideoPipeline`) and the room's picture
process (`mcu.media.video_process.VideoMixer`) talk over a socket pair. Each
message is a frozen dataclass below, named for what it says, and each side
dispatches with `match` on its class: a reader finds every place a message is
made or handled by its name.

On the wire a message is its length (4 bytes, network order), then the pickle
of its tag (its class's index in MESSAGES) and its fields. Both ends are the
same code, started together, so pickle's reach is no risk here. The tag, not the
class, is pickled because looking a class up by name on both ends cost more
than the rest of a frame message. What the typed messages cost over the
string-tagged tuples they replaced (encode then read, 100 000 times, best of
seven, CPU time on the development machine, Python 3.11):

    an upstream frame of 1200 bytes            1.4 µs as a tuple    2.2 µs as `UpstreamFrame`
    a tick: three outputs' packets (11.5 kB),  9.3 µs as a tuple   14.8 µs as `Tick`
      the counters and three encoders

About 1 µs more per upstream frame and 5.5 µs more per tick (making the
dataclasses again on the reading side, mostly): for 16 publishers at 30 fps,
under half a millisecond a second of either process.
"""

from __future__ import annotations

import pickle
import struct
from collections import defaultdict
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Callable, Generic, TypeVar, Union

if TYPE_CHECKING:
    from mcu.media.encoders import Output
    from mcu.media.video_process import SceneSpec, Settings

_HEADER = struct.Struct("!I")
#: A message larger than this is a bug, not a picture.
MAX_MESSAGE = 64 * 1024 * 1024


class ChannelError(ValueError):
    """What came over the socket is not a message of this module: a bug, or a stream out of step."""


# --- from the server to the video process ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    """The first message a video process gets, before anything else: what the room is."""

    settings: Settings


@dataclass(frozen=True, slots=True)
class UpstreamFrame:
    """One publisher's encoded video frame, for its decoder."""

    peer_id: str
    codec_name: str
    data: bytes
    #: Its RTP timestamp (the decoder's pts).
    timestamp: int


@dataclass(frozen=True, slots=True)
class Scenes:
    """What each canvas shows: the shared one (None) and each hide-self peer's own, by that peer's id."""

    scenes: dict[str | None, SceneSpec]


@dataclass(frozen=True, slots=True)
class Outputs:
    """The outputs in use: the encoders to keep and feed; the others are released."""

    outputs: frozenset[Output]


@dataclass(frozen=True, slots=True)
class KeyframeRequest:
    """A keyframe from the encoder of `output` (None: from every encoder)."""

    output: Output | None


@dataclass(frozen=True, slots=True)
class Forget:
    """A publisher left: its decoder and latest picture go."""

    peer_id: str


@dataclass(frozen=True, slots=True)
class Stop:
    """The room closed: the process ends."""


# --- from the video process to the server ----------------------------------------------------


@dataclass
class Counters:
    """What the video process's mixer did; a copy goes with every tick, so that the parent's copy is consistent.

    Defined here, not in mcu/media/video_process.py: that module runs as `__main__` in the
    process, and a class of `__main__` would not unpickle in the server.
    """

    ticks: int = 0
    frames: int = 0
    #: Ticks missed because compose and encode overran.
    skipped: int = 0
    compose_seconds: float = 0.0
    encode_seconds: float = 0.0
    keyframes: int = 0
    #: Frames encoded per tier, all of its outputs counted once per encode.
    tier_frames: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    #: Canvases made by scaling a larger one down instead of composing again.
    scaled: int = 0
    encoders_created: int = 0
    encoders_released: int = 0
    decodes: int = 0
    decode_errors: int = 0
    decode_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class EncoderReport:
    """One encoder of the video process, as it reports it with every tick."""

    codec_name: str
    frames: int
    keyframes: int

    def __reduce__(self) -> tuple[type[EncoderReport], tuple[str, int, int]]:
        # Its class and fields: a frozen slots dataclass otherwise pickles through Python-level get/setstate.
        return EncoderReport, (self.codec_name, self.frames, self.keyframes)


@dataclass(frozen=True, slots=True)
class Tick:
    """One tick of the room's video clock: the packets of each output encoded on it, and the counters."""

    #: The packets' pts (90 kHz, from the room's epoch).
    pts: int
    #: Each output encoded on this tick: its packets, as (data, keyframe).
    packets: dict[Output, list[tuple[bytes, bool]]]
    #: A copy of the process's counters, taken after this tick.
    counters: Counters
    encoders: dict[Output, EncoderReport]


@dataclass(frozen=True, slots=True)
class PliRequest:
    """A publisher's frame could not be decoded: it should be asked for a keyframe (PLI)."""

    peer_id: str


ToProcess = Union[Start, UpstreamFrame, Scenes, Outputs, KeyframeRequest, Forget, Stop]
ToServer = Union[Tick, PliRequest]
Message = Union[ToProcess, ToServer]
#: The message classes each way: what the reader of each side accepts.
TO_PROCESS: tuple[type[ToProcess], ...] = (Start, UpstreamFrame, Scenes, Outputs, KeyframeRequest, Forget, Stop)
TO_SERVER: tuple[type[ToServer], ...] = (Tick, PliRequest)
#: Every message class; its index here is its tag on the wire.
MESSAGES: tuple[type[Message], ...] = (*TO_PROCESS, *TO_SERVER)


def _fields_of(cls: type) -> Callable[[Any], tuple[Any, ...]]:
    """A function that gives a message's fields as a tuple, in order (an attrgetter: no Python frame)."""
    names = [f.name for f in fields(cls)]
    if len(names) > 1:
        return attrgetter(*names)
    if names:
        get = attrgetter(names[0])
        return lambda message: (get(message),)
    return lambda message: ()


_TAGS: dict[type, int] = {cls: tag for tag, cls in enumerate(MESSAGES)}
_FIELDS = {cls: _fields_of(cls) for cls in MESSAGES}

M = TypeVar("M", bound=Message)


def encode(message: Message) -> bytes:
    """A message as it goes on the socket: its length, then the pickle of its tag and its fields."""
    cls = type(message)
    payload = pickle.dumps((_TAGS[cls], _FIELDS[cls](message)), protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


class MessageReader(Generic[M]):
    """Splits a byte stream, whatever chunks it arrives in, into the messages of one direction (`accepts`)."""

    def __init__(self, accepts: tuple[type[M], ...]) -> None:
        self._accepts: dict[int, type[M]] = {_TAGS[cls]: cls for cls in accepts}
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[M]:
        """The messages completed by `data`, in order.

        A message that does not unpickle, or is not one of `accepts`, raises
        ChannelError; it is consumed (and so are the messages before it in this
        feed), and the stream goes on after it. A length past MAX_MESSAGE means
        the stream is out of step: it raises again on every feed.
        """
        buffer = self._buffer
        buffer += data
        messages: list[M] = []
        start = 0
        try:
            while len(buffer) - start >= _HEADER.size:
                (length,) = _HEADER.unpack_from(buffer, start)
                if length > MAX_MESSAGE:
                    raise ChannelError(f"a message of {length} bytes: the stream is out of step")
                end = start + _HEADER.size + length
                if len(buffer) < end:
                    break
                with memoryview(buffer)[start + _HEADER.size : end] as payload:
                    start = end
                    messages.append(self._decode(payload))
        finally:
            del buffer[:start]
        return messages

    def _decode(self, payload: memoryview) -> M:
        try:
            tag, values = pickle.loads(payload)
        except Exception as error:
            raise ChannelError(f"an unreadable message of {len(payload)} bytes: {error!r}") from error
        cls = self._accepts.get(tag) if isinstance(tag, int) else None
        if cls is None:
            known = MESSAGES[tag].__name__ if isinstance(tag, int) and 0 <= tag < len(MESSAGES) else "no message"
            raise ChannelError(f"not a message this side reads: tag {tag!r} ({known})")
        try:
            return cls(*values)
        except TypeError as error:
            raise ChannelError(f"a {cls.__name__} with the wrong fields: {error}") from error
