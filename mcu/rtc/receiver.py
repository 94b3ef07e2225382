"""Receiving encoded frames: an aiortc receiver that skips its decoder.

Both ends need it: the MCU decodes audio itself on the room's audio thread, and
load peers count what they receive without paying for a decode. It relies on
aiortc internals (tests/test_aiortc_internals.py covers it).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

from aiortc import RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from mcu.rtc.jitter import MAX_WAIT, NACK_RETRY, NACK_TRIES, PacedNacks, VideoJitterBuffer
from mcu.rtc.rate import count_rate_per_packet

logger = logging.getLogger(__name__)

#: Takes each encoded frame as the jitter buffer lets it go, on the event loop.
FrameHandler = Callable[[JitterFrame], None]


class _EncodedHandoff:
    """Stands in for an RTCRtpReceiver's decoder queue.

    `put()` runs on the event loop (from the receiver's RTP handler): frames go to
    `on_frame` at once, or else to the remote track's queue. `get()` runs on aiortc's
    decoder thread: it blocks until the receiver stops (puts None) and then returns
    None, so the thread ends the track and exits as it would after decoding.
    """

    def __init__(self, track_queue: asyncio.Queue, on_frame: FrameHandler | None) -> None:
        self._track_queue = track_queue
        self._on_frame = on_frame
        self._stopped = threading.Event()
        _waiting.add(self)

    def put(self, item: tuple[RTCRtpCodecParameters, JitterFrame] | None) -> None:
        if item is None:
            self._stopped.set()
        elif not self._stopped.is_set():
            codec, frame = item
            # Which decoder the frame needs: the receiver knows, the frame alone does not.
            frame.codec_name = codec.name.lower()  # type: ignore[attr-defined]
            if self._on_frame is None:
                self._track_queue.put_nowait(frame)
                return
            try:
                self._on_frame(frame)
            except Exception:
                # Raised into aiortc's receive loop it would end the whole transport: this frame is lost instead.
                logger.exception("a received frame could not be handled")

    def get(self) -> None:
        self._stopped.wait()
        return None


#: Handoffs whose decoder thread may be waiting in `get()`.
_waiting: weakref.WeakSet[_EncodedHandoff] = weakref.WeakSet()


def _release_waiting() -> None:
    """Let every waiting decoder thread end: aiortc's are not daemons, and the interpreter joins those
    at exit, so a process whose loop ended without closing its peer connections would never exit.

    Registered with `threading._register_atexit`, which runs before that join (CPython's own
    concurrent.futures wakes its idle workers the same way). It spares the threads a timed wait:
    32 of them in a 16-peer room, each woken twice a second to check for exit, cost the event
    loop the GIL and the machine a context switch 64 times a second.
    """
    for handoff in list(_waiting):
        handoff._stopped.set()


threading._register_atexit(_release_waiting)  # type: ignore[attr-defined]


#: Audio packets the jitter buffer holds (aiortc's own size for audio).
AUDIO_CAPACITY = 16
#: RTP timestamps whose audio level is remembered until their frame leaves the jitter buffer.
_LEVELS_KEPT = 64


class _LevelTagger:
    """Wraps an audio receiver's jitter buffer: each frame out carries its RFC 6464 level.

    aiortc parses the `ssrc-audio-level` header extension into
    `packet.extensions.audio_level` (voice activity, level in -dBov) but drops it
    when it assembles frames. Frames leave the buffer a packet or more after they
    arrive, so levels are kept by RTP timestamp until then. A frame
    gets `audio_level`: the level in dBov (-127..0), or None when the sender did
    not send the header.
    """

    def __init__(self, buffer: JitterBuffer) -> None:
        self._buffer = buffer
        self._levels: dict[int, int] = {}

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        level = packet.extensions.audio_level
        if level is not None:
            self._levels[packet.timestamp] = -level[1]
            if len(self._levels) > _LEVELS_KEPT:
                del self._levels[next(iter(self._levels))]
        pli, frame = self._buffer.add(packet)
        if frame is not None:
            frame.audio_level = self._levels.pop(frame.timestamp, None)  # type: ignore[attr-defined]
        return pli, frame

    def __getattr__(self, name: str) -> Any:
        return getattr(self._buffer, name)


class _EachPacket:
    """Stands in for an audio receiver's jitter buffer: each packet leaves at once as a frame (an Opus
    packet is one frame), with its RFC 6464 level, in the order it came.

    For a consumer with a playout buffer of its own (the room's mixer): aiortc's buffer, at any
    prefetch, stops letting frames go at a lost packet until 16 more have come (320 ms of silence),
    then keeps that backlog; and a consumer that sees each packet as it comes can tell a loss, use
    the next packet's FEC, and know how late each one is. The frame's `timestamp` is the RTP
    timestamp as aiortc maps it: right modulo 2**32 even when packets come out of order.
    """

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        frame = JitterFrame(packet._data, packet.timestamp)  # type: ignore[attr-defined]
        level = packet.extensions.audio_level
        frame.audio_level = None if level is None else -level[1]  # type: ignore[attr-defined]
        return False, frame


def install_encoded_receiver(
    receiver: RTCRtpReceiver, on_frame: FrameHandler | None = None, audio_in_order: bool = True
) -> None:
    """Make `receiver`'s track yield encoded `JitterFrame`s instead of decoded frames.

    With `on_frame`, each frame is handed to it as it leaves the jitter buffer
    instead (no task wakes up per frame); the track then only ends, when the
    receiver stops. Call it before the receiver starts, i.e. in the peer
    connection's "track" event. The jitter buffer, NACK, REMB (its rate counted by
    `mcu.rtc.rate.WindowRate`) and receiver reports still run, video's with the
    jitter buffer and NACKs of mcu/rtc/jitter.py; the receiver no
    longer sends PLIs on decode errors, since there are none. Audio
    frames carry the sender's RFC 6464 level as `audio_level` (see `_LevelTagger`). Without
    `audio_in_order`, audio packets are handed on as they come, lost or out of order (`_EachPacket`).
    """
    if isinstance(receiver._RTCRtpReceiver__decoder_queue, _EncodedHandoff):  # type: ignore[attr-defined]
        return  # already: a track handed to another consumer (an sfu section carrying another publisher)
    if receiver._RTCRtpReceiver__decoder_thread is not None:  # type: ignore[attr-defined]
        raise RuntimeError("the receiver has already started decoding")
    if receiver._track is None:
        raise RuntimeError("the receiver has no remote track yet")
    receiver._RTCRtpReceiver__decoder_queue = _EncodedHandoff(receiver._track._queue, on_frame)  # type: ignore[attr-defined]
    count_rate_per_packet(receiver)
    if receiver._track.kind == "video":
        install_video_jitter_buffer(receiver)
    elif receiver._track.kind == "audio" and not audio_in_order:
        receiver._RTCRtpReceiver__jitter_buffer = _EachPacket()  # type: ignore[attr-defined]
    elif receiver._track.kind == "audio":
        # aiortc holds 4 frames of audio before it lets one go (80 ms) but then lets one go per packet
        # that comes, so the hold absorbs no jitter: it is latency only. Whoever takes these frames
        # has a jitter buffer of its own (the room's mixer does), so one frame is held: the least
        # there can be, since a frame is known complete only when the next one starts.
        buffer = JitterBuffer(capacity=AUDIO_CAPACITY, prefetch=1)
        receiver._RTCRtpReceiver__jitter_buffer = _LevelTagger(buffer)  # type: ignore[attr-defined]


def install_video_jitter_buffer(
    receiver: RTCRtpReceiver, max_wait: float = MAX_WAIT, nack_tries: int = NACK_TRIES, nack_retry: float = NACK_RETRY
) -> None:
    """Give a video `receiver` the jitter buffer and NACKs of mcu/rtc/jitter.py, decoding or not.

    A lost frame is given up within half a second and a keyframe asked for, and NACKs do not
    flood a congested link: aiortc's own buffer held every frame behind a packet lost for good
    (with its retransmissions) until 512 more had come, which froze a 300 kbit/s publisher's
    tile for 10-20 s on the server and a client's picture for 24 s behind a 300 kbit/s
    downlink (scripts/bench_network.py, `300k-short`). A client of the composite waits longer
    (`max_wait`, `nack_tries`, `nack_retry`: mcu/rtc/jitter.py DOWNLINK_*). Call it before the receiver starts.
    """
    codecs: dict = receiver._RTCRtpReceiver__codecs  # type: ignore[attr-defined]

    def codec_of(payload_type: int) -> str | None:
        codec = codecs.get(payload_type)
        return None if codec is None else codec.name.lower()

    receiver._RTCRtpReceiver__jitter_buffer = VideoJitterBuffer(codec_of, max_wait=max_wait)  # type: ignore[attr-defined]
    receiver._RTCRtpReceiver__nack_generator = PacedNacks(tries=nack_tries, retry=nack_retry)  # type: ignore[attr-defined]


def video_losses(receiver: RTCRtpReceiver) -> tuple[int, int]:
    """Frames an encoded video receiver gave up and keyframes it asked for (mcu/rtc/jitter.py); 0, 0 otherwise."""
    buffer = receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
    if not isinstance(buffer, VideoJitterBuffer):
        return 0, 0
    return buffer.frames_dropped, buffer.keyframes_asked


def send_pli(receiver: RTCRtpReceiver) -> bool:
    """Send a PLI for the stream `receiver` receives; False while it has received nothing.

    aiortc's receiver sends PLIs itself only when its jitter buffer loses a frame; it
    has no public way to ask for a keyframe, so this uses its private `_send_rtcp_pli`
    and the SSRCs it saw, leaving out retransmission ones (aiortc internals, covered
    by tests/test_aiortc_internals.py).
    """
    seen: dict = receiver._RTCRtpReceiver__active_ssrc  # type: ignore[attr-defined]
    rtx: dict = receiver._RTCRtpReceiver__rtx_ssrc  # type: ignore[attr-defined]
    media = [ssrc for ssrc in seen if ssrc not in rtx]
    if not media:
        return False
    buffer = receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
    if isinstance(buffer, VideoJitterBuffer):
        buffer.keyframe_asked_elsewhere()
    asyncio.ensure_future(receiver._send_rtcp_pli(max(media, key=seen.__getitem__)))
    return True
