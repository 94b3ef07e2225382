"""The mix a client receives, played on a 20 ms clock of its own: a real-time timeline of its audio.

aiortc's receiver decodes what its jitter buffer lets go, and that buffer stops at a lost packet
until 16 more have come: with 5 % loss and 30 ms jitter on the way down, about 3 frames in 10 never
came out, and the waits between frames reached 200 ms. Here each Opus packet goes, as it comes
(`mcu.rtc.receiver.install_encoded_receiver(..., audio_in_order=False)`), into the playout buffer
the room's mixer uses (compositor/playout.py: in-band FEC, libopus's concealment, a delay that grows
with late packets and shrinks again), and a clock on the event loop takes one frame out of it every
20 ms, whatever came in time. A tick's Opus decode is short (tens of µs), so it runs on the loop
itself; a late loop is made up for by running the missed ticks back to back, so the timeline keeps
50 frames a second.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
from collections.abc import Callable

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError

from compositor.audio import FRAME_SAMPLES, SAMPLE_RATE, SampleBuffer
from compositor.opus import OpusDecoder
from compositor.playout import Playout, PlayoutCounts

logger = logging.getLogger(__name__)

FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE
#: Decoded audio waiting to be played is capped as the room caps it (mcu/media/audio_pipeline.py): 120 ms.
BUFFER_SAMPLES = 6 * FRAME_SAMPLES
TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)

#: Takes each frame played: its mono int16 samples and its pts (samples since the clock started).
FrameSink = Callable[[np.ndarray, int], None]


def audio_frame(samples: np.ndarray, pts: int) -> av.AudioFrame:
    """A frame played as PyAV wants it (48 kHz mono s16), for a recorder."""
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = SAMPLE_RATE
    frame.pts, frame.time_base = pts, TIME_BASE
    return frame


def _report_failure(clock: asyncio.Task[None]) -> None:
    """Say so at once when the clock stopped on an error: the timeline ends there."""
    if not clock.cancelled() and clock.exception() is not None:
        logger.error("the audio clock stopped", exc_info=clock.exception())


class AudioPlayback:
    """One received Opus stream through a playout buffer, a frame to `on_frame` every 20 ms.

    Counts what the buffer did (lost frames concealed or rebuilt, late packets dropped) in `counts`,
    which a caller may share between successive streams (a peer that joins again).
    """

    def __init__(self, on_frame: FrameSink, counts: PlayoutCounts) -> None:
        self._on_frame = on_frame
        self._buffer = SampleBuffer(max_samples=BUFFER_SAMPLES)
        self._playout = Playout(OpusDecoder(), self._buffer, counts)
        #: (payload, RTP timestamp) come since the last tick.
        self._packets: list[tuple[bytes, int]] = []
        self._first = asyncio.Event()

    def take(self, frame: JitterFrame) -> None:
        """An Opus packet as it came, lost, late or out of order (the receiver's frame handler)."""
        self._packets.append((frame.data, frame.timestamp))
        self._first.set()

    async def play(self, track: MediaStreamTrack) -> None:
        """Run the clock until `track` ends (its receiver stopped: the packets go to `take`, not to
        the track) or the task is cancelled."""
        clock = asyncio.ensure_future(self._run())
        clock.add_done_callback(_report_failure)
        try:
            while True:
                await track.recv()
        except MediaStreamError:
            pass
        finally:
            clock.cancel()
            await asyncio.gather(clock, return_exceptions=True)

    async def _run(self) -> None:
        """Tick every 20 ms from the first packet on, paced on the loop's clock (no drift: each tick is
        due at start + index * 20 ms); ticks the loop was too late for run back to back."""
        await self._first.wait()
        loop = asyncio.get_running_loop()
        start = loop.time()
        index = 0
        while True:
            due = int((loop.time() - start) / FRAME_SECONDS)
            while index <= due:
                self._tick(index)
                index += 1
            await asyncio.sleep(start + index * FRAME_SECONDS - loop.time())

    def _tick(self, index: int) -> None:
        packets, self._packets = self._packets, []
        try:
            if self._playout.tick(packets, decode=True):
                logger.warning("a received Opus packet could not be decoded: concealed")
        except Exception:
            # As the room's clock does (mcu/media/audio_clock.py): one bad tick is logged and the timeline goes on.
            logger.exception("an audio tick failed: its frame is silence")
            self._buffer.clear()
        self._on_frame(self._buffer.pull(FRAME_SAMPLES), index * FRAME_SAMPLES)
