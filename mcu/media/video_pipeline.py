"""The room's video, seen from the server process: a video process fed upstream frames, packets fanned out.

Decoding, composing and encoding run in the room's video process
(`mcu/media/video_process.py`), told through the messages of
`mcu/media/video_channel.py`; this side forwards each publisher's encoded frames to it,
tells it what each canvas shows and which outputs are in use, and hands the
packets of each output to its peers. An output is a (codec, tier) pair in use by
at least one peer, or one peer's personal canvas (hide-self). Its encoder is
created on first use and released with its last peer; every peer of an output
gets the same packets.

Nothing here waits on the process: writes are buffered by the event loop, and
an upstream frame that finds the buffer full is dropped (its publisher is then
asked for a keyframe). A process that dies is started again.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import socket
import subprocess
import sys
import time
import weakref
from collections import defaultdict
from dataclasses import dataclass, fields
from typing import Callable, Iterable, assert_never

import av

from mcu.media.encoders import VIDEO_TIME_BASE, Output, Tier
from mcu.media.tracks import PacketSink, PacketTrack
from mcu.media.video_channel import (
    TO_SERVER,
    ChannelError,
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
from mcu.media.video_process import SceneSpec, Settings
from mcu.rtc.sender import SharedPacker

logger = logging.getLogger(__name__)

#: The scene of a canvas, leaving out the peer whose id is given (hide-self), or nobody.
SceneSource = Callable[[str | None], SceneSpec]

#: How often the server tells the video process what its canvases show and who watches them.
SYNC_INTERVAL = 0.04
#: Bytes waiting for the process past which upstream frames are dropped: it has stalled.
BACKLOG_LIMIT = 4 * 1024 * 1024
#: A process that dies is started again after this long (and this many times at most).
RESTART_DELAY = 0.5
MAX_RESTARTS = 5
#: How long `stop()` lets the process exit before killing it.
EXIT_GRACE = 2.0
#: One receiver's own keyframe requests (PLI/FIR) reach an encoder that others share at most
#: this often: a bad link cannot make everyone's stream all keyframes (its losses are repaired
#: by retransmission, and it is moved to a tier of its own, mcu/rooms/adaptation.py).
SHARED_PLI_INTERVAL = 10.0
#: A tier switch onto an encoder that others share asks it for a keyframe at most this often;
#: otherwise the switch waits for the encoder's periodic keyframe (the peer keeps its old tier meanwhile).
SHARED_SWITCH_INTERVAL = 60.0

Process = tuple[subprocess.Popen[bytes], socket.socket]

#: A video process started ahead of need: a new room's first picture (and the start of its
#: recording) need not wait the ≈ 0.5 s an interpreter takes to start and import the codecs.
_spare: Process | None = None


def _start_process() -> Process:
    ours, theirs = socket.socketpair()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "mcu.media.video_process", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
        )
    finally:
        theirs.close()
    return process, ours


def prepare_process() -> None:
    """Have a spare video process ready for the next room (it waits, idle, for its settings)."""
    global _spare
    if _spare is None or _spare[0].poll() is not None:
        if _spare is not None:
            _spare[1].close()
        _spare = _start_process()


def _take_process() -> Process:
    """The spare (started now if there is none, or it died) for a room; another is started for the next."""
    global _spare
    prepare_process()
    taken, _spare = _spare, None
    prepare_process()
    return taken  # type: ignore[return-value]


@dataclass
class VideoStats(Counters):
    """The video process's counters as it last reported them (going on across restarts), and this side's."""

    #: Upstream frames dropped because the video process had fallen behind.
    upstream_dropped: int = 0
    restarts: int = 0
    #: Keyframe requests not passed to an encoder others share (SHARED_PLI_INTERVAL, SHARED_SWITCH_INTERVAL).
    keyframes_gated: int = 0


#: The stats that the video process counts (the others are counted on this side).
_PROCESS_COUNTERS = tuple(f.name for f in fields(Counters))


@dataclass
class EncoderInfo:
    """One encoder of the video process, as last reported (kept up to date in place)."""

    codec_name: str
    frames: int = 0
    keyframes: int = 0


class _Channel(asyncio.Protocol):
    """The server's end of the socket to a video process: its messages, read, to `VideoPipeline._received`."""

    def __init__(self, pipeline: VideoPipeline) -> None:
        self._pipeline = pipeline
        self._reader: MessageReader[ToServer] = MessageReader(TO_SERVER)
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._reader.feed(data)
        except ChannelError:
            logger.exception("unreadable message from the video process")
            return
        for message in messages:
            self._pipeline._received(message)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class VideoPipeline:
    """One room's video: its video process, and the packets it makes handed to the room's peers."""

    def __init__(
        self,
        name: str,
        tiers: dict[str, Tier],
        default_tier: str,
        scenes: SceneSource,
        sinks: Callable[[], Iterable[PacketTrack]],
        on_pli: Callable[[str], None],
        stale_seconds: float = 2.0,
        encode_per_peer: bool = False,
        on_sync: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.tiers = tiers
        #: What non-peer sinks (`add_sink`) receive unless they name another output: the default tier in VP8.
        self.default_output = Output("vp8", default_tier)
        self.encode_per_peer = encode_per_peer
        self.stale_seconds = stale_seconds
        #: The encoders of the video process, by output, as it last reported them.
        self.encoders: dict[Output, EncoderInfo] = {}
        self.stats = VideoStats()
        self._scenes = scenes
        self._sinks = sinks
        self._on_pli = on_pli
        #: Called after each look at what the canvases show (every SYNC_INTERVAL), changed or not.
        self._on_sync = on_sync
        #: Consumers that are not peers (a recording, a stream) and the output each takes, on the event loop.
        self._extra_sinks: list[tuple[PacketSink, Output]] = []
        self._packers: dict[Output, SharedPacker] = {}
        self._transport: asyncio.Transport | None = None
        #: What was written before the process was connected, sent once it is.
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._sent_outputs: frozenset[Output] | None = None
        self._sent_scenes: dict[str | None, SceneSpec] | None = None
        #: The publishers whose video those scenes show (`shown`), worked out when they change.
        self._shown: frozenset[str] | None = None
        #: The room clock's zero (a `time.monotonic()`), the room's creation: packets' pts count from it.
        self.epoch = time.monotonic()
        #: The counters of the processes that died: a new one counts from zero, the room's stats go on.
        self._base = Counters()
        #: When each receiver's PLI, and each output's switch, last asked a shared encoder for a keyframe.
        self._pli_passed: weakref.WeakKeyDictionary[PacketTrack, float] = weakref.WeakKeyDictionary()
        self._switch_passed: dict[Output, float] = {}

    # --- life -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the video process and the task that keeps it told (returns at once)."""
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        """Stop the process and release every encoder (the room closed)."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._end_process()
        self.stats.encoders_released += len(self.encoders)
        self.encoders.clear()

    async def _run(self) -> None:
        restarts = 0
        while True:
            closed = await self._spawn()
            sync = asyncio.ensure_future(self._sync_forever())
            try:
                await closed
            finally:
                sync.cancel()
            self._transport = None
            await self._end_process()
            self._base = Counters(**{name: copy.copy(getattr(self.stats, name)) for name in _PROCESS_COUNTERS})
            restarts += 1
            self.stats.restarts = restarts
            if restarts > MAX_RESTARTS:
                logger.error("room %s: the video process died %d times; the room has no video", self.name, restarts)
                return
            logger.error("room %s: the video process died; starting another", self.name)
            await asyncio.sleep(RESTART_DELAY)
            # The new process's decoders start from nothing: every publisher sends a keyframe.
            self._pending.clear()
            self._pending_bytes = 0
            for peer_id in {t.peer_id for scene in (self._sent_scenes or {}).values() for t in scene.tiles}:
                if peer_id is not None:
                    self._on_pli(peer_id)

    async def _spawn(self) -> asyncio.Future[None]:
        """A new process, told the settings, what was held for it, the outputs and what each canvas shows."""
        self._process, ours = _take_process()
        loop = asyncio.get_running_loop()
        transport, channel = await loop.connect_accepted_socket(lambda: _Channel(self), ours)
        settings = Settings(self.tiers, self.stale_seconds, self.epoch, self.encode_per_peer)
        transport.write(encode(Start(settings)))
        for data in self._pending:
            transport.write(data)
        self._pending.clear()
        self._pending_bytes = 0
        self._transport = transport
        self._sent_outputs = self._sent_scenes = self._shown = None
        self._sync()
        return channel.closed

    async def _end_process(self) -> None:
        process, self._process = self._process, None
        if self._transport is not None:
            self._write(Stop())
            self._transport.close()
            self._transport = None
        if process is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + EXIT_GRACE
        while process.poll() is None and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if process.poll() is None:
            process.kill()
            process.wait()

    # --- to the process ----------------------------------------------------------------

    def _write(self, message: ToProcess) -> None:
        data = encode(message)
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)
        elif not self._stopping and self._pending_bytes + len(data) <= BACKLOG_LIMIT:
            # The process is starting: its first frames (a publisher's first keyframe) must not be lost.
            self._pending.append(data)
            self._pending_bytes += len(data)

    def upstream(self, peer_id: str, codec_name: str, data: bytes, timestamp: int) -> None:
        """A publisher's encoded video frame, for its decoder in the video process."""
        transport = self._transport
        if transport is not None and transport.get_write_buffer_size() > BACKLOG_LIMIT:
            self.stats.upstream_dropped += 1
            self._on_pli(peer_id)  # its decoder will have to start again on a keyframe
            return
        self._write(UpstreamFrame(peer_id, codec_name, data, timestamp))

    def forget(self, peer_id: str) -> None:
        """A publisher left: its decoder and picture go."""
        self._write(Forget(peer_id))

    def add_sink(self, sink: PacketSink, output: Output | None = None) -> None:
        """Also push `output`'s packets (default: the default tier's VP8) to `sink`.

        It keeps that output's encoder in use, sharing it with the peers of the same
        output. It waits for a keyframe: request one.
        """
        self._extra_sinks = [*self._extra_sinks, (sink, output or self.default_output)]
        self._sync()

    def remove_sink(self, sink: PacketSink) -> None:
        self._extra_sinks = [(s, o) for s, o in self._extra_sinks if s is not sink]

    def request_output_keyframe(self, output: Output) -> None:
        """A keyframe from `output`'s encoder (a stream starting, or a live segment due), never gated."""
        self._write(KeyframeRequest(output))

    def request_keyframe(self, sink: PacketTrack | None = None, reason: str = "start") -> None:
        """A keyframe for the encoder that feeds `sink`, or for the non-peer sinks.

        `reason`: "start" (a join, a reconnection, a recording) always passes; to an
        encoder that other sinks share, a peer's "pli" or move "down" passes once per
        SHARED_PLI_INTERVAL of that peer, a move up ("switch") once per
        SHARED_SWITCH_INTERVAL of that encoder (else it waits for a periodic keyframe).
        """
        if sink is None:
            output: Output | None = self.default_output
        elif self.encode_per_peer:
            output = self._peer_output(sink)
        elif reason == "switch" and sink.pending is not None:
            output = sink.pending
        else:
            output = sink.output
        if output is None:
            return
        if sink is not None and reason != "start" and self._shared(output, sink):
            now = time.monotonic()
            if reason == "switch":
                passed, interval = self._switch_passed.get(output, float("-inf")), SHARED_SWITCH_INTERVAL
            else:
                passed, interval = self._pli_passed.get(sink, float("-inf")), SHARED_PLI_INTERVAL
            if now - passed < interval:
                self.stats.keyframes_gated += 1
                return
            if reason == "switch":
                self._switch_passed[output] = now
            else:
                self._pli_passed[sink] = now
        # An output without an encoder yet gets one that starts on a keyframe.
        self._write(KeyframeRequest(output))

    def _shared(self, output: Output, sink: PacketTrack) -> bool:
        """Whether a sink other than `sink` receives `output` now."""
        if any(extra == output for _, extra in self._extra_sinks):
            return True
        return any(other is not sink and other.output == output for other in self._sinks())

    def _peer_output(self, sink: PacketTrack) -> Output:
        """The benchmark baseline's output of one peer: its own encode of the shared canvas."""
        return Output("vp8", self.default_output.tier, f"peer-{id(sink)}")

    def _outputs(self) -> dict[Output, list[PacketSink]]:
        """The sinks of each output in use."""
        outputs: dict[Output, list[PacketSink]] = defaultdict(list)
        for sink in self._sinks():
            if self.encode_per_peer:
                if sink.output is not None:
                    outputs[self._peer_output(sink)].append(sink)
                continue
            for output in (sink.output, sink.pending):
                if output is not None and output.tier in self.tiers:
                    outputs[output].append(sink)
        for extra, output in self._extra_sinks:
            outputs[output].append(extra)
        return outputs

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(SYNC_INTERVAL)
            self._sync()

    def _sync(self) -> None:
        """Tell the process the outputs in use and what each canvas shows, when either changed."""
        if self._transport is None:
            return
        outputs = frozenset(self._outputs())
        personal = {None} | {o.personal for o in outputs if o.personal is not None and not self.encode_per_peer}
        scenes = {leave_out: self._scenes(leave_out) for leave_out in personal}
        if scenes != self._sent_scenes:
            self._write(Scenes(scenes))
            self._sent_scenes = scenes
            self._shown = frozenset(
                tile.peer_id
                for scene in scenes.values()
                for tile in scene.tiles
                if tile.peer_id is not None and tile.video
            )
        if outputs != self._sent_outputs:
            self._write(Outputs(outputs))
            self._sent_outputs = outputs
            self._packers = {output: packer for output, packer in self._packers.items() if output in outputs}
        if self._on_sync is not None:
            try:
                self._on_sync()
            except Exception:
                # What the room does with it must not stop the canvases from being kept up to date.
                logger.exception("room %s: after a sync", self.name)

    def shown(self) -> frozenset[str] | None:
        """The publishers whose video is in a canvas the process was last told of (shared, recorded or
        personal); None while it has been told none (starting, or started again)."""
        return self._shown

    # --- from the process ----------------------------------------------------------------

    def _received(self, message: ToServer) -> None:
        match message:
            case Tick(pts, packets, counters, encoders):
                self._update(counters, encoders)
                if packets:
                    self._deliver(pts, packets)
            case PliRequest(peer_id):
                self._on_pli(peer_id)
            case _:
                assert_never(message)

    def _deliver(self, pts: int, packets: dict[Output, list[tuple[bytes, bool]]]) -> None:
        outputs = self._outputs()
        made: dict[Output, list[av.Packet]] = {}
        for output, encoded in packets.items():
            if not outputs.get(output):
                continue
            packer = self._packers.get(output)
            if packer is None:
                packer = self._packers[output] = SharedPacker(output.codec)
            made[output] = []
            for data, keyframe in encoded:
                packet = av.Packet(data)
                packet.pts = packet.dts = pts
                packet.time_base = VIDEO_TIME_BASE
                packet.is_keyframe = keyframe
                packer.pack(packet)
                made[output].append(packet)
        if self.encode_per_peer:
            for output, made_packets in made.items():
                for packet in made_packets:
                    for sink in outputs[output]:
                        sink.push(packet)
            return
        # A switching track first gets the tick's frame of the output it moves to: if that is the
        # keyframe it waits for, it then drops the old output's frame of the same tick, which has the
        # same RTP timestamp and would otherwise be taken by the receiver for part of one frame.
        switching = {
            (id(sink), output)
            for output in made
            for sink in outputs[output]
            if getattr(sink, "pending", None) == output
        }
        for output, made_packets in made.items():
            for sink in outputs[output]:
                if (id(sink), output) in switching:
                    for packet in made_packets:
                        sink.push(packet, output)  # type: ignore[call-arg]
        for output, made_packets in made.items():
            for sink in outputs[output]:
                if isinstance(sink, PacketTrack):
                    if (id(sink), output) not in switching:
                        for packet in made_packets:
                            sink.push(packet, output)  # which stream it is: a switching track takes one
                else:
                    for packet in made_packets:
                        sink.push(packet)

    def _update(self, counters: Counters, encoders: dict[Output, EncoderReport]) -> None:
        """The stats: the process's counters added to those of the processes before it; its encoders as reported."""
        for name in _PROCESS_COUNTERS:
            if name == "tier_frames":
                tier_frames = defaultdict(int, self._base.tier_frames)
                for tier, frames in counters.tier_frames.items():
                    tier_frames[tier] += frames
                self.stats.tier_frames = tier_frames
            else:
                setattr(self.stats, name, getattr(self._base, name) + getattr(counters, name))
        for output in self.encoders.keys() - encoders.keys():
            del self.encoders[output]
        for output, report in encoders.items():
            info = self.encoders.get(output)
            if info is None:
                info = self.encoders[output] = EncoderInfo(report.codec_name)
            info.frames, info.keyframes = report.frames, report.keyframes
