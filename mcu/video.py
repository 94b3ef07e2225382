"""The room's video clock: compose the latest frames, encode once, fan out packets."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import av
import numpy as np

from compositor.video import Compositor, Tile

from .clock import MediaClock
from .encoders import VideoEncoder
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


class VideoPipeline(MediaClock):
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
        super().__init__(f"video-{name}")
        self.fps = fps
        self.encode_per_peer = encode_per_peer
        self.encoder = VideoEncoder(width, height, fps, bitrate)
        self._encoder_settings = (width, height, fps, bitrate)
        self._peer_encoders: dict[PacketTrack, VideoEncoder] = {}
        self._peer_busy: set[PacketTrack] = set()
        self.stats = VideoStats()
        self._compositor = Compositor(width, height)
        self._tiles = tiles
        self._sinks = sinks
        self._busy = False

    def request_keyframe(self) -> None:
        self.encoder.request_keyframe()

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
                future.add_done_callback(functools.partial(self._deliver, pts=pts))
            next_tick += interval
            delay = next_tick - loop.time()
            if delay < -interval:
                # The loop was held up: drop the missed ticks instead of bursting.
                next_tick = loop.time()
                delay = 0
            await asyncio.sleep(max(delay, 0))

    def _compose_encode(self, tiles: list[Tile], pts: int) -> tuple[list[av.Packet], np.ndarray | None]:
        started = time.monotonic()
        frame = self._compositor.compose(tiles)
        self.stats.compose_seconds += time.monotonic() - started
        if self.encode_per_peer:
            # The compositor reuses its buffer: the per-peer encodes need a copy.
            return [], frame.to_ndarray()
        return self.encoder.encode(frame, pts), None

    def _deliver(self, future: asyncio.Future[tuple[list[av.Packet], np.ndarray | None]], pts: int) -> None:
        self._busy = False
        if future.cancelled():
            return
        if future.exception() is not None:
            logger.error("video compose/encode failed", exc_info=future.exception())
            return
        packets, picture = future.result()
        self.stats.frames += 1
        if picture is not None:
            self._encode_per_peer(picture, pts)
            return
        for sink in self._sinks():
            for packet in packets:
                sink.push(packet)

    def _encode_per_peer(self, picture: np.ndarray, pts: int) -> None:
        """The benchmark baseline: what a naive MCU does, one encoder per peer.

        Each encode runs in the loop's default thread pool, as aiortc's own
        per-sender encodes do, with the same settings as the shared encoder.
        """
        loop = asyncio.get_running_loop()
        sinks = list(self._sinks())
        for gone in self._peer_encoders.keys() - set(sinks):
            del self._peer_encoders[gone]
        for sink in sinks:
            if sink in self._peer_busy:
                self.stats.skipped += 1
                continue
            encoder = self._peer_encoders.get(sink)
            if encoder is None:
                encoder = self._peer_encoders[sink] = VideoEncoder(*self._encoder_settings)
                sink.keyframe_requested = encoder.request_keyframe
            self._peer_busy.add(sink)
            frame = av.VideoFrame.from_numpy_buffer(picture, format="yuv420p")
            future = loop.run_in_executor(None, encoder.encode, frame, pts)
            future.add_done_callback(functools.partial(self._deliver_to_peer, sink))

    def _deliver_to_peer(self, sink: PacketTrack, future: asyncio.Future[list[av.Packet]]) -> None:
        self._peer_busy.discard(sink)
        if not future.cancelled() and future.exception() is None:
            for packet in future.result():
                sink.push(packet)
