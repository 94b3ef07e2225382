"""Checks on what a peer received: colours in the composite's cells, tones in the mix."""

from __future__ import annotations

import av
import numpy as np

from compositor.layout import Rect, grid_layout

YUV = tuple[int, int, int]


def cell_colours(frame: av.VideoFrame, count: int, at: tuple[float, float] = (0.5, 0.5)) -> list[YUV]:
    """Mean Y, U, V of a 16x16 block in each of `count` grid cells (`at`: where, as fractions)."""
    planes = frame.to_ndarray(format="yuv420p")
    height, width = frame.height, frame.width
    y = planes[:height]
    u = planes[height : height + height // 4].reshape(height // 2, width // 2)
    v = planes[height + height // 4 :].reshape(height // 2, width // 2)
    colours = []
    for cell in grid_layout(count, width, height):
        cx, cy = cell.x + int(cell.width * at[0]), cell.y + int(cell.height * at[1])
        colours.append(
            (
                int(y[cy - 8 : cy + 8, cx - 8 : cx + 8].mean()),
                int(u[cy // 2 - 4 : cy // 2 + 4, cx // 2 - 4 : cx // 2 + 4].mean()),
                int(v[cy // 2 - 4 : cy // 2 + 4, cx // 2 - 4 : cx // 2 + 4].mean()),
            )
        )
    return colours


class TileWatch:
    """When one region of a received picture changed (its mean absolute luma difference over `threshold`)."""

    def __init__(self, x: int, y: int, width: int, height: int, threshold: float = 1.0) -> None:
        self.region = (slice(y, y + height), slice(x, x + width))
        self.threshold = threshold
        self.changes: list[float] = []
        self._last: np.ndarray | None = None

    def look(self, frame: av.VideoFrame | None, at: float) -> None:
        if frame is None:
            return
        plane = frame.planes[0]
        rows = np.frombuffer(plane, np.uint8).reshape(frame.height, plane.line_size)
        picture = rows[self.region].astype(np.int16)
        if self._last is None or np.abs(picture - self._last).mean() > self.threshold:
            self.changes.append(at)
            self._last = picture

    def longest_still(self, start: float, end: float) -> float:
        """The longest stretch between `start` and `end` without a change, in seconds."""
        marks = [start, *(t for t in self.changes if start < t < end), end]
        return max(b - a for a, b in zip(marks, marks[1:]))


def close_to(actual: YUV, expected: YUV, tolerance: int = 14) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected))


def contains_colour(colours: list[YUV], expected: YUV) -> bool:
    return any(close_to(c, expected) for c in colours)


def tone_levels(samples: np.ndarray, frequencies: list[float], rate: int = 48000) -> dict[float, float]:
    """Level in dB of each frequency (peak of a Hann-windowed FFT within ±5 Hz)."""
    window = samples.astype(np.float64) * np.hanning(len(samples))
    spectrum = np.abs(np.fft.rfft(window))
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    levels = {}
    for f in frequencies:
        band = (freqs > f - 5) & (freqs < f + 5)
        levels[f] = 20 * np.log10(spectrum[band].max() + 1e-9)
    return levels


def tone(frequency: float, samples: int, amplitude: float = 0.3, phase_samples: int = 0) -> np.ndarray:
    """Return an int16 sine of `amplitude` (0..1 of full scale) starting at sample `phase_samples`.

    Passing the running sample count as phase_samples keeps consecutive frames continuous.
    """
    if not 0.0 <= amplitude <= 1.0:
        raise ValueError(f"amplitude must be within 0..1, got {amplitude}")
    t = np.arange(phase_samples, phase_samples + samples) / 48000
    return np.round(amplitude * 32767 * np.sin(2 * np.pi * frequency * t)).astype(np.int16)


#: 10 ms blocks: a gap is a run of blocks where the tone is missing.
BLOCK = 480


def longest_gap_ms(samples: np.ndarray, frequency: float, amplitude: float) -> int:
    """The longest run (ms) of 10 ms blocks where the tone at `frequency` is under a tenth of `amplitude`."""
    blocks = samples[: len(samples) // BLOCK * BLOCK].astype(np.float64).reshape(-1, BLOCK)
    t = np.arange(BLOCK) / 48000
    window = np.hanning(BLOCK)
    # Each block's magnitude at the tone (a windowed single-bin DFT; no phase matters).
    level = np.abs((blocks * window) @ np.exp(-2j * np.pi * frequency * t))
    full = amplitude * 32767 * window.sum() / 2
    absent = np.concatenate([[0], (level < 0.1 * full).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(absent))
    return int(max(edges[1::2] - edges[::2], default=0)) * BLOCK * 1000 // 48000


def planes(frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A received frame's Y, U and V planes (U and V at half its width and height)."""
    data = frame.to_ndarray(format="yuv420p")
    height, width = frame.height, frame.width
    y = data[:height]
    u = data[height : height + height // 4].reshape(height // 2, width // 2)
    v = data[height + height // 4 :].reshape(height // 2, width // 2)
    return y, u, v


def colour_in(frame: av.VideoFrame, rect: Rect) -> YUV:
    """Mean Y, U, V of the middle half of a rect of a received frame."""
    y, u, v = planes(frame)
    x0, x1 = rect.x + rect.width // 4, rect.x + 3 * rect.width // 4
    y0, y1 = rect.y + rect.height // 4, rect.y + 3 * rect.height // 4
    return (
        int(y[y0:y1, x0:x1].mean()),
        int(u[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2].mean()),
        int(v[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2].mean()),
    )
