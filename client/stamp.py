"""Capture times drawn into the picture and read back: end-to-end video latency in any mode.

A `StampedVideoTrack` draws the wall-clock millisecond at which each frame is
made as a barcode of big black and white cells; `read_stamp` finds it again in
a decoded picture, whether the frame arrives as sent (SFU, mesh) or scaled
into a tile of a composite (MCU). Sender and reader run on one machine, so
`time.time()` is one clock for both.

The code: a grid of COLUMNS x ROWS cells over the top part of the picture,
clear of the edges (where the compositor may draw a speaker's border) and of
the bottom-left corner (the name label). The first cell is always white and
the last always black: the reader thresholds between them, so a tile scaled
or coded darker still reads. Then DATA_BITS bits of the time in ms (it wraps
every 65.5 s: latencies are far shorter) and CHECK_BITS of a CRC, which
rejects a picture caught between two stamps or any tile that is not a stamp.
"""

from __future__ import annotations

import fractions
import time
import zlib

import av
import cv2
import numpy as np

from .sources import _Paced

COLUMNS, ROWS = 6, 4
DATA_BITS, CHECK_BITS = 16, 6
#: The coded area as fractions of the picture: left, top, right, bottom.
AREA = (0.04, 0.04, 0.96, 0.72)
WHITE_Y, BLACK_Y = 235, 16
#: A cell must lie this close (share of the white-black span) to white or black, else the read fails.
MARGIN = 0.3
#: Samples per cell edge when reading; the inner half of each cell is averaged.
_SAMPLES = 4

assert 2 + DATA_BITS + CHECK_BITS == COLUMNS * ROWS


def now_ms() -> int:
    """The wall clock in ms, the time base of stamps."""
    return time.time_ns() // 1_000_000


def _check(value: int) -> int:
    return zlib.crc32(value.to_bytes(2, "big")) & ((1 << CHECK_BITS) - 1)


def cells(value: int) -> np.ndarray:
    """The ROWS x COLUMNS booleans (True: white) that code `value` (taken modulo 2**DATA_BITS)."""
    value %= 1 << DATA_BITS
    data = [(value >> (DATA_BITS - 1 - i)) & 1 for i in range(DATA_BITS)]
    check = [(_check(value) >> (CHECK_BITS - 1 - i)) & 1 for i in range(CHECK_BITS)]
    return np.array([1, *data, *check, 0], dtype=bool).reshape(ROWS, COLUMNS)


def _area(width: int, height: int) -> tuple[int, int, int, int]:
    left, top, right, bottom = AREA
    return round(left * width), round(top * height), round(right * width), round(bottom * height)


def draw_stamp(luma: np.ndarray, value: int) -> None:
    """Draw `value`'s code into a luma plane (in place); the rest of the plane is left as it is."""
    height, width = luma.shape
    x0, y0, x1, y1 = _area(width, height)
    pattern = np.where(cells(value), WHITE_Y, BLACK_Y).astype(np.uint8)
    luma[y0:y1, x0:x1] = cv2.resize(pattern, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)


def read_stamp(luma: np.ndarray) -> int | None:
    """The value coded in a luma picture (a whole frame, or the crop of its tile), or None.

    None when the picture holds no clean code: another peer's tile, a frame
    caught between two stamps, or one coded too coarsely to tell the cells apart.
    """
    height, width = luma.shape
    x0, y0, x1, y1 = _area(width, height)
    if x1 - x0 < COLUMNS * 2 or y1 - y0 < ROWS * 2:
        return None
    grid = cv2.resize(luma[y0:y1, x0:x1], (COLUMNS * _SAMPLES, ROWS * _SAMPLES), interpolation=cv2.INTER_AREA)
    inner = slice(_SAMPLES // 4, _SAMPLES - _SAMPLES // 4)
    means = grid.reshape(ROWS, _SAMPLES, COLUMNS, _SAMPLES)[:, inner, :, inner].mean(axis=(1, 3)).reshape(-1)
    white, black = means[0], means[-1]
    span = white - black
    if span < (WHITE_Y - BLACK_Y) / 3:
        return None
    level = (means - black) / span
    if np.any((level > MARGIN) & (level < 1 - MARGIN)):
        return None
    bits = level[1:-1] > 0.5
    value = int("".join("1" if b else "0" for b in bits[:DATA_BITS]), 2)
    check = int("".join("1" if b else "0" for b in bits[DATA_BITS:]), 2)
    return value if check == _check(value) else None


def latency_ms(stamp: int, arrival_ms: int) -> int:
    """Milliseconds from a stamp to its arrival, on the stamp's wrapping clock."""
    return (arrival_ms - stamp) % (1 << DATA_BITS)


def luma_of(frame: av.VideoFrame) -> np.ndarray:
    """The Y plane of a yuv420p frame as a view (no copy)."""
    plane = frame.planes[0]
    rows = np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)
    return rows[: frame.height, : frame.width]


class StampedVideoTrack(_Paced):
    """A mid-grey yuv420p picture carrying its capture time (see the module's docstring).

    The stamp is the time at which `recv` makes the frame, i.e. when the
    sender's encoder gets it: what a camera's capture time would be.
    """

    kind = "video"

    def __init__(self, width: int = 320, height: int = 240, fps: int = 15) -> None:
        super().__init__(fps)
        self.fps = fps
        self._buffer = np.full((height * 3 // 2, width), 128, np.uint8)
        self._buffer[:height] = 100

    async def recv(self) -> av.VideoFrame:
        index = await self._next_index()
        buffer = self._buffer.copy()
        draw_stamp(buffer[: buffer.shape[0] * 2 // 3], now_ms())
        frame = av.VideoFrame.from_numpy_buffer(buffer, format="yuv420p")
        frame.pts = index * (90000 // self.fps)
        frame.time_base = fractions.Fraction(1, 90000)
        return frame
