"""`mcu compose`: a composite recording built offline from media files, one file per participant.

It runs the live server's media math on a clock of its own: every 20 ms the
inputs' audio is mixed like the room's shared mix (sum of everyone, the same
limiter), and at the output frame rate the compositor draws the latest picture
of each input in the chosen layout. Inputs may differ in size, frame rate and
sample rate (resampled to 48 kHz mono); a file without video, or whose video
has not started or has ended, shows the participant's placeholder tile.
"""

from __future__ import annotations

import argparse
import sys
from collections import deque
from pathlib import Path
from typing import Callable, TextIO

import av
import numpy as np

from compositor.audio import FRAME_SAMPLES, SAMPLE_RATE, Limiter, SampleBuffer, mix_sums
from compositor.layout import parse_layout
from compositor.speakers import SpeakerDetector, levels
from compositor.video import Compositor, Tile

#: Audio decoded ahead of the mix (the inputs' streams interleave differently).
AUDIO_AHEAD_SECONDS = 30


class OfflineError(Exception):
    """An input cannot be read, or has neither audio nor video."""


class _Input:
    """One participant: its file decoded in order, the pictures ahead of the clock and its audio."""

    def __init__(self, path: str) -> None:
        try:
            self._container = av.open(path)
        except (OSError, av.FFmpegError) as exc:
            raise OfflineError(f"{path}: {exc}") from exc
        self.name = Path(path).stem
        video = self._container.streams.video[:1]
        audio = self._container.streams.audio[:1]
        if not video and not audio:
            raise OfflineError(f"{path}: no audio or video stream")
        self.has_video = bool(video)
        self.duration = self._duration()
        self._frames = self._container.decode(*video, *audio)
        self._pictures: deque[av.VideoFrame] = deque()
        self._picture: av.VideoFrame | None = None
        self._last_picture_time = float("-inf")
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE) if audio else None
        self.audio = SampleBuffer(max_samples=SAMPLE_RATE * AUDIO_AHEAD_SECONDS)
        self._audio_until = 0.0
        self._ended = False

    def _duration(self) -> float:
        if self._container.duration is not None:
            return self._container.duration / av.time_base
        return max(float(s.duration * s.time_base) for s in self._container.streams if s.duration and s.time_base)

    def advance(self, until: float) -> None:
        """Decode until the audio covers `until` and the next picture is past it (or the file ends)."""
        while not self._ended and (
            (self._resampler is not None and self._audio_until < until)
            or (self.has_video and (not self._pictures or self._pictures[-1].time <= until))
        ):
            try:
                frame = next(self._frames)
            except StopIteration:
                self._ended = True
                break
            if isinstance(frame, av.VideoFrame):
                self._pictures.append(frame)
                continue
            assert isinstance(frame, av.AudioFrame) and self._resampler is not None  # only these two are decoded
            for mono in self._resampler.resample(frame):
                self.audio.push(mono.to_ndarray().reshape(-1))
                self._audio_until += mono.samples / SAMPLE_RATE

    def picture(self, at: float, stale: float) -> av.VideoFrame | None:
        """The latest picture at time `at`; None before the first or `stale` s after the last."""
        while self._pictures and self._pictures[0].time <= at:
            self._picture = self._pictures.popleft()
            self._last_picture_time = self._picture.time
        if self._picture is None or at - self._last_picture_time > stale:
            return None
        return self._picture

    def close(self) -> None:
        self._container.close()


def render(
    inputs: list[str],
    output: str,
    width: int = 1280,
    height: int = 720,
    fps: int = 30,
    layout: str = "grid",
    bitrate: int = 2_000_000,
    progress: TextIO | None = None,
) -> float:
    """Write the composite of `inputs` to `output` (Matroska/WebM, VP8 and Opus); returns its duration."""
    sources = [_Input(path) for path in inputs]
    duration = max(source.duration for source in sources)
    compositor = Compositor(width, height)
    arrangement = parse_layout(layout)
    detector = SpeakerDetector()
    limiter = Limiter()
    ids = list(range(len(sources)))
    # A picture is held this long past the last one (a frame rate as low as 1 fps still plays).
    stale = 1.0
    with av.open(output, "w") as container:
        video = container.add_stream("libvpx", rate=fps)
        video.width, video.height, video.pix_fmt, video.bit_rate = width, height, "yuv420p", bitrate
        video.options = {"deadline": "good", "cpu-used": "4", "threads": "2"}
        audio = container.add_stream("libopus", rate=SAMPLE_RATE)
        audio.layout = "mono"
        ticks = int(np.ceil(duration * SAMPLE_RATE / FRAME_SAMPLES))
        picture_index = 0
        bar = _Progress(progress, ticks)
        for tick in range(ticks):
            start = tick * FRAME_SAMPLES / SAMPLE_RATE
            end = start + FRAME_SAMPLES / SAMPLE_RATE
            for source in sources:
                source.advance(end)
            frames = np.stack([source.audio.pull(FRAME_SAMPLES) for source in sources])
            detector.update(ids, levels(frames))
            total, _ = mix_sums(frames)
            mixed = av.AudioFrame.from_ndarray(limiter.process(total).reshape(1, -1), format="s16", layout="mono")
            mixed.sample_rate, mixed.pts = SAMPLE_RATE, tick * FRAME_SAMPLES
            container.mux(audio.encode(mixed))
            while picture_index / fps < end:
                at = picture_index / fps
                tiles = [Tile(s.name, s.picture(at, stale)) for s in sources]
                picture = compositor.compose(tiles, arrangement, detector.active)  # type: ignore[arg-type]
                picture.pts = picture_index
                container.mux(video.encode(picture))
                picture_index += 1
            bar.update(tick + 1)
        container.mux(video.encode(None))
        container.mux(audio.encode(None))
        bar.done()
    for source in sources:
        source.close()
    return duration


class _Progress:
    """A progress bar on a terminal stream: `[#####.....]  50%  3.0/6.0 s`."""

    WIDTH = 30

    def __init__(self, stream: TextIO | None, total: int) -> None:
        self._stream, self._total, self._shown = stream, max(total, 1), -1

    def update(self, done: int) -> None:
        percent = done * 100 // self._total
        if self._stream is None or percent == self._shown:
            return
        self._shown = percent
        filled = done * self.WIDTH // self._total
        seconds, total = done * FRAME_SAMPLES / SAMPLE_RATE, self._total * FRAME_SAMPLES / SAMPLE_RATE
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self._stream.write(f"\rcompose [{bar}] {percent:3d}% {seconds:5.1f}/{total:.1f} s")
        self._stream.flush()

    def done(self) -> None:
        if self._stream is not None:
            self._stream.write("\n")
            self._stream.flush()


def add_parser(commands: argparse._SubParsersAction, size: Callable[[str], tuple[int, int]]) -> None:
    """The `mcu compose` sub-command (`size` parses WxH as `mcu serve --size` does)."""
    parser = commands.add_parser("compose", help="build a composite recording from media files, one per participant")
    parser.add_argument("inputs", nargs="+", metavar="IN", help="media files (audio, video or both)")
    parser.add_argument("-o", "--output", required=True, help="the composite to write (.mkv or .webm)")
    parser.add_argument("--layout", default="grid", choices=["grid", "speaker"], help="default grid")
    parser.add_argument("--size", type=size, default=(1280, 720), help="WxH (default 1280x720)")
    parser.add_argument("--fps", type=int, default=30, help="output frame rate (default 30)")
    parser.add_argument("--video-bitrate", type=int, default=2_000_000, help="bit/s (default 2000000)")


def run(args: argparse.Namespace) -> int:
    if not args.output.endswith((".mkv", ".webm")):
        print("mcu compose: the output must be a .mkv or .webm file (VP8 and Opus)", file=sys.stderr)
        return 2
    width, height = args.size
    try:
        duration = render(
            args.inputs, args.output, width, height, args.fps, args.layout, args.video_bitrate, progress=sys.stderr
        )
    except OfflineError as exc:
        print(f"mcu compose: {exc}", file=sys.stderr)
        return 1
    print(f"mcu compose: wrote {args.output} ({duration:.1f} s, {len(args.inputs)} participants)", file=sys.stderr)
    return 0
