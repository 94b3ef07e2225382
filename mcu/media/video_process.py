"""The room's video process: decode every upstream, compose the canvases, encode each output once.

A room's video runs in a process of its own (`python -m mcu.media.video_process FD`), fed
through a socket by `mcu.media.video_pipeline.VideoPipeline`: encoded upstream frames and what
the canvases show go in; encoded packets, keyframe requests for publishers and
counters come out, each a message of `mcu.media.video_channel`. `VideoMixer`
does the work, and its `_video_clock` is the room's video clock.

In the server process the event loop handles every RTP
packet of every peer and holds the GIL most of the time; a compose and encode
sharing that GIL waited two thirds of its wall time for it, and a 16-peer room
composed 15-20 frames a second instead of 30 (docs/benchmarks.md). Here the
clock, the decoders and the encoders have an interpreter to themselves.

Threads, no asyncio: one reads the socket, two decode (a peer is always
decoded by the same one, in order), one ticks the clock and composes and
encodes. A frame that comes alone, while its peer has nothing queued, is
decoded by the reader itself: waking a decoder thread for it cost more than
the decode saved by the parallelism (docs/benchmarks.md). Frames that come
together, because the reader fell behind, go to the decoder threads.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable, assert_never, cast

import av
import cv2
import numpy as np

from compositor.fonts import faces
from compositor.layout import GRID, Layout
from compositor.video import Compositor, Scene, Tile, yuv420p_planes
from mcu.media.allocator import Trimmer, limit_arenas
from mcu.media.encoders import Output, Tier, VideoEncoder
from mcu.media.video_channel import (
    TO_PROCESS,
    Counters,
    EncoderReport,
    Forget,
    KeyframeRequest,
    MessageReader,
    Outputs,
    PliRequest,
    Scenes,
    Start,
    Stop,
    Tick,
    ToProcess,
    ToServer,
    UpstreamFrame,
    encode,
)

logger = logging.getLogger(__name__)

#: The decoders of the upstream codecs a room answers (mcu/rooms/participant.py).
DECODERS = {"vp8": "libvpx", "h264": "h264"}
#: Threads that decode upstreams when the reader falls behind; each peer is queued to one of them, in order.
DECODE_THREADS = 2
#: A decode error asks the publisher for a keyframe at most this often.
PLI_INTERVAL = 0.5
#: A composite is stamped with when its pictures arrived (`VideoMixer._lag`), smoothed over about this
#: long; a picture older than LAG_CAP is a paused camera, not the pipeline's delay, and is left out.
LAG_SMOOTHING = 1.0
LAG_CAP = 0.25


@dataclass(frozen=True)
class TileSpec:
    """One cell as the room sees it: whose picture (None: a label only, as "+3"), its name, whether it speaks."""

    peer_id: str | None
    name: str
    speaking: bool = False
    #: False when the peer turned its camera off: the placeholder, whatever it still sends.
    video: bool = True
    #: A shared screen (its `peer_id` is the screen's key, `screen_key`): never stale, scaled once into its place.
    screen: bool = False


#: What follows a publisher's peer id in the key of its shared screen (peer ids are hex: no clash).
SCREEN_SUFFIX = "/screen"


def screen_key(peer_id: str) -> str:
    """The key under which a publisher's shared screen is decoded and shown, beside its camera's."""
    return peer_id + SCREEN_SUFFIX


@dataclass(frozen=True)
class SceneSpec:
    """A canvas as the room sees it; this process fills in each peer's latest picture."""

    tiles: tuple[TileSpec, ...] = ()
    layout: Layout = GRID
    speaker: int | None = None


@dataclass(frozen=True)
class Settings:
    """What the parent tells a new video process before anything else."""

    tiers: dict[str, Tier]
    #: A peer silent on video this long shows its placeholder.
    stale_seconds: float
    #: The time (time.monotonic(), the same clock in every process) the room's pts count from.
    epoch: float
    #: The benchmark baseline: every output is one peer's encode of the shared canvas.
    encode_per_peer: bool = False


class _Upstream:
    """One publisher's decoder and latest picture."""

    def __init__(self, executor: ThreadPoolExecutor) -> None:
        self.executor = executor
        self.codec_name: str | None = None
        self.decoder: av.VideoCodecContext | None = None
        self.picture: av.VideoFrame | None = None
        self.picture_time = float("-inf")
        self.last_pli = float("-inf")
        #: Frames handed to `executor`, and those it has decoded: each counter has one writer thread.
        self.queued = 0
        self.dequeued = 0


class VideoMixer:
    """One room's video mixer: decodes every upstream, composes the canvases and encodes each output once,
    on the room's video clock (`_video_clock`, a thread of its own).

    `send` hands a message to the parent; it is called from the clock and
    decoder threads and must be thread-safe.
    """

    def __init__(self, settings: Settings, send: Callable[[ToServer], None]) -> None:
        self.settings = settings
        self._send = send
        self.counters = Counters()
        self._decoders = [ThreadPoolExecutor(1, thread_name_prefix="decode") for _ in range(DECODE_THREADS)]
        self._upstreams: dict[str, _Upstream] = {}
        self._lock = threading.Lock()
        self._scenes: dict[str | None, SceneSpec] = {}
        self._outputs: frozenset[Output] = frozenset()
        self.encoders: dict[Output, VideoEncoder] = {}
        self._compositors: dict[tuple[int, int] | Output, Compositor] = {}
        self._scaled: dict[tuple[int, int], np.ndarray] = {}
        self._per_peer_pool = ThreadPoolExecutor(thread_name_prefix="encode") if settings.encode_per_peer else None
        #: Seconds between the arrival of the pictures composed and the tick (`_lag`); clock thread only.
        self.lag = 0.0
        self._stopped = threading.Event()
        self._wake = threading.Event()
        self._clock = threading.Thread(target=self._video_clock, name="clock", daemon=True)

    # --- from the parent (the reader thread) ---------------------------------------

    def handle(self, message: ToProcess, alone: bool = False) -> None:
        """One message from the parent; `alone`: nothing else was waiting to be read with it."""
        match message:
            case UpstreamFrame(peer_id, codec_name, data, timestamp):
                self.frame(peer_id, codec_name, data, timestamp, alone=alone)
            case Scenes(scenes):
                with self._lock:
                    self._scenes = scenes
            case Outputs(outputs):
                with self._lock:
                    self._outputs = outputs
                self._wake.set()  # an idle clock ticks once a second: a first output must not wait for it
            case KeyframeRequest(output):
                self.request_keyframe(output)
            case Forget(peer_id):
                with self._lock:
                    self._upstreams.pop(peer_id, None)
            case Stop():
                self.stop()
            case Start():
                raise ValueError("a second Start: the mixer has its settings")
            case _:
                assert_never(message)

    def frame(self, peer_id: str, codec_name: str, data: bytes, timestamp: int, alone: bool = False) -> None:
        """An encoded upstream frame: decoded now if it came `alone` and its peer has nothing queued,
        else on the peer's decoder thread (after the frames queued there)."""
        with self._lock:
            upstream = self._upstreams.get(peer_id)
            if upstream is None:
                # The decoder thread with the fewest publishers (peers come and go in any order).
                load = {id(e): 0 for e in self._decoders}
                for other in self._upstreams.values():
                    load[id(other.executor)] += 1
                executor = min(self._decoders, key=lambda e: load[id(e)])
                upstream = self._upstreams[peer_id] = _Upstream(executor)
        if alone and upstream.queued == upstream.dequeued:
            self._decode(peer_id, upstream, codec_name, data, timestamp)
            return
        upstream.queued += 1
        upstream.executor.submit(self._decode_queued, peer_id, upstream, codec_name, data, timestamp)

    def request_keyframe(self, output: Output | None) -> None:
        """A keyframe for `output` (None: every encoder); an output without an encoder yet starts on one."""
        with self._lock:
            encoders = list(self.encoders.values()) if output is None else [self.encoders.get(output)]
        for encoder in encoders:
            if encoder is not None:
                encoder.request_keyframe()

    def start(self) -> None:
        self._clock.start()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()

    @property
    def stopped(self) -> bool:
        """Whether the mixer was told to stop (the clock may still be finishing its tick)."""
        return self._stopped.is_set()

    def wait(self) -> None:
        while self._clock.is_alive():
            self._clock.join(0.5)
        for executor in self._decoders:
            executor.shutdown(wait=False, cancel_futures=True)

    # --- decoding ------------------------------------------------------------------

    def _decode_queued(self, peer_id: str, upstream: _Upstream, codec_name: str, data: bytes, timestamp: int) -> None:
        try:
            self._decode(peer_id, upstream, codec_name, data, timestamp)
        finally:
            upstream.dequeued += 1

    def _decode(self, peer_id: str, upstream: _Upstream, codec_name: str, data: bytes, timestamp: int) -> None:
        started = time.monotonic()
        decoder = upstream.decoder
        if decoder is None or codec_name != upstream.codec_name:
            name = DECODERS.get(codec_name)
            if name is None:
                logger.warning("no decoder for %s from %s", codec_name, peer_id)
                return
            decoder = upstream.decoder = cast(av.VideoCodecContext, av.CodecContext.create(name, "r"))
            upstream.codec_name = codec_name
        packet = av.Packet(data)
        packet.pts = timestamp
        try:
            frames = decoder.decode(packet)
        except av.FFmpegError:
            # Keep the decoder: resetting it would fail every frame until the next keyframe.
            self.counters.decode_errors += 1
            if started - upstream.last_pli >= PLI_INTERVAL:
                upstream.last_pli = started
                self._send(PliRequest(peer_id))
            return
        self.counters.decodes += 1
        self.counters.decode_seconds += time.monotonic() - started
        if frames:
            # A new frame object per picture: the compositor redraws a cell when its frame changes.
            upstream.picture, upstream.picture_time = frames[-1], time.monotonic()

    # --- the clock -------------------------------------------------------------------

    def _clock_fps(self, outputs: frozenset[Output]) -> int:
        tiers = {output.tier for output in outputs if output.tier in self.settings.tiers}
        return max((self.settings.tiers[tier].fps for tier in tiers), default=1)

    def _video_clock(self) -> None:
        """The room's video clock: it ticks at the highest frame rate in use; a tier slower than that
        encodes on its share of ticks.

        A tick never waits for an input: it takes each peer's latest picture.
        When compose and encode overrun, the ticks missed are dropped, not
        bunched.
        """
        next_tick = time.monotonic()
        tick = 0
        pts = -1
        due: set[str] = set()
        while not self._stopped.is_set():
            with self._lock:
                outputs = self._outputs
            fps = self._clock_fps(outputs)
            tick += 1
            self.counters.ticks += 1
            for tier in {output.tier for output in outputs if output.tier in self.settings.tiers}:
                rate = self.settings.tiers[tier].fps
                if tick * rate // fps != (tick - 1) * rate // fps:
                    due.add(tier)
            if outputs or self.encoders:
                now = time.monotonic()
                pts = max(round((now - self._lag(now, 1 / fps) - self.settings.epoch) * 90000), pts + 1)
                try:
                    self._tick([o for o in outputs if o.tier in due], outputs, pts, now)
                except Exception:
                    logger.exception("compose/encode failed")
                due.clear()
            interval = 1 / fps
            next_tick += interval
            delay = next_tick - time.monotonic()
            if delay < -interval:
                self.counters.skipped += round(-delay / interval)
                next_tick = time.monotonic()
                delay = 0
            if self._wake.wait(max(delay, 0)):
                self._wake.clear()
                next_tick = time.monotonic()

    def _lag(self, now: float, interval: float) -> float:
        """How long ago, smoothed, the pictures being composed arrived.

        The audio is stamped when it is mixed, every 20 ms; a picture waits
        for the next tick, up to a whole frame interval, by a phase that depends
        on when its publisher's frames come. Stamping the composite with the
        median age of its pictures taken off keeps a recording's sound and
        picture together whatever that phase, and the smoothing keeps the RTP
        timestamps as even as the clock's ticks.
        """
        with self._lock:
            ages = sorted(now - u.picture_time for u in self._upstreams.values() if now - u.picture_time < LAG_CAP)
        if ages:
            self.lag += (ages[len(ages) // 2] - self.lag) * min(1.0, interval / LAG_SMOOTHING)
        return self.lag

    def _tick(self, due: list[Output], in_use: frozenset[Output], pts: int, now: float) -> None:
        with self._lock:
            for output in self.encoders.keys() - in_use:
                del self.encoders[output]
                self._compositors.pop(output, None)
                self.counters.encoders_released += 1
            scenes = {personal: self._scene(spec, now) for personal, spec in self._scenes.items()}
        started = time.monotonic()
        pictures = self._compose(scenes, due)
        self.counters.compose_seconds += time.monotonic() - started
        packets: dict[Output, list[tuple[bytes, bool]]] = {}
        encoded = (
            self._encode_per_peer(pictures, pts)
            if self._per_peer_pool is not None
            else ((output, self._encode(output, frame, pts)) for output, frame in pictures.items())
        )
        for output, made in encoded:
            packets[output] = made
            self.counters.keyframes += sum(key for _, key in made)
            self.counters.tier_frames[output.tier] += 1
        self.counters.frames += 1
        counters, encoders = self._snapshot()
        self._send(Tick(pts, packets, counters, encoders))

    def _scene(self, spec: SceneSpec, now: float) -> Scene:
        """The tiles of a spec with each peer's latest picture, or its placeholder when stale or off.

        A screen is never stale: a still screen is sent at a frame a second or less.
        """
        stale = self.settings.stale_seconds
        tiles = []
        for tile in spec.tiles:
            upstream = self._upstreams.get(tile.peer_id) if tile.peer_id is not None and tile.video else None
            fresh = upstream is not None and (tile.screen or now - upstream.picture_time < stale)
            picture = upstream.picture if fresh else None  # type: ignore[union-attr]
            tiles.append(Tile(tile.name, picture, speaking=tile.speaking, screen=tile.screen))
        return Scene(tuple(tiles), spec.layout, spec.speaker)

    def _compose(self, scenes: dict[str | None, Scene], due: list[Output]) -> dict[Output, av.VideoFrame]:
        """Each due output's picture: the shared canvas of its size, or its personal one (hide-self)."""
        shared = [o for o in due if o.personal is None or self._per_peer_pool is not None]
        sizes = {self._size(output) for output in shared}
        canvases = self._shared_canvases(scenes.get(None, Scene()), sizes)
        pictures = {output: canvases[self._size(output)] for output in shared}
        for output in due:
            if output in pictures:
                continue
            compositor = self._compositors.get(output)
            if compositor is None:
                compositor = self._compositors[output] = Compositor(*self._size(output))
            scene = scenes.get(output.personal, Scene())
            pictures[output] = compositor.compose(scene.tiles, scene.layout, scene.speaker)
        return pictures

    def _encoder(self, output: Output) -> VideoEncoder:
        encoder = self.encoders.get(output)
        if encoder is None:
            tier = self.settings.tiers[output.tier]
            encoder = VideoEncoder(tier.width, tier.height, tier.fps, tier.bitrate, output.codec)
            with self._lock:
                self.encoders[output] = encoder
            self.counters.encoders_created += 1
        return encoder

    def _encode(self, output: Output, frame: av.VideoFrame, pts: int) -> list[tuple[bytes, bool]]:
        encoder = self._encoder(output)
        started = time.monotonic()
        packets = encoder.encode(frame, pts)
        self.counters.encode_seconds += time.monotonic() - started
        return packets

    def _encode_per_peer(self, pictures: dict[Output, av.VideoFrame], pts: int) -> list[tuple[Output, list]]:
        """The benchmark baseline, a naive MCU: the shared canvas encoded once per peer, in parallel."""
        assert self._per_peer_pool is not None
        # The compositor reuses its canvas: the encodes in parallel work on a copy of each.
        copies = {id(frame): frame.to_ndarray() for frame in pictures.values()}

        def encode(output: Output) -> tuple[Output, list[tuple[bytes, bool]]]:
            frame = av.VideoFrame.from_numpy_buffer(copies[id(pictures[output])], format="yuv420p")
            return output, self._encode(output, frame, pts)

        for output in pictures:
            self._encoder(output)
        return list(self._per_peer_pool.map(encode, pictures))

    def _snapshot(self) -> tuple[Counters, dict[Output, EncoderReport]]:
        """A copy of the counters, and each encoder's, for the parent."""
        counters = replace(self.counters, tier_frames=dict(self.counters.tier_frames))
        with self._lock:
            encoders = {o: EncoderReport(e.codec_name, e.frames, e.keyframes) for o, e in self.encoders.items()}
        return counters, encoders

    # --- canvases --------------------------------------------------------------------

    def _size(self, output: Output) -> tuple[int, int]:
        tier = self.settings.tiers[output.tier]
        return tier.width, tier.height

    def _shared_canvases(self, scene: Scene, sizes: set[tuple[int, int]]) -> dict[tuple[int, int], av.VideoFrame]:
        """Compose the largest canvas; a smaller one of the same aspect is that canvas scaled down.

        Scaling the three planes once costs less than composing again at the
        smaller size (docs/benchmarks.md), and looks the same. Not with a shared
        screen: every size is composed, so that the screen is scaled once from its
        own resolution into its place (fine text does not survive two scalings).
        """
        canvases: dict[tuple[int, int], av.VideoFrame] = {}
        rescale = not any(tile.screen for tile in scene.tiles)
        for width, height in sorted(sizes, reverse=True):
            source = next((size for size in canvases if size[0] * height == size[1] * width and size[0] > width), None)
            if not rescale:
                source = None
            if source is not None:
                canvases[width, height] = self._scale(canvases[source], (width, height))
                self.counters.scaled += 1
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
        for source, target in zip(yuv420p_planes(canvas), targets):
            cv2.resize(source, (target.shape[1], target.shape[0]), dst=target, interpolation=cv2.INTER_AREA)
        return av.VideoFrame.from_numpy_buffer(scaled, format="yuv420p")


def main(fd: int) -> None:
    """Serve one room over the inherited socket `fd` until the parent says stop or goes away."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="picture %(levelname)s %(message)s")
    # The server ends this process through the socket (or by going away): a Ctrl-C or SIGTERM sent to
    # the whole process group must not take the picture away while the server finishes its recordings.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Decoders come and go with the publishers: the same two arenas and periodic trim as the server.
    limit_arenas()  # before the decoder and clock threads exist
    trimmer = Trimmer()
    trimmer.start()
    # Short GIL slices: the decoders' and the clock's hand-overs are short (see mcu/server/cli.py).
    sys.setswitchinterval(0.002)
    # The fonts of the names are found once per process (about 0.15 s): before the first tick needs them.
    threading.Thread(target=faces, name="fonts", daemon=True).start()
    sock = socket.socket(fileno=fd)
    write_lock = threading.Lock()

    reader: MessageReader[ToProcess] = MessageReader(TO_PROCESS)
    mixer: VideoMixer | None = None

    def send(message: ToServer) -> None:
        data = encode(message)
        with write_lock:
            try:
                sock.sendall(data)
            except OSError:
                if mixer is not None:  # always: only the mixer sends
                    mixer.stop()  # the parent is gone

    while True:
        try:
            data = sock.recv(1 << 20)
        except OSError:
            data = b""
        if not data:
            break
        messages = reader.feed(data)
        for message in messages:
            if mixer is not None:
                mixer.handle(message, alone=len(messages) == 1)
            elif isinstance(message, Start):
                mixer = VideoMixer(message.settings, send)
                mixer.start()
            else:
                raise ValueError(f"the first message must be Start, not {type(message).__name__}")
        if mixer is not None and mixer.stopped:
            break
    if mixer is not None:
        mixer.stop()
        mixer.wait()
    trimmer.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]))
