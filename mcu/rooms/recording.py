"""Recording a room's composite: the shared encoders' packets muxed into WebM, no extra encode.

The recorder is one more consumer of the packets every peer receives: the
room's VP8 composite and the Opus encode of the whole mix. It copies each
packet's bytes where it is pushed (the peers' senders still read the original)
into a queue, and a thread of its own muxes the queue in batches, so a slow disk
never holds up the room and the room's threads never wake it per packet.

Crash safety: the Matroska muxer closes a cluster every second and every batch
is flushed to the file at once, so a `kill -9` loses at most the open cluster;
a normal stop writes the duration and the index (cues).
"""

from __future__ import annotations

import asyncio
import datetime
import fractions
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

import av

from compositor.audio import SAMPLE_RATE

logger = logging.getLogger(__name__)

#: Matroska's own time unit (milliseconds).
TIME_BASE = fractions.Fraction(1, 1000)
#: Muxer options that make a killed recording playable up to about a second before the kill:
#: a cluster per second, each packet flushed to the file, and no waiting more than half a
#: second for a stream that has nothing to say before writing the other one.
MUXER_OPTIONS = {"cluster_time_limit": "1000", "flush_packets": "1", "max_interleave_delta": "500000"}
#: How often the recorder thread muxes what has arrived. One wake-up per packet (80 a second
#: in a room, each a GIL hand-over) cost a room about 4 % of its CPU; batches cost a fraction of that.
BATCH_SECONDS = 0.1


class RecordingError(Exception):
    """The recording could not start (no directory, not writable, cannot create the file)."""


def recording_path(directory: Path, room: str, started: datetime.datetime) -> Path:
    """`<room>-<UTC start, YYYYmmddTHHMMSSZ>.webm`, with `-2`, `-3`... if that name is taken."""
    stem = f"{room}-{started.astimezone(datetime.timezone.utc):%Y%m%dT%H%M%SZ}"
    path, number = directory / f"{stem}.webm", 1
    while path.exists():
        number += 1
        path = directory / f"{stem}-{number}.webm"
    return path


def check_directory(directory: Path) -> None:
    """Raise RecordingError unless `directory` exists and this process may write in it."""
    if not directory.is_dir():
        raise RecordingError(f"The recording directory {str(directory)!r} does not exist.")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise RecordingError(f"The recording directory {str(directory)!r} is not writable.")


class _Sink:
    """What a pipeline pushes packets into (`push(packet)`)."""

    def __init__(self, push: Callable[[av.Packet], None]) -> None:
        self.push = push


class Recording:
    """One file of one room: VP8 video and Opus audio packets, muxed as they come.

    `video` and `audio` are the sinks to give the room's pipelines. The file
    starts at the first video keyframe (ask the encoder for one when adding the
    sink); audio before it is dropped, so the file opens on a picture with sound.
    Both pipelines stamp packets with the room's clock (started together at
    `epoch`, a `time.monotonic()`), which keeps them in sync in the file and
    tells the wall-clock time of the file's first picture: `started_at`, set
    then and announced through `on_started`. A new room's first picture can
    come most of a second after the recording was asked for; saying when the
    file's time 0 really was keeps a recording aligned with what happened
    around it (chat, logs).
    """

    def __init__(
        self,
        room: str,
        directory: Path,
        width: int,
        height: int,
        epoch: float,
        on_started: Callable[[Recording], None],
        on_failed: Callable[[Recording, str], None],
    ) -> None:
        check_directory(directory)
        self.room = room
        #: When the file's time 0 was, by the server's clock: None until its first picture is written.
        self.started_at: datetime.datetime | None = None
        self.path = recording_path(directory, room, datetime.datetime.now(datetime.timezone.utc))
        try:
            # PyAV opens the file only at the first packet: create it now, so that the start fails.
            self.path.touch(exist_ok=False)
            container = av.open(str(self.path), "w", format="webm", options=MUXER_OPTIONS)
        except (OSError, av.FFmpegError) as exc:
            raise RecordingError(f"The recording file could not be created: {exc}") from exc
        video = container.add_stream("vp8", rate=30)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.time_base = TIME_BASE
        audio = container.add_stream("libopus", rate=SAMPLE_RATE)
        audio.layout = "mono"
        audio.time_base = TIME_BASE
        self._container, self._video_stream, self._audio_stream = container, video, audio
        self._loop = asyncio.get_running_loop()
        self._epoch = epoch
        self._on_started = on_started
        self._on_failed = on_failed
        #: Set at the first picture or the stop, whichever comes first.
        self._settled = asyncio.Event()
        #: (stream index, bytes, room-clock seconds, keyframe), appended by the pipelines' threads.
        self._queue: deque[tuple[int, bytes, fractions.Fraction, bool]] = deque()
        self._stopping = threading.Event()
        #: The room-clock time (seconds) of the first keyframe: the file's zero. Recorder thread only.
        self._origin: fractions.Fraction | None = None
        self._last_ms = {video.index: -1, audio.index: -1}
        self.error: str | None = None
        self.stopped = False
        self.video = _Sink(lambda packet: self._push(video.index, packet))
        self.audio = _Sink(lambda packet: self._push(audio.index, packet))
        self.packets = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name=f"recorder-{room}", daemon=True)
        self._thread.start()

    @property
    def duration(self) -> float:
        """Seconds written so far (the latest packet's time)."""
        return max(self._last_ms.values(), default=0) / 1000 if self._origin is not None else 0.0

    def describe(self) -> dict:
        """The file and its start (None before the first picture), as `recordingStarted` and `joined` tell them."""
        started = self.started_at
        return {"file": self.path.name, "startedAt": None if started is None else round(started.timestamp() * 1000)}

    async def wait_started(self, timeout: float) -> bool:
        """Whether the file got its first picture within `timeout` seconds (False at once if it stops first)."""
        try:
            await asyncio.wait_for(self._settled.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        return self.started_at is not None

    def _push(self, index: int, packet: av.Packet) -> None:
        """Queue a copy of `packet`; called by the video pipeline (event loop) and the audio thread."""
        if not self.stopped and packet.pts is not None:
            self._queue.append((index, bytes(packet), packet.pts * packet.time_base, packet.is_keyframe))

    def _run(self) -> None:
        while True:
            stopping = self._stopping.wait(BATCH_SECONDS)
            while self._queue:
                self._write(*self._queue.popleft())
            if stopping:
                if self.error is None:
                    self._close_container()
                    if self._origin is None:
                        # Stopped before its first picture: no empty, unplayable file is left behind.
                        self.path.unlink(missing_ok=True)
                return

    def _write(self, index: int, data: bytes, at: fractions.Fraction, keyframe: bool) -> None:
        if self.error is not None:
            return
        if self._origin is None:
            # The file opens on a keyframe; audio before it has no picture to go with.
            if index != self._video_stream.index or not keyframe:
                self.dropped += index == self._video_stream.index
                return
            self._begin(at)
        assert self._origin is not None  # _begin set it
        ms = round((at - self._origin) * 1000)
        if ms <= self._last_ms[index]:
            return  # before the file's start, or not after the previous one (the muxer needs order)
        self._last_ms[index] = ms
        packet = av.Packet(data)
        packet.pts = packet.dts = ms
        packet.time_base = TIME_BASE
        packet.is_keyframe = keyframe
        packet.stream = self._container.streams[index]
        try:
            self._container.mux(packet)
            self.packets += 1
        except (OSError, av.FFmpegError) as exc:
            self._fail(f"Writing the recording failed: {exc}")

    def _begin(self, origin: fractions.Fraction) -> None:
        """The first picture, at room-clock time `origin`: the file's time 0, by the wall clock in the file too."""
        self._origin = origin
        ago = time.monotonic() - (self._epoch + float(origin))
        self.started_at = datetime.datetime.fromtimestamp(time.time() - ago, datetime.timezone.utc)
        # Written in the header (Matroska's DateUTC), which the muxer writes with this first packet.
        self._container.metadata["creation_time"] = self.started_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self._loop.call_soon_threadsafe(self._announce)

    def _announce(self) -> None:
        self._settled.set()
        if not self.stopped:
            self._on_started(self)

    def _fail(self, message: str) -> None:
        """Stop writing; what was flushed stays readable. Runs on the recorder thread."""
        self.error = message
        logger.error("room %s: recording %s: %s", self.room, self.path.name, message)
        self._close_container()
        self._loop.call_soon_threadsafe(self._on_failed, self, message)

    def _close_container(self) -> None:
        try:
            self._container.close()
        except (OSError, av.FFmpegError) as exc:
            if self.error is None:
                self.error = f"Finishing the recording failed: {exc}"

    async def stop(self) -> None:
        """Write what is queued, then the duration and the index; safe to call more than once."""
        if self.stopped:
            return
        self.stopped = True
        self._stopping.set()
        self._settled.set()
        await asyncio.to_thread(self._thread.join)
        logger.info("room %s: recording %s stopped after %.1f s", self.room, self.path.name, self.duration)
