"""A live copy of a room's composite (H.264) and mix (AAC) in a container: what RTMP streams and HLS share.

Like the recorder (mcu/rooms/recording.py) it is one more consumer of packets
that are made anyway: the room's H.264 encoder of one tier (the peers of that
output get the same packets) and the room's one AAC encode of the mix
(mcu/media/aac.py). Each packet is copied where it is pushed into a queue, and a
thread of its own muxes the queue in batches: a far end that is slow, gone or
never answers holds up that thread only, never the room.

A container opens at a keyframe; what comes before it is dropped. When opening
or writing fails, the container is closed and opened again after 1, 2, 4 ... 30
seconds (at the next keyframe, asked for then), until the output is stopped.
Live players join at a keyframe, and HLS cuts its segments at keyframes: while
an output runs, its encoder is asked for one every `keyframe_seconds`
(KEYFRAME_SECONDS, or an HLS tier's segment length).
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import threading
import time
from collections import deque
from typing import Any, Callable

import av

from compositor.audio import SAMPLE_RATE

logger = logging.getLogger(__name__)

#: FLV's own time unit (milliseconds), used for both muxers.
TIME_BASE = fractions.Fraction(1, 1000)
#: How often the muxing thread takes what was queued.
BATCH_SECONDS = 0.1
#: At most this many packets wait for the thread (about 10 s of video and audio); older ones are dropped.
QUEUE_LIMIT = 1000
#: The keyframe interval of a live output: RTMP ingests want at most 2-4 s, HLS segments are cut on them.
KEYFRAME_SECONDS = 2.0
#: Waits between attempts to open the output again: 1, 2, 4 ... seconds, never more than this.
BACKOFF_MAX = 30.0
#: How long `stop()` waits for the thread, which may be blocked writing to a far end that reads nothing.
STOP_WAIT = 2.0

#: H.264 NAL unit types of the parameter sets, which FLV wants in its header (avcC).
_SPS, _PPS = 7, 8


def parameter_sets(annex_b: bytes) -> bytes:
    """The SPS and PPS NAL units of an Annex B keyframe, still in Annex B (the muxer converts them)."""
    units = [unit for unit in annex_b.replace(b"\x00\x00\x00\x01", b"\x00\x00\x01").split(b"\x00\x00\x01") if unit]
    return b"".join(b"\x00\x00\x00\x01" + unit for unit in units if unit[0] & 0x1F in (_SPS, _PPS))


def backoff(failures: int) -> float:
    """The wait before attempt number `failures` + 1: 1, 2, 4 ... BACKOFF_MAX seconds."""
    return min(BACKOFF_MAX, 2.0 ** (failures - 1))


class _Sink:
    """What a pipeline pushes packets into (`push(packet)`)."""

    def __init__(self, push: Callable[[av.Packet], None]) -> None:
        self.push = push


class Broadcast:
    """One live output: packets queued by the room, muxed by a thread of its own into `_open()`'s container.

    `state` is "starting" (waiting for its first keyframe, or connecting), "live",
    or "retrying" (the last attempt failed; `error` says why, `retry_at` when the
    next one is); `on_change(self)` is called on the event loop when it changes.
    """

    #: What the logs call it (a subclass names it: a stream's URL, redacted, or the HLS directory).
    label = "broadcast"

    def __init__(
        self,
        room: str,
        width: int,
        height: int,
        fps: int,
        audio_extradata: bytes,
        request_keyframe: Callable[[], None],
        on_change: Callable[[Broadcast], None],
    ) -> None:
        self.room = room
        self._size = (width, height, fps)
        self._audio_extradata = audio_extradata
        self._request_keyframe = request_keyframe
        self._on_change = on_change
        self._loop = asyncio.get_running_loop()
        self.state = "starting"
        self.error: str | None = None
        #: Failed attempts in a row, and when the next one is due (time.monotonic()).
        self.failures = 0
        self.retry_at: float | None = None
        #: When it last went live (time.monotonic()), and the packets written since it first did.
        self.live_since: float | None = None
        self.packets = 0
        self.dropped = 0
        self.stopped = False
        self._queue: deque[tuple[bool, bytes, fractions.Fraction, bool]] = deque()
        self._container: Any = None
        self._streams: dict[bool, Any] = {}
        self._origin: fractions.Fraction | None = None
        self._last_ms: dict[bool, int] = {}
        self._stopping = threading.Event()
        #: When the video pushed last carried a keyframe, and when one was last asked for (event loop only).
        self._keyframe_at = float("-inf")
        self._asked_at = float("-inf")
        self.video = _Sink(self._push_video)
        self.audio = _Sink(self._push_audio)
        self._thread = threading.Thread(target=self._run, name=f"broadcast-{room}", daemon=True)
        #: How often its encoder is asked for a keyframe.
        self.keyframe_seconds = KEYFRAME_SECONDS

    def start(self) -> None:
        """Start the thread (once the subclass is set up) and ask for the keyframe it opens on."""
        self._thread.start()
        self._request_keyframe()

    # --- the room's side -------------------------------------------------------------

    def _push_video(self, packet: av.Packet) -> None:
        """On the event loop: queue a copy; ask for a keyframe when the last is `keyframe_seconds` old."""
        now = time.monotonic()
        if packet.is_keyframe:
            self._keyframe_at = now
        elif now - max(self._keyframe_at, self._asked_at) >= self.keyframe_seconds:
            self._asked_at = now
            self._request_keyframe()
        self._enqueue(True, packet)

    def _push_audio(self, packet: av.Packet) -> None:
        """On the AAC encoder's thread."""
        self._enqueue(False, packet)

    def _enqueue(self, video: bool, packet: av.Packet) -> None:
        if self.stopped or packet.pts is None:
            return
        if len(self._queue) >= QUEUE_LIMIT:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append((video, bytes(packet), packet.pts * packet.time_base, packet.is_keyframe))

    # --- the thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            stopping = self._stopping.wait(BATCH_SECONDS)
            batch = [self._queue.popleft() for _ in range(len(self._queue))]
            if stopping:
                break
            if self.retry_at is not None:
                if time.monotonic() < self.retry_at:
                    continue  # nowhere to write: what came meanwhile is dropped
                self.retry_at = None
                self._loop.call_soon_threadsafe(self._request_keyframe)
            for item in batch:
                if not self._write(*item):
                    break
        self._close_container()

    def _write(self, video: bool, data: bytes, at: fractions.Fraction, keyframe: bool) -> bool:
        """Mux one packet (opening the container at a keyframe); False once the output failed."""
        if self._container is None:
            if not (video and keyframe):
                return True
            try:
                self._begin(data, at)
            except (OSError, av.FFmpegError) as exc:
                self._failed(f"could not open: {exc}")
                return False
        assert self._origin is not None  # _begin set it
        ms = round((at - self._origin) * 1000)
        if ms <= self._last_ms[video]:
            return True  # before the start, or not after the previous one (muxers need order)
        self._last_ms[video] = ms
        packet = av.Packet(data)
        packet.pts = packet.dts = ms
        packet.time_base = TIME_BASE
        packet.is_keyframe = keyframe
        packet.stream = self._streams[video]
        try:
            self._container.mux(packet)
        except (OSError, av.FFmpegError) as exc:
            self._failed(f"{'could not connect' if self.state != 'live' else 'the connection failed'}: {exc}")
            return False
        self.packets += 1
        if self.state != "live":
            self.state, self.error, self.live_since = "live", None, time.monotonic()
            logger.info("room %s: %s is live", self.room, self.label)
            self._loop.call_soon_threadsafe(self._changed)
        return True

    def _begin(self, keyframe: bytes, at: fractions.Fraction) -> None:
        """Open the container for a start at this keyframe: H.264 with its parameter sets, AAC with its config."""
        container = self._open()
        width, height, fps = self._size
        video = container.add_stream("h264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.time_base = TIME_BASE
        audio = container.add_stream("aac", rate=SAMPLE_RATE)
        audio.layout = "mono"
        audio.time_base = TIME_BASE
        # PyAV opens an encoder for each stream it writes; its parameters must be the room encoders',
        # which made the packets: opened here, before the header is written, they are set to those.
        for stream, extradata in ((video, parameter_sets(keyframe)), (audio, self._audio_extradata)):
            stream.codec_context.open()
            stream.codec_context.extradata = extradata
        self._container, self._streams = container, {True: video, False: audio}
        self._origin, self._last_ms = at, {True: -1, False: -1}

    def _open(self) -> Any:
        """A new output container (`av.open(..., "w")`); a subclass says where to."""
        raise NotImplementedError

    def _failed(self, message: str) -> None:
        """On the thread: close what is open, and try again after the backoff."""
        self._close_container()
        if self.live_since is not None and time.monotonic() - self.live_since >= BACKOFF_MAX:
            self.failures = 0  # it had been live a while: start the backoff over
        self.failures += 1
        delay = backoff(self.failures)
        self.state, self.error, self.retry_at = "retrying", message, time.monotonic() + delay
        logger.warning("room %s: %s: %s; trying again in %g s", self.room, self.label, message, delay)
        self._loop.call_soon_threadsafe(self._changed)

    def _close_container(self) -> None:
        container, self._container, self._streams = self._container, None, {}
        if container is None:
            return
        try:
            container.close()
        except (OSError, av.FFmpegError) as exc:
            logger.debug("room %s: %s: closing: %s", self.room, self.label, exc)

    def _changed(self) -> None:
        if not self.stopped:
            self._on_change(self)

    # --- life ------------------------------------------------------------------------

    def describe(self) -> dict:
        """Its state, as events and the HTTP API tell it."""
        retry = self.retry_at
        described: dict[str, Any] = {"state": self.state, "failures": self.failures}
        if self.error is not None:
            described["error"] = self.error
        if retry is not None:
            described["retryIn"] = round(max(0.0, retry - time.monotonic()), 1)
        return described

    async def stop(self) -> None:
        """Finish the container (an HLS playlist's end, an FLV's last packets); safe to call more than once."""
        if self.stopped:
            return
        self.stopped = True
        self._stopping.set()
        if not self._thread.is_alive():
            return
        await asyncio.to_thread(self._thread.join, STOP_WAIT)
        if self._thread.is_alive():
            logger.warning("room %s: %s: its far end holds a write; left to the system", self.room, self.label)
