"""The room's video clock: compose the latest frames, encode once, fan out packets."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import av

from compositor.video import Compositor, Tile

from .encoders import VIDEO_TIME_BASE, VideoEncoder
from .tracks import PacketTrack

logger = logging.getLogger(__name__)


@dataclass
class VideoStats:
    """Counters for benchmarks and tests."""

    ticks: int = 0
    frames: int = 0
    #: Ticks skipped because the previous compose and encode had not finished.
    skipped: int = 0
    compose_seconds: float = 0.0


class VideoPipeline:
    """Composes and encodes the room picture on a thread of its own.

    The clock never waits for an input: each tick takes whatever frame each
    participant last delivered (`tiles()`), and a tick that finds the previous
    encode still running is skipped rather than queued.
    """

    def __init__(
        self,
        name: str,
        width: int,
        height: int,
        fps: int,
        bitrate: int,
        tiles: Callable[[], Sequence[Tile]],
        sinks: Callable[[], Iterable[PacketTrack]],
        encode_per_peer: bool = False,
    ) -> None:
        self.fps = fps
        self.encode_per_peer = encode_per_peer
        self.encoder = VideoEncoder(width, height, fps, bitrate)
        self.stats = VideoStats()
        self._compositor = Compositor(width, height)
        self._tiles = tiles
        self._sinks = sinks
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"video-{name}")
        self._busy = False
        self._task: asyncio.Task[None] | None = None

    def request_keyframe(self) -> None:
        self.encoder.request_keyframe()

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = 1 / self.fps
        start = next_tick = loop.time()
        while True:
            self.stats.ticks += 1
            if self._busy:
                self.stats.skipped += 1
            else:
                self._busy = True
                pts = round((loop.time() - start) * 90000)
                future = loop.run_in_executor(self._executor, self._compose_encode, list(self._tiles()), pts)
                future.add_done_callback(self._deliver)
            next_tick += interval
            delay = next_tick - loop.time()
            if delay < -interval:
                # The loop was held up: drop the missed ticks instead of bursting.
                next_tick = loop.time()
                delay = 0
            await asyncio.sleep(max(delay, 0))

    def _compose_encode(self, tiles: list[Tile], pts: int) -> list[av.Packet] | list[av.VideoFrame]:
        started = time.monotonic()
        frame = self._compositor.compose(tiles)
        self.stats.compose_seconds += time.monotonic() - started
        if self.encode_per_peer:
            # The compositor reuses its buffer: each peer's encoder needs its own copy.
            copy = av.VideoFrame.from_ndarray(frame.to_ndarray(), format="yuv420p")
            copy.pts, copy.time_base = pts, VIDEO_TIME_BASE
            return [copy]
        return self.encoder.encode(frame, pts)

    def _deliver(self, future: asyncio.Future[list[av.Packet] | list[av.VideoFrame]]) -> None:
        self._busy = False
        if future.cancelled():
            return
        if future.exception() is not None:
            logger.error("video compose/encode failed", exc_info=future.exception())
            return
        packets = future.result()
        self.stats.frames += 1
        for sink in self._sinks():
            for packet in packets:
                sink.push(packet)
