"""One AAC encode of a room's whole mix, shared by every RTMP stream and the HLS writer.

RTMP (FLV) and HLS players want AAC, not the Opus that peers get. The room's
audio thread hands this encoder the same limited samples that the shared Opus
encode takes (`AudioPipeline.add_pcm_sink`); it only queues a copy there, and a
thread of its own cuts them into AAC's 1024-sample frames, encodes, and pushes
the packets to its sinks, so the audio clock never waits on FFmpeg's encoder.
Packets carry the room clock's time (samples at 48 kHz), as the Opus ones do.
"""

from __future__ import annotations

import fractions
import logging
import threading
from collections import deque

import av
import numpy as np

from compositor.audio import SAMPLE_RATE
from mcu.media.tracks import PacketSink

logger = logging.getLogger(__name__)

TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
#: AAC-LC, mono: what every RTMP ingest and HLS player takes.
BITRATE = 96_000
#: How often the encoder thread takes what the audio thread queued (5 mixes of 20 ms).
BATCH_SECONDS = 0.1
#: Mix frames kept while the encoder thread is behind (2 s); older ones are dropped.
QUEUE_LIMIT = 100


class MixAac:
    """The AAC encode of one room's mix: `take` on the audio thread, packets to each sink on the encoder thread."""

    def __init__(self, room: str) -> None:
        codec = av.CodecContext.create("aac", "w")
        assert isinstance(codec, av.AudioCodecContext)  # what "aac" makes; the stubs type it by name only
        codec.sample_rate = SAMPLE_RATE
        codec.layout = "mono"
        codec.format = "fltp"
        codec.bit_rate = BITRATE
        codec.time_base = TIME_BASE
        codec.open()
        self._codec = codec
        #: The AudioSpecificConfig that a muxer writes in its header (FLV) or per packet (ADTS in TS).
        self.extradata: bytes = bytes(codec.extradata or b"")
        self._frame_size = codec.frame_size
        self._queue: deque[tuple[np.ndarray, int]] = deque(maxlen=QUEUE_LIMIT)
        self._sinks: list[PacketSink] = []
        #: Samples not yet a whole AAC frame, and the pts of the first of them.
        self._pending = np.zeros(0, np.float32)
        self._pending_pts: int | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"aac-{room}", daemon=True)
        self._thread.start()

    @property
    def sinks(self) -> list[PacketSink]:
        return self._sinks

    def add_sink(self, sink: PacketSink) -> None:
        self._sinks = [*self._sinks, sink]

    def remove_sink(self, sink: PacketSink) -> None:
        self._sinks = [s for s in self._sinks if s is not sink]

    def take(self, samples: np.ndarray, pts: int) -> None:
        """One 20 ms frame of the mix (int16) and its pts: queued, on the audio thread."""
        self._queue.append((samples.copy(), pts))

    def _run(self) -> None:
        while not self._stopping.wait(BATCH_SECONDS):
            while self._queue:
                samples, pts = self._queue.popleft()
                try:
                    self._encode(samples, pts)
                except (av.FFmpegError, ValueError):
                    logger.exception("the AAC encode of the mix failed")

    def _encode(self, samples: np.ndarray, pts: int) -> None:
        if self._pending_pts is None or pts != self._pending_pts + len(self._pending):
            # The first frame, or a gap (ticks dropped): start again from this frame's time.
            self._pending, self._pending_pts = np.zeros(0, np.float32), pts
        self._pending = np.concatenate([self._pending, samples.astype(np.float32) / 32768])
        size = self._frame_size
        while len(self._pending) >= size:
            frame = av.AudioFrame.from_ndarray(self._pending[None, :size], format="fltp", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            frame.pts = self._pending_pts
            frame.time_base = TIME_BASE
            self._pending, self._pending_pts = self._pending[size:], self._pending_pts + size
            for packet in self._codec.encode(frame):
                packet.time_base = TIME_BASE
                for sink in self._sinks:
                    sink.push(packet)

    def stop(self) -> None:
        """End the encoder thread (blocking: call it off the event loop)."""
        self._stopping.set()
        self._thread.join()
