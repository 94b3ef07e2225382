"""A playout buffer: one peer's Opus packets by RTP timestamp, one 20 ms frame out at every tick of an
audio clock, whatever came in time. The room's audio thread keeps one per peer (mcu/media/audio_pipeline.py), and the
Python client one for the mix it receives (client/playback.py).

Packets come as they arrived (mcu.rtc.receiver._EachPacket): late, out of order, twice or not at
all. A frame missing when its time comes is rebuilt from the in-band FEC of the packet after it
when that one is already here, else concealed by libopus (PLC), faded out over CONCEAL_FRAMES: a
peer whose packets stopped is then just quiet, and the next packet it sends starts it again. The
mix never waits for a packet.

The delay adapts by itself: playing starts one tick after the first packet; a frame due when
nothing at all is buffered is concealed without moving on (the buffer grows by that frame: the
packet was late, not lost); when the buffer stayed above SPARE_FRAMES for SHRINK_TICKS, one frame is
dropped (cross-faded), and it is never allowed above MAX_FRAMES (100 ms).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from .audio import FRAME_SAMPLES, SampleBuffer
from .opus import OpusDecoder, OpusError, has_fec

#: RTP timestamps are 32-bit and wrap around.
_MASK = 0xFFFFFFFF
#: Frames concealed in a row before the peer counts as quiet: the concealment fades to silence over them.
CONCEAL_FRAMES = 5
#: The most audio buffered ahead, in frames; beyond it the oldest frames are dropped.
MAX_FRAMES = 5
#: Frames the buffer keeps at its lowest; one more than that for SHRINK_TICKS, and a frame is dropped.
SPARE_FRAMES = 2
SHRINK_TICKS = 100
#: A packet more than MAX_FRAMES after the newest one buffered, or this far behind the play position,
#: starts a new timeline: the peer restarted, or resumed after a pause. Nearer behind, it is late.
RESYNC_BEHIND = 15 * FRAME_SAMPLES
#: Opus decodes (and conceals) whole multiples of 2.5 ms.
_OPUS_STEP = 120
#: Samples over which a dropped frame's sound fades into the next one's.
CROSSFADE = 120

_FADE_IN = np.linspace(0.0, 1.0, CROSSFADE, endpoint=False)
#: The gain at the end of each concealed frame of a run: full for the first, then down to 0.
_CONCEAL_GAINS = np.clip((CONCEAL_FRAMES - np.arange(CONCEAL_FRAMES + 1)) / (CONCEAL_FRAMES - 1), 0.0, 1.0)
_RAMPS = [np.linspace(_CONCEAL_GAINS[k], _CONCEAL_GAINS[k + 1], FRAME_SAMPLES) for k in range(CONCEAL_FRAMES)]


def _carries_fec(payload: bytes) -> bool:
    """Whether a packet has FEC for the one before it: a corrupt one has none (its own decode says so)."""
    try:
        return has_fec(payload)
    except OpusError:
        return False


def _offset(timestamp: int, origin: int) -> int:
    """How far `timestamp` is after `origin` (negative: before), modulo 2**32."""
    return ((timestamp - origin + 0x80000000) & _MASK) - 0x80000000


@dataclass
class PlayoutCounts:
    """What the playout buffers did instead of playing packets as they came (per room)."""

    #: Frames filled by libopus's concealment: nothing, or nothing usable, had come for them.
    concealed: int = 0
    #: Lost frames rebuilt from the next packet's in-band FEC.
    recovered: int = 0
    #: Packets that came after their time (or again, after it was played): dropped.
    late: int = 0
    #: Packets dropped unplayed to bring the delay down (the buffer had more than it needed), or
    #: left waiting when the peer's timeline jumped.
    dropped: int = 0


class Playout:
    """One peer's packets into `buffer`, a frame a tick; used on the audio thread only."""

    def __init__(self, decoder: OpusDecoder, buffer: SampleBuffer, counts: PlayoutCounts) -> None:
        self._decoder = decoder
        self._buffer = buffer
        self.counts = counts
        #: Packets not yet played, by RTP timestamp.
        self._pending: dict[int, bytes] = {}
        #: The RTP timestamp of the next frame to play; None while the peer is quiet.
        self._cursor: int | None = None
        #: Frames concealed in a row.
        self._missing = 0
        #: The least buffered (frames) since the last drop or growth, and for how many ticks.
        self._lowest = MAX_FRAMES
        self._low_ticks = 0
        #: The head of a dropped frame, to fade from into what comes next.
        self._fade_from: np.ndarray | None = None

    def tick(self, packets: Iterable[tuple[bytes, int]], decode: bool) -> int:
        """Take the packets come since the last tick; with `decode`, leave at least a frame in the
        buffer (unless the peer is quiet), else only keep time. Returns how many were corrupt."""
        for data, timestamp in packets:
            self._add(data, timestamp & _MASK)
        if self._cursor is None:
            self._start()
            if not decode:
                self._buffer.clear()
            return 0  # what came plays from the next tick: one frame of margin for the next packet
        self._limit(decode)
        if not decode:
            self._buffer.clear()
            self._skip_frame()
            return 0
        errors = 0
        while self._buffer.available < FRAME_SAMPLES and self._cursor is not None:
            errors += self._play_frame()
        if self._cursor is not None:
            self._watch_level()
        # else: the concealment ran out (the peer is quiet); what is waiting starts afresh next tick
        return errors

    def _add(self, data: bytes, timestamp: int) -> None:
        if self._cursor is not None:
            offset = _offset(timestamp, self._cursor)
            if not -RESYNC_BEHIND <= offset <= (self._ahead() + MAX_FRAMES) * FRAME_SAMPLES:
                # A new timeline: what was waiting goes, this plays next.
                self.counts.dropped += len(self._pending)
                self._pending.clear()
                self._cursor = timestamp
                self._missing = 0
            elif offset < 0:
                self.counts.late += 1
                return
        self._pending.setdefault(timestamp, data)  # a duplicate changes nothing

    def _start(self) -> None:
        if self._pending:
            first = next(iter(self._pending))
            self._cursor = min(self._pending, key=lambda t: _offset(t, first))
            self._missing = 0
            self._lowest, self._low_ticks = MAX_FRAMES, 0

    def _ahead(self) -> int:
        """Frames buffered from the play position to the end of the newest packet (holes included)."""
        if not self._pending:
            return 0
        cursor = self._cursor
        return max(_offset(t, cursor) for t in self._pending) // FRAME_SAMPLES + 1  # type: ignore[arg-type]

    def _limit(self, decode: bool) -> None:
        """Past MAX_FRAMES (a burst after a stall, or a sender's clock faster than ours): drop the oldest."""
        while self._ahead() > MAX_FRAMES:
            self._drop_frame(decode)

    def _watch_level(self) -> None:
        """Drop a frame once the buffer has held more than SPARE_FRAMES for SHRINK_TICKS."""
        self._lowest = min(self._lowest, self._ahead())
        self._low_ticks += 1
        if self._low_ticks >= SHRINK_TICKS:
            if self._lowest > SPARE_FRAMES:
                self._drop_frame(True)
            self._lowest, self._low_ticks = MAX_FRAMES, 0

    def _drop_frame(self, decode: bool) -> None:
        data = self._pending.pop(self._cursor, None)  # type: ignore[arg-type]
        self._advance(FRAME_SAMPLES)
        if data is None:
            return  # a hole: nothing lost
        self.counts.dropped += 1
        if decode and self._fade_from is None:
            try:
                # Decoded, to fade from: it follows on from what was played last.
                self._fade_from = self._decoder.decode(data)[:CROSSFADE].astype(np.float64)
            except OpusError:
                pass

    def _skip_frame(self) -> None:
        """Keep time without decoding (the peer is not heard): its frame goes, or counts as missing."""
        self._fade_from = None
        if self._pending.pop(self._cursor, None) is not None:  # type: ignore[arg-type]
            self._missing = 0
            self._advance(FRAME_SAMPLES)
            return
        self._missing += 1
        if self._missing >= CONCEAL_FRAMES:
            self._cursor = None
        elif self._pending:
            self._advance(FRAME_SAMPLES)  # lost: later packets are here (else late: wait, as `_play_frame` does)

    def _advance(self, samples: int) -> None:
        cursor = self._cursor = (self._cursor + samples) & _MASK  # type: ignore[operator]
        for timestamp in [t for t in self._pending if _offset(t, cursor) < 0]:
            del self._pending[timestamp]  # overtaken (a packet of another duration): too late now
            self.counts.late += 1

    def _play_frame(self) -> int:
        """Play what belongs at the cursor: the packet, else its FEC in the next one, else concealment."""
        cursor = self._cursor
        data = self._pending.pop(cursor, None)  # type: ignore[arg-type]
        error = 0
        if data is not None:
            try:
                samples = self._decoder.decode(data)
            except OpusError:
                error = 1
            else:
                self._push(samples)
                self._missing = 0
                self._advance(len(samples))
                return 0
        # The hole up to the next packet, a frame at most (packets of 10 ms leave holes of 10 ms).
        nearest = min((_offset(t, cursor) for t in self._pending), default=FRAME_SAMPLES)  # type: ignore[arg-type]
        span = min(FRAME_SAMPLES, max(_OPUS_STEP, nearest - nearest % _OPUS_STEP))
        following = self._pending.get((cursor + span) & _MASK)  # type: ignore[operator]
        if following is not None and _carries_fec(following):
            self._push(self._decoder.recover(following, span))
            self.counts.recovered += 1
            self._missing = 0
            self._advance(span)
            return error
        samples = self._decoder.conceal(span) * _RAMPS[self._missing][:span]
        self._push(np.rint(samples).astype(np.int16))
        self.counts.concealed += 1
        self._missing += 1
        if self._missing >= CONCEAL_FRAMES:
            self._cursor = None  # quiet: the next packet starts it again
        elif self._pending:
            self._advance(span)  # lost: later packets are here
        else:
            # Nothing at all has come: the packet is late, wait for it a frame longer.
            self._lowest, self._low_ticks = MAX_FRAMES, 0
        return error

    def _push(self, samples: np.ndarray) -> None:
        if self._fade_from is not None:
            count = min(CROSSFADE, len(samples))
            samples = samples.copy()
            head = samples[:count]
            samples[:count] = np.rint(self._fade_from[:count] * (1 - _FADE_IN[:count]) + head * _FADE_IN[:count])
            self._fade_from = None
        self._buffer.push(samples)
