"""Writes what a client receives (the composite and the mix) to a WebM/Matroska file.

aiortc's MediaRecorder opens the container on the first packet of any stream, so
when audio arrives first the video stream is stuck with a default size. This
recorder holds audio back until the first picture gives the size, then encodes on
a thread of its own so the client's event loop never waits for an encode.
"""

from __future__ import annotations

import fractions
import time
from concurrent.futures import ThreadPoolExecutor

import av

#: Audio held back while waiting for the first picture.
MAX_EARLY_AUDIO = 250
TIME_BASE = fractions.Fraction(1, 1000)


class Recorder:
    """Records decoded frames with timestamps taken from their arrival."""

    def __init__(self, path: str) -> None:
        if not path.endswith((".webm", ".mkv")):
            raise ValueError("the recording must be a .webm or .mkv file (VP8 and Opus)")
        self.path = path
        self._container: av.container.OutputContainer | None = None
        self._video: av.VideoStream | None = None
        self._audio: av.AudioStream | None = None
        self._start = time.monotonic()
        self._early_audio: list[tuple[av.AudioFrame, int]] = []
        self._last_video_pts = -1
        self._audio_next: int | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="recorder")

    def video(self, frame: av.VideoFrame) -> None:
        pts = max(self._now(), self._last_video_pts + 1)
        self._last_video_pts = pts
        self._executor.submit(self._write_video, frame, pts)

    def audio(self, frame: av.AudioFrame) -> None:
        # Audio timestamps count samples from the first arrival: no gaps from jitter.
        if self._audio_next is None:
            self._audio_next = self._now() * frame.sample_rate // 1000
        self._executor.submit(self._write_audio, frame, self._audio_next)
        self._audio_next += frame.samples

    def close(self) -> None:
        """Flush the encoders and finish the file (blocks until written)."""
        self._executor.submit(self._finish)
        self._executor.shutdown(wait=True)

    def _now(self) -> int:
        return int((time.monotonic() - self._start) * 1000)

    def _write_video(self, frame: av.VideoFrame, pts: int) -> None:
        if self._container is None:
            self._open(frame.width, frame.height)
            for early, early_pts in self._early_audio:
                self._encode_audio(early, early_pts)
            self._early_audio.clear()
        assert self._video is not None
        out = frame.reformat(width=self._video.width, height=self._video.height, format="yuv420p")
        out.pts, out.time_base = pts, TIME_BASE
        self._mux(self._video.encode(out))

    def _write_audio(self, frame: av.AudioFrame, pts: int) -> None:
        """`pts` in samples."""
        if self._container is None:
            if len(self._early_audio) < MAX_EARLY_AUDIO:
                self._early_audio.append((frame, pts))
            return
        self._encode_audio(frame, pts)

    def _encode_audio(self, frame: av.AudioFrame, pts: int) -> None:
        assert self._audio is not None
        frame.pts, frame.time_base = pts, fractions.Fraction(1, frame.sample_rate)
        self._mux(self._audio.encode(frame))

    def _open(self, width: int, height: int) -> None:
        container = av.open(self.path, mode="w")
        video = container.add_stream("libvpx", rate=30)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.time_base = TIME_BASE
        video.bit_rate = 1_000_000
        video.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
        audio = container.add_stream("libopus", rate=48000)
        self._container, self._video, self._audio = container, video, audio

    def _mux(self, packets: list[av.Packet]) -> None:
        assert self._container is not None
        self._container.mux(packets)

    def _finish(self) -> None:
        if self._container is None:
            return
        assert self._video is not None and self._audio is not None
        self._mux(self._video.encode(None))
        self._mux(self._audio.encode(None))
        self._container.close()
