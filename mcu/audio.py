"""The room's audio clock: every 20 ms, mix-minus for each listener and encode Opus."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence

import av
import numpy as np

from compositor.audio import FRAME_SAMPLES, SAMPLE_RATE, mix_minus

from .encoders import AudioEncoder
from .participant import Participant

logger = logging.getLogger(__name__)

FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE
#: Mix jobs allowed in flight before ticks are dropped (the thread is overloaded).
MAX_PENDING = 5


@dataclass
class AudioStats:
    ticks: int = 0
    encodes: int = 0
    dropped_ticks: int = 0


class AudioPipeline:
    """Mixes on a thread separate from the video encoder, so Opus never starves.

    Each listener hears the sum of everyone minus their own contribution
    (one sum, one subtraction per listener), encoded by their own Opus encoder.
    """

    def __init__(self, name: str, participants: Callable[[], Sequence[Participant]]) -> None:
        self.stats = AudioStats()
        self._participants = participants
        self._encoders: dict[str, AudioEncoder] = {}
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"audio-{name}")
        self._pending = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def remove(self, peer_id: str) -> None:
        self._encoders.pop(peer_id, None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        tick = 0
        while True:
            # Audio is never skipped: after a stall the missed frames go out in a burst
            # and the receivers' jitter buffers absorb it.
            while loop.time() >= next_tick:
                self._tick(loop, tick * FRAME_SAMPLES)
                tick += 1
                next_tick += FRAME_SECONDS
            await asyncio.sleep(next_tick - loop.time())

    def _tick(self, loop: asyncio.AbstractEventLoop, pts: int) -> None:
        self.stats.ticks += 1
        participants = list(self._participants())
        if not participants:
            return
        if self._pending >= MAX_PENDING:
            self.stats.dropped_ticks += 1
            return
        contributions = np.stack([p.audio_in.pull(FRAME_SAMPLES) for p in participants])
        encoders = [self._encoders.setdefault(p.peer_id, AudioEncoder()) for p in participants]
        self._pending += 1
        future = loop.run_in_executor(self._executor, _mix_encode, contributions, encoders, pts)
        future.add_done_callback(lambda f: self._deliver(f, participants))

    def _deliver(self, future: asyncio.Future[list[list[av.Packet]]], participants: list[Participant]) -> None:
        self._pending -= 1
        if future.cancelled():
            return
        if future.exception() is not None:
            logger.error("audio mix/encode failed", exc_info=future.exception())
            return
        self.stats.encodes += len(participants)
        for participant, packets in zip(participants, future.result()):
            for packet in packets:
                participant.audio_out.push(packet)


def _mix_encode(contributions: np.ndarray, encoders: list[AudioEncoder], pts: int) -> list[list[av.Packet]]:
    mix = mix_minus(contributions)
    return [encoder.encode(mix.minus[i], pts) for i, encoder in enumerate(encoders)]
