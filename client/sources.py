"""Synthetic media for the client: a solid-colour test pattern, a moving one, a page of text and a tone."""

from __future__ import annotations

import asyncio
import fractions
import time
from typing import Callable

import av
import cv2
import numpy as np
from aiortc import MediaStreamTrack

SAMPLE_RATE = 48000
FRAME_SAMPLES = 960

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 40, 230),
    "yellow": (240, 220, 30),
    "magenta": (220, 40, 220),
    "cyan": (30, 210, 220),
    "white": (235, 235, 235),
    "orange": (245, 140, 20),
}


def parse_color(text: str) -> tuple[int, int, int]:
    """A colour name from COLORS or '#rrggbb'."""
    if text in COLORS:
        return COLORS[text]
    if len(text) == 7 and text.startswith("#"):
        try:
            return int(text[1:3], 16), int(text[3:5], 16), int(text[5:7], 16)
        except ValueError:
            pass
    raise ValueError(f"unknown colour {text!r}: use one of {', '.join(COLORS)} or #rrggbb")


def rgb_to_yuv(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """BT.601 limited-range Y, U, V of one colour, as the encoders see it."""
    pixel = np.array([[rgb[::-1]]], dtype=np.uint8)
    y, cr, cb = (int(c) for c in cv2.cvtColor(pixel, cv2.COLOR_BGR2YCrCb)[0, 0])
    # OpenCV gives full-range YCrCb; squeeze into limited range like swscale does.
    return int(16 + y * 219 / 255), int(128 + (cb - 128) * 224 / 255), int(128 + (cr - 128) * 224 / 255)


class _Paced(MediaStreamTrack):
    """Emits frames at a fixed rate against the wall clock."""

    def __init__(self, rate: float, start: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._interval = 1 / rate
        #: When frame 0 is due, asked on the first recv(): tracks that share it share one clock.
        self._start_at = start
        self._start: float | None = None
        self._index = 0

    async def _next_index(self) -> int:
        if self._start is None:
            self._start = self._start_at()
        wait = self._start + self._index * self._interval - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        index = self._index
        self._index += 1
        return index


class ColorTrack(_Paced):
    """A solid-colour yuv420p picture: easy to find again in a composite."""

    kind = "video"

    def __init__(self, color: tuple[int, int, int], width: int = 320, height: int = 240, fps: int = 15) -> None:
        super().__init__(fps)
        self.fps = fps
        y, u, v = rgb_to_yuv(color)
        self._buffer = np.empty((height * 3 // 2, width), np.uint8)
        self._buffer[:height] = y
        chroma = self._buffer[height:].reshape(-1)
        chroma[: chroma.size // 2] = u
        chroma[chroma.size // 2 :] = v

    async def recv(self) -> av.VideoFrame:
        index = await self._next_index()
        frame = av.VideoFrame.from_numpy_buffer(self._buffer, format="yuv420p")
        frame.pts = index * (90000 // self.fps)
        frame.time_base = fractions.Fraction(1, 90000)
        return frame


class MovingTrack(_Paced):
    """A colour under a scrolling texture, with a block sweeping the top band: live video that costs bits.

    A static picture lets an encoder fall to a few kbit/s, so it never meets a bandwidth limit;
    this one changes everywhere every frame (the texture moves a few pixels), so an encoder
    spends whatever rate it is given, and a frozen stream is seen at once (the picture stops
    changing). The centre of the picture keeps the colour on average: a composite's cell
    colour finds it. One period of frames is made at start (numpy only) and replayed.
    """

    kind = "video"

    #: Frames in one period of the motion: 4 s at 15 fps.
    PERIOD = 60
    #: The texture's amplitude around the colour, in luma and chroma steps.
    TEXTURE = 24

    def __init__(
        self, color: tuple[int, int, int], width: int = 320, height: int = 240, fps: int = 15, seed: int = 0
    ) -> None:
        super().__init__(fps)
        self.fps = fps
        y, u, v = rgb_to_yuv(color)
        rng = np.random.default_rng(seed)
        # Noise smoothed over 4x4 pixels: detail an encoder must code, not pure noise it cannot.
        coarse = rng.integers(-self.TEXTURE, self.TEXTURE + 1, (height // 4, width // 4), dtype=np.int16)
        texture = np.repeat(np.repeat(coarse, 4, axis=0), 4, axis=1)
        step = max(1, width // self.PERIOD)  # the texture wraps around once a period
        block = max(8, height // 6)
        #: One period of the motion, yuv420p pictures (a file for a browser's fake camera can be made of them).
        self.frames: list[np.ndarray] = []
        for index in range(self.PERIOD):
            luma = np.clip(y + np.roll(texture, index * step, axis=1), 16, 235).astype(np.uint8)
            # A white block runs along the top band, out of the centre where cell colours are measured.
            x = (index * (width - block)) // (self.PERIOD - 1)
            luma[block // 2 : block // 2 + block, x : x + block] = 235
            buffer = np.empty((height * 3 // 2, width), np.uint8)
            buffer[:height] = luma
            chroma = buffer[height:].reshape(-1)
            chroma[: chroma.size // 2] = u
            chroma[chroma.size // 2 :] = v
            self.frames.append(buffer)

    async def recv(self) -> av.VideoFrame:
        index = await self._next_index()
        frame = av.VideoFrame.from_numpy_buffer(self.frames[index % self.PERIOD], format="yuv420p")
        frame.pts = index * (90000 // self.fps)
        frame.time_base = fractions.Fraction(1, 90000)
        return frame


class TextTrack(_Paced):
    """A screen to share: a page of small dark text on white, 1920x1080 by default, with a clock line.

    The text is what a shared screen must keep legible: a font of about 16 px (Hershey simplex at
    scale 0.45, 15 px from ascender to descender), a line every 20 px, different words on every
    line. The top line shows the frame number, so the stream is live while the rest stays still,
    as a document on a screen does. `page` is the luma without that line (the reference to compare
    a received picture against).
    """

    kind = "video"

    #: Where the text starts, its scale and its line pitch, in pixels.
    MARGIN = 24
    SCALE = 0.45
    PITCH = 20
    WORDS = (
        "screen share legible detail video region scale encode frame pixel layout strip camera canvas "
        "tier bitrate keyframe decoder compose server client room peer offer answer mid track text line"
    ).split()

    def __init__(self, width: int = 1920, height: int = 1080, fps: int = 5, seed: int = 0) -> None:
        super().__init__(fps)
        self.fps = fps
        self.width, self.height = width, height
        rng = np.random.default_rng(seed)
        page = np.full((height, width), 235, np.uint8)
        for row, y in enumerate(range(self.MARGIN + 2 * self.PITCH, height - self.MARGIN, self.PITCH)):
            words = [f"{row:03d}"]
            while cv2.getTextSize(" ".join(words), cv2.FONT_HERSHEY_SIMPLEX, self.SCALE, 1)[0][0] < width - 300:
                words.append(str(rng.choice(self.WORDS)))
            text = " ".join(words)
            cv2.putText(page, text, (self.MARGIN, y), cv2.FONT_HERSHEY_SIMPLEX, self.SCALE, 16, 1, cv2.LINE_AA)
        page.setflags(write=False)
        self.page = page
        self._buffer = np.full((height * 3 // 2, width), 128, np.uint8)

    async def recv(self) -> av.VideoFrame:
        index = await self._next_index()
        luma = self._buffer[: self.height]
        luma[...] = self.page
        cv2.putText(
            luma, f"frame {index}", (self.MARGIN, self.MARGIN + self.PITCH), cv2.FONT_HERSHEY_SIMPLEX, self.SCALE, 16
        )
        # A new buffer each time: the sender's encoder may still hold the last one.
        frame = av.VideoFrame.from_numpy_buffer(self._buffer.copy(), format="yuv420p")
        frame.pts = index * (90000 // self.fps)
        frame.time_base = fractions.Fraction(1, 90000)
        return frame


class ToneTrack(_Paced):
    """A continuous sine tone, 20 ms mono frames at 48 kHz."""

    kind = "audio"

    def __init__(self, frequency: float, amplitude: float = 0.3) -> None:
        super().__init__(SAMPLE_RATE / FRAME_SAMPLES)
        self.frequency = frequency
        self.amplitude = amplitude

    async def recv(self) -> av.AudioFrame:
        index = await self._next_index()
        t = (np.arange(FRAME_SAMPLES) + index * FRAME_SAMPLES) / SAMPLE_RATE
        samples = (np.sin(2 * np.pi * self.frequency * t) * self.amplitude * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = index * FRAME_SAMPLES
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        return frame


class FlashBeep:
    """A white flash and a beep at the same instants, from one clock: to measure audio/video sync.

    Every `period` seconds, for `length` seconds, the picture turns from dark to
    white and a tone sounds; `video` and `audio` are the two tracks. Frame times
    are exact on both (pick a period that is a whole number of frames of each).
    """

    def __init__(self, period: float = 1.0, length: float = 0.2, fps: int = 15, frequency: float = 1000.0) -> None:
        self.period, self.length = period, length
        self._start: float | None = None
        self.video = _FlashTrack(self, fps)
        self.audio = _BeepTrack(self, frequency)

    def start(self) -> float:
        """The shared start, fixed when the first of the two tracks asks."""
        if self._start is None:
            self._start = time.monotonic()
        return self._start

    def on(self, seconds: np.ndarray) -> np.ndarray:
        """Whether each instant (seconds since the start) is within a flash."""
        return np.mod(seconds, self.period) < self.length


class _FlashTrack(_Paced):
    kind = "video"

    def __init__(self, source: FlashBeep, fps: int, width: int = 320, height: int = 240) -> None:
        super().__init__(fps, source.start)
        self.fps, self._source = fps, source
        self._white = ColorTrack(COLORS["white"], width, height, fps)._buffer
        self._dark = np.full_like(self._white, 128)
        self._dark[:height] = 30

    async def recv(self) -> av.VideoFrame:
        index = await self._next_index()
        white = self._source.on(np.array([index / self.fps]))[0]
        frame = av.VideoFrame.from_numpy_buffer(self._white if white else self._dark, format="yuv420p")
        frame.pts = index * (90000 // self.fps)
        frame.time_base = fractions.Fraction(1, 90000)
        return frame


class _BeepTrack(_Paced):
    kind = "audio"

    def __init__(self, source: FlashBeep, frequency: float, amplitude: float = 0.5) -> None:
        super().__init__(SAMPLE_RATE / FRAME_SAMPLES, source.start)
        self._source, self.frequency, self.amplitude = source, frequency, amplitude

    async def recv(self) -> av.AudioFrame:
        index = await self._next_index()
        t = (np.arange(FRAME_SAMPLES) + index * FRAME_SAMPLES) / SAMPLE_RATE
        tone = np.sin(2 * np.pi * self.frequency * t) * self.amplitude * 32767
        samples = np.where(self._source.on(t), tone, 0).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = index * FRAME_SAMPLES
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        return frame
