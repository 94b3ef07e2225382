"""Recording a room's composite: the shared encoders' packets muxed into WebM, no extra encode.

The recorder is one more consumer of the packets every peer receives: the
room's VP8 composite and the Opus encode of the whole mix. It copies each
packet's bytes on the event loop (the peers' senders still read the original)
and muxes on a thread of its own, so a slow disk never holds up the room.

Crash safety: the Matroska muxer closes a cluster every second and every packet
is flushed to the file at once, so a `kill -9` loses at most the open cluster;
a normal stop writes the duration and the index (cues).
"""

from __future__ import annotations

import asyncio
import datetime
import fractions
import logging
import os
from concurrent.futures import ThreadPoolExecutor
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
    Both pipelines stamp packets with the room's clock (started together), which
    keeps them in sync in the file.
    """

    def __init__(
        self,
        room: str,
        directory: Path,
        width: int,
        height: int,
        on_failed: Callable[[Recording, str], None],
    ) -> None:
        check_directory(directory)
        self.room = room
        self.started_at = datetime.datetime.now(datetime.timezone.utc)
        self.path = recording_path(directory, room, self.started_at)
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
        self._on_failed = on_failed
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"recorder-{room}")
        #: The room-clock time (seconds) of the first keyframe: the file's zero.
        self._origin: fractions.Fraction | None = None
        self._last_ms = {video.index: -1, audio.index: -1}
        self.error: str | None = None
        self.stopped = False
        self.video = _Sink(self._push_video)
        self.audio = _Sink(self._push_audio)
        self.packets = 0
        self.dropped = 0

    @property
    def duration(self) -> float:
        """Seconds written so far (the latest packet's time)."""
        return max(self._last_ms.values(), default=0) / 1000 if self._origin is not None else 0.0

    def describe(self) -> dict:
        """The file and its start, as `recordingStarted` and `joined` tell them."""
        return {"file": self.path.name, "startedAt": int(self.started_at.timestamp() * 1000)}

    def _push_video(self, packet: av.Packet) -> None:
        if self.stopped or packet.pts is None:
            return
        if self._origin is None:
            if not packet.is_keyframe:
                self.dropped += 1
                return
            self._origin = packet.pts * packet.time_base
        self._submit(self._video_stream.index, packet)

    def _push_audio(self, packet: av.Packet) -> None:
        # The audio pipeline calls its sinks on its own thread; the file's state lives on the loop.
        if not self.stopped:
            self._loop.call_soon_threadsafe(self._audio_on_loop, packet)

    def _audio_on_loop(self, packet: av.Packet) -> None:
        if self.stopped or self._origin is None or packet.pts is None:
            return
        self._submit(self._audio_stream.index, packet)

    def _submit(self, index: int, packet: av.Packet) -> None:
        assert self._origin is not None
        ms = round((packet.pts * packet.time_base - self._origin) * 1000)
        if ms <= self._last_ms[index]:
            return  # before the file's start, or not after the previous one (the muxer needs order)
        self._last_ms[index] = ms
        # A copy: the peers' senders read the original packet on the event loop.
        self._executor.submit(self._write, index, bytes(packet), ms, packet.is_keyframe)

    def _write(self, index: int, data: bytes, ms: int, keyframe: bool) -> None:
        if self.error is not None:
            return
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

    def _finish(self) -> None:
        if self.error is None:
            self._close_container()

    async def stop(self) -> None:
        """Write what is queued, then the duration and the index; safe to call more than once."""
        if self.stopped:
            return
        self.stopped = True
        await asyncio.wrap_future(self._executor.submit(self._finish))
        self._executor.shutdown(wait=False)
        logger.info("room %s: recording %s stopped after %.1f s", self.room, self.path.name, self.duration)
