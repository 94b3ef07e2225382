"""The room's video clock: compose once per canvas size, encode once per output, fan out packets.

An output is a (codec, tier) pair in use by at least one peer, or one peer's
personal canvas (hide-self). Its encoder is created on first use and released
with its last peer; every peer of an output gets the same packets.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable

import av
import cv2
import numpy as np

from compositor.video import Compositor, Scene

from .clock import MediaClock
from .config import Tier
from .encoders import Output, VideoEncoder
from .tracks import PacketSink, PacketTrack

logger = logging.getLogger(__name__)

#: The scene to compose (tiles, layout, floor holder), leaving out the peer whose id is given (hide-self), or nobody.
TilesSource = Callable[[str | None], Scene]


@dataclass
class VideoStats:
    """Counters for benchmarks and tests."""

    ticks: int = 0
    frames: int = 0
    #: Ticks skipped because the previous compose and encode had not finished.
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


class VideoPipeline(MediaClock):
    """Composes and encodes the room's pictures on a thread of its own.

    The clock never waits for an input: each tick takes whatever frame each
    participant last delivered (`tiles()`), and a tick that finds the previous
    encode still running is skipped rather than queued (a tier whose frame was
    due then gets it on the next tick). The clock runs at the highest frame
    rate in use; a slower tier encodes on its share of the ticks.
    """

    def __init__(
        self,
        name: str,
        tiers: dict[str, Tier],
        default_tier: str,
        tiles: TilesSource,
        sinks: Callable[[], Iterable[PacketTrack]],
        encode_per_peer: bool = False,
    ) -> None:
        super().__init__(f"video-{name}")
        self.tiers = tiers
        #: What non-peer sinks (`add_sink`) receive: the default tier in VP8.
        self.default_output = Output("vp8", default_tier)
        self.encode_per_peer = encode_per_peer
        #: The encoder of each output in use; only the video thread adds or removes.
        self.encoders: dict[Output, VideoEncoder] = {}
        self._peer_encoders: dict[PacketTrack, VideoEncoder] = {}
        self._peer_busy: set[PacketTrack] = set()
        self.stats = VideoStats()
        #: One compositor per shared canvas size, and one per personal output.
        self._compositors: dict[tuple[int, int] | Output, Compositor] = {}
        #: Canvases scaled down from a larger one of the same aspect.
        self._scaled: dict[tuple[int, int], np.ndarray] = {}
        self._tiles = tiles
        self._sinks = sinks
        #: Consumers that are not peers (a recording): the same packets, on the event loop.
        self._extra_sinks: list[PacketSink] = []
        self._due: set[str] = set()
        self._busy = False

    async def stop(self) -> None:
        """Stop the clock and release every encoder (the room closed)."""
        await super().stop()
        released = len(self.encoders)
        self.encoders.clear()
        self.stats.encoders_released += released

    def _clock_fps(self, outputs: Iterable[Output]) -> int:
        """The clock's rate: the highest frame rate among the tiers in use."""
        in_use = {output.tier for output in outputs} or {self.default_output.tier}
        return max(self.tiers[tier].fps for tier in in_use)

    def add_sink(self, sink: PacketSink) -> None:
        """Also push the default tier's VP8 packets to `sink` (it waits for a keyframe: request one)."""
        self._extra_sinks = [*self._extra_sinks, sink]

    def remove_sink(self, sink: PacketSink) -> None:
        self._extra_sinks = [s for s in self._extra_sinks if s is not sink]

    def request_keyframe(self, sink: PacketTrack | None = None) -> None:
        """A keyframe for the encoder that feeds `sink` (a peer's PLI), or for the non-peer sinks."""
        output = self.default_output if sink is None else sink.output
        encoder = self.encoders.get(output) if output is not None else None
        if encoder is not None:
            encoder.request_keyframe()
        # An output without an encoder yet gets one that starts on a keyframe.

    def _outputs(self) -> dict[Output, list[PacketSink]]:
        """The sinks of each output in use."""
        outputs: dict[Output, list[PacketSink]] = defaultdict(list)
        for sink in self._sinks():
            if sink.output is not None and sink.output.tier in self.tiers:
                outputs[sink.output].append(sink)
        if self._extra_sinks:
            outputs[self.default_output].extend(self._extra_sinks)
        return outputs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        start = next_tick = loop.time()
        tick = 0
        while True:
            self.stats.ticks += 1
            tick += 1
            outputs = self._outputs()
            fps = self._clock_fps(outputs)
            for tier in {output.tier for output in outputs}:
                rate = self.tiers[tier].fps
                if tick * rate // fps != (tick - 1) * rate // fps:
                    self._due.add(tier)
            if self._busy:
                self.stats.skipped += 1
            elif self.encode_per_peer or outputs or self.encoders:
                self._busy = True
                due = [output for output in outputs if output.tier in self._due]
                self._due.clear()
                pts = round((loop.time() - start) * 90000)
                scenes = self._scenes(due)
                future = loop.run_in_executor(self._executor, self._compose_encode, scenes, due, set(outputs), pts)
                future.add_done_callback(functools.partial(self._deliver, pts=pts))
            interval = 1 / fps
            next_tick += interval
            delay = next_tick - loop.time()
            if delay < -interval:
                # The loop was held up: drop the missed ticks instead of bursting.
                next_tick = loop.time()
                delay = 0
            await asyncio.sleep(max(delay, 0))

    def _scenes(self, due: list[Output]) -> dict[str | None, Scene]:
        """The tiles to compose, read on the loop: the shared ones and each personal canvas's."""
        wanted = {output.personal for output in due}
        if self.encode_per_peer:
            wanted.add(None)
        return {personal: self._tiles(personal) for personal in wanted}

    def _compose_encode(
        self, scenes: dict[str | None, Scene], due: list[Output], in_use: set[Output], pts: int
    ) -> tuple[dict[Output, list[av.Packet]], np.ndarray | None]:
        """On the video thread: release unused encoders, compose the canvases due, encode each output once."""
        for output in self.encoders.keys() - in_use:
            del self.encoders[output]
            self._compositors.pop(output, None)
            self.stats.encoders_released += 1
        started = time.monotonic()
        if self.encode_per_peer:
            tier = self.tiers[self.default_output.tier]
            canvases = self._shared_canvases(scenes[None], {(tier.width, tier.height)})
            self.stats.compose_seconds += time.monotonic() - started
            # The compositor reuses its buffer: the per-peer encodes need a copy.
            return {}, canvases[tier.width, tier.height].to_ndarray()
        sizes = {self._size(output) for output in due if output.personal is None}
        canvases = self._shared_canvases(scenes.get(None, Scene()), sizes)
        pictures = {}
        for output in due:
            if output.personal is None:
                pictures[output] = canvases[self._size(output)]
            else:
                compositor = self._compositors.get(output)
                if compositor is None:
                    compositor = self._compositors[output] = Compositor(*self._size(output))
                scene = scenes[output.personal]
                pictures[output] = compositor.compose(scene.tiles, scene.layout, scene.speaker)
        self.stats.compose_seconds += time.monotonic() - started
        packets = {}
        for output, frame in pictures.items():
            encoder = self.encoders.get(output)
            if encoder is None:
                tier = self.tiers[output.tier]
                encoder = self.encoders[output] = VideoEncoder(
                    tier.width, tier.height, tier.fps, tier.bitrate, output.codec
                )
                self.stats.encoders_created += 1
            encode_started = time.monotonic()
            packets[output] = encoder.encode(frame, pts)
            self.stats.encode_seconds += time.monotonic() - encode_started
            self.stats.keyframes += sum(packet.is_keyframe for packet in packets[output])
            self.stats.tier_frames[output.tier] += 1
        return packets, None

    def _size(self, output: Output) -> tuple[int, int]:
        tier = self.tiers[output.tier]
        return tier.width, tier.height

    def _shared_canvases(
        self, scene: Scene, sizes: set[tuple[int, int]]
    ) -> dict[tuple[int, int], av.VideoFrame]:
        """Compose the largest canvas; a smaller one of the same aspect is that canvas scaled down.

        Scaling the three planes once costs less than composing again at the
        smaller size (docs/benchmarks.md), and looks the same.
        """
        canvases: dict[tuple[int, int], av.VideoFrame] = {}
        for width, height in sorted(sizes, reverse=True):
            source = next(
                (size for size in canvases if size[0] * height == size[1] * width and size[0] > width), None
            )
            if source is not None:
                canvases[width, height] = self._scale(canvases[source], (width, height))
                self.stats.scaled += 1
                continue
            compositor = self._compositors.get((width, height))
            if compositor is None:
                compositor = self._compositors[width, height] = Compositor(width, height)
            canvases[width, height] = compositor.compose(scene.tiles, scene.layout, scene.speaker)
        return canvases

    def _scale(self, canvas: av.VideoFrame, size: tuple[int, int]) -> av.VideoFrame:
        """Scale a yuv420p canvas down to `size`, plane by plane, into a buffer kept for that size."""
        width, height = size
        scaled = self._scaled.get(size)
        if scaled is None:
            scaled = self._scaled[size] = np.empty((height * 3 // 2, width), np.uint8)
        flat = scaled.reshape(-1)
        luma, chroma = width * height, width * height // 4
        targets = (
            flat[:luma].reshape(height, width),
            flat[luma : luma + chroma].reshape(height // 2, width // 2),
            flat[luma + chroma :].reshape(height // 2, width // 2),
        )
        for plane, target in zip(canvas.planes, targets):
            source = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]
            cv2.resize(source, (target.shape[1], target.shape[0]), dst=target, interpolation=cv2.INTER_AREA)
        return av.VideoFrame.from_numpy_buffer(scaled, format="yuv420p")

    def _deliver(
        self, future: asyncio.Future[tuple[dict[Output, list[av.Packet]], np.ndarray | None]], pts: int
    ) -> None:
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
        outputs = self._outputs()
        for output, encoded in packets.items():
            for sink in outputs.get(output, ()):
                for packet in encoded:
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
        tier = self.tiers[self.default_output.tier]
        for sink in sinks:
            if sink in self._peer_busy:
                self.stats.skipped += 1
                continue
            encoder = self._peer_encoders.get(sink)
            if encoder is None:
                encoder = self._peer_encoders[sink] = VideoEncoder(tier.width, tier.height, tier.fps, tier.bitrate)
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

