"""Video compositing on yuv420p planes.

The canvas is one contiguous yuv420p buffer that is handed to the encoder
without a copy, and a cell is only redrawn when what it shows changes: inputs
arrive at about half the output rate, so most ticks rescale nothing. A cell
drawn over another (a higher z, as in `pip`) is redrawn whenever the one under
it is.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import av
import cv2
import numpy as np

from .layout import GRID, Layout, Rect, fit
from .text import text_mask, text_width

# OpenCV's worker threads compete with the codec threads on small machines;
# callers parallelise across rooms instead.
cv2.setNumThreads(1)

BLACK_Y = 16
NEUTRAL_CHROMA = 128
PLACEHOLDER_Y = 40
LABEL_BOX_Y = 32
TEXT_Y = 235
#: The speaking tile's border: amber, RGB (255, 191, 0) in BT.601 limited range.
BORDER_YUV = (177, 34, 170)

#: The label's font size, in pixels, for a cell 360 pixels high (and the placeholder's for 240 high).
FONT_SIZE = 34
#: The label box's margin around the text, as a fraction of the font size.
LABEL_PAD = 0.2


@dataclass
class Tile:
    """One participant's cell: a frame of any format and size, or None for the placeholder.

    The name labels the cell, in any script (compositor/text.py). A speaking
    tile gets a highlighted border.
    A `screen` (a shared screen) is scaled in one INTER_AREA step, the sharpest
    for text, and carries no label over its content (its name shows on its placeholder).
    """

    name: str
    frame: av.VideoFrame | None
    speaking: bool = False
    screen: bool = False


@dataclass(frozen=True)
class Scene:
    """What one canvas shows on one tick: the tiles in order, their layout, and who holds the floor.

    `speaker` is the index of the floor holder's tile (None: nobody yet), the
    large one in `speaker` and `pip` layouts.
    """

    tiles: tuple[Tile, ...] = ()
    layout: Layout = GRID
    speaker: int | None = None


@dataclass
class _Shown:
    """What a cell currently shows; holding the frame keeps its identity unique."""

    name: str
    frame: av.VideoFrame | None
    area: Rect
    speaking: bool


def _up_even(value: int) -> int:
    return -(-value // 2) * 2


def _down_even(value: int) -> int:
    return value // 2 * 2


def _paint_text(patch: np.ndarray, mask: np.ndarray, x: int, y: int) -> None:
    """Blend TEXT_Y into a patch through a coverage mask (anti-aliased edges)."""
    height, width = mask.shape
    under = patch[y : y + height, x : x + width].astype(np.uint16)
    coverage = mask.astype(np.uint16)
    patch[y : y + height, x : x + width] = (under * (255 - coverage) + TEXT_Y * coverage + 127) // 255


@functools.lru_cache(maxsize=256)
def _label_patch(name: str, size: int, max_width: int) -> np.ndarray:
    """Render a name as a luma patch: light text on a dark box, even-sized, at most max_width wide.

    `size` is the font's size in pixels; a name too long for the picture ends in an ellipsis.
    """
    pad = max(2, round(size * LABEL_PAD))
    width = _down_even(max_width)
    mask = text_mask(name, size, width - 2 * pad)
    patch = np.full(
        (_up_even(mask.shape[0] + 2 * pad), min(_up_even(mask.shape[1] + 2 * pad), width)), LABEL_BOX_Y, np.uint8
    )
    _paint_text(patch, mask, pad, pad)
    patch.setflags(write=False)
    return patch


@functools.lru_cache(maxsize=64)
def _placeholder_patch(name: str, width: int, height: int) -> np.ndarray:
    """Render a dark grey luma cell with the name centred in large text.

    The text shrinks to fit 90% of the width, down to a third of its size, and is ellipsized past that.
    """
    patch = np.full((height, width), PLACEHOLDER_Y, np.uint8)
    room = round(0.9 * width)
    size = max(1, round(FONT_SIZE * min(height / 240, 3.0)))
    natural = text_width(name, size)
    if natural > room:
        size = max(round(size * room / natural), size // 3, 1)
    mask = text_mask(name, size, room)
    mask_height, mask_width = mask.shape
    _paint_text(patch, mask[:height], (width - mask_width) // 2, max(0, (height - mask_height) // 2))
    patch.setflags(write=False)
    return patch


def yuv420p_planes(frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return zero-copy views of a frame's Y, U and V planes (reformatting if needed)."""
    if frame.format.name != "yuv420p":
        frame = frame.reformat(format="yuv420p")
    y, u, v = (
        np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]
        for plane in frame.planes
    )
    return y, u, v


def _chroma_slices(rect: Rect) -> tuple[slice, slice]:
    """Rows and columns of an even-aligned rect in the half-resolution chroma planes."""
    return (
        slice(rect.y // 2, (rect.y + rect.height) // 2),
        slice(rect.x // 2, (rect.x + rect.width) // 2),
    )


def _scale_into(src: np.ndarray, dst: np.ndarray) -> None:
    """Scale a plane straight into a canvas view (no intermediate copy).

    INTER_AREA avoids aliasing when shrinking but is 5-35x slower than
    INTER_LINEAR unless the ratio is a whole number, so a shrink averages down
    by its whole factor with INTER_AREA (cropping fewer than `factor` edge
    pixels) and interpolates the remaining ratio, always under 2, linearly.
    """
    height, width = dst.shape
    if src.shape == dst.shape:
        dst[...] = src
        return
    factor = min(src.shape[0] // height, src.shape[1] // width)
    if factor >= 2:
        rows, columns = src.shape[0] // factor, src.shape[1] // factor
        whole = src[: rows * factor, : columns * factor]
        if (rows, columns) == (height, width):
            cv2.resize(whole, (width, height), dst=dst, interpolation=cv2.INTER_AREA)
            return
        src = cv2.resize(whole, (columns, rows), interpolation=cv2.INTER_AREA)
    cv2.resize(src, (width, height), dst=dst, interpolation=cv2.INTER_LINEAR)


def _scale_once(src: np.ndarray, dst: np.ndarray) -> None:
    """Scale a plane straight into a canvas view in one step: area averaging to shrink (no aliasing of
    thin strokes, whatever the ratio), cubic to enlarge. Slower than `_scale_into` at a ratio that is not
    whole, which a screen pays for only when its picture changes."""
    if src.shape == dst.shape:
        dst[...] = src
        return
    shrink = src.shape[0] >= dst.shape[0] and src.shape[1] >= dst.shape[1]
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    cv2.resize(src, (dst.shape[1], dst.shape[0]), dst=dst, interpolation=interpolation)


def _overlaps(a: Rect, b: Rect) -> bool:
    return a.x < b.x + b.width and b.x < a.x + a.width and a.y < b.y + b.height and b.y < a.y + a.height


class Compositor:
    """Composes participants' frames into one yuv420p canvas, placed by a layout.

    Each picture keeps its aspect inside its cell on a black background and is
    labelled at its bottom-left. The canvas persists between calls, so one
    instance serves one output and must not compose from two threads at once.
    """

    def __init__(self, width: int, height: int) -> None:
        # PyAV derives a yuv420p frame's height from rows * 2 // 3 in whole
        # chroma rows, so the height must be a multiple of 4.
        if width <= 0 or height <= 0 or width % 2 or height % 4:
            raise ValueError(f"canvas {width}x{height}: width must be even and height a multiple of 4")
        self.width = width
        self.height = height
        self._buffer = np.empty((height * 3 // 2, width), np.uint8)
        flat = self._buffer.reshape(-1)
        luma = width * height
        chroma = luma // 4
        self._y = flat[:luma].reshape(height, width)
        self._u = flat[luma : luma + chroma].reshape(height // 2, width // 2)
        self._v = flat[luma + chroma :].reshape(height // 2, width // 2)
        #: (tile index, cell, z) in drawing order, for the last tile count, layout and speaker.
        self._placement: list[tuple[int, Rect, int]] = []
        #: For each drawing position, the later positions drawn over it.
        self._covering: list[list[int]] = []
        self._shown: list[_Shown | None] = []
        self._clear(Rect(0, 0, width, height))

    def compose(self, tiles: Sequence[Tile], layout: Layout = GRID, speaker: int | None = None) -> av.VideoFrame:
        """Draw the tiles where `layout` puts them and return the canvas as a yuv420p frame.

        `speaker` is the index of the tile holding the floor (the large one in
        `speaker` and `pip`). A change of layout, tile count or speaker clears
        the canvas, so nothing of the previous arrangement is left.

        The frame wraps the canvas without a copy: it is only valid until the
        next compose call, so encode it (or copy it) before composing again.
        Input frames are treated as immutable; a new picture must be a new
        frame object, as decoders produce.
        """
        rects = layout.rects(len(tiles), self.width, self.height, speaker)
        placement = sorted(((index, rect, z) for index, (rect, z) in enumerate(rects)), key=lambda placed: placed[2])
        if placement != self._placement:
            self._clear(Rect(0, 0, self.width, self.height))
            self._placement = placement
            self._covering = [
                [later for later in range(position + 1, len(placement)) if _overlaps(rect, placement[later][1])]
                for position, (_, rect, _) in enumerate(placement)
            ]
            self._shown = [None] * len(placement)
        stale = [False] * len(placement)
        for position, (index, cell, _) in enumerate(placement):
            shown = None if stale[position] else self._shown[position]
            drawn = self._draw(tiles[index], cell, shown)
            if drawn is not shown:
                for later in self._covering[position]:
                    stale[later] = True
            self._shown[position] = drawn
        return av.VideoFrame.from_numpy_buffer(self._buffer, format="yuv420p")

    def _draw(self, tile: Tile, cell: Rect, shown: _Shown | None) -> _Shown:
        """Redraw a cell only if its content changed; return what it now shows."""
        frame = tile.frame
        area = cell if frame is None else fit(frame.width, frame.height, cell)
        same_geometry = (
            shown is not None and shown.name == tile.name and shown.area == area and shown.speaking == tile.speaking
        )
        if shown is not None and same_geometry and shown.frame is frame:
            return shown
        if frame is None:
            self._paste_luma(_placeholder_patch(tile.name, cell.width, cell.height), cell)
        else:
            if not same_geometry:
                self._clear(cell)  # the old picture, bars, label or border may lie outside the new one
            y, u, v = yuv420p_planes(frame)
            scale = _scale_once if tile.screen else _scale_into
            scale(y, self._y[area.y : area.y + area.height, area.x : area.x + area.width])
            rows, columns = _chroma_slices(area)
            scale(u, self._u[rows, columns])
            scale(v, self._v[rows, columns])
            if not tile.screen:
                self._draw_label(tile.name, cell, area)
        if tile.speaking:
            self._draw_border(cell)
        return _Shown(tile.name, frame, area, tile.speaking)

    def _draw_border(self, cell: Rect) -> None:
        """Frame the cell, inside its edges, in the highlight colour (even thickness for chroma)."""
        thickness = max(2, min(cell.width, cell.height) // 40 // 2 * 2)
        for edge in (
            Rect(cell.x, cell.y, cell.width, thickness),
            Rect(cell.x, cell.y + cell.height - thickness, cell.width, thickness),
            Rect(cell.x, cell.y, thickness, cell.height),
            Rect(cell.x + cell.width - thickness, cell.y, thickness, cell.height),
        ):
            self._y[edge.y : edge.y + edge.height, edge.x : edge.x + edge.width] = BORDER_YUV[0]
            rows, columns = _chroma_slices(edge)
            self._u[rows, columns] = BORDER_YUV[1]
            self._v[rows, columns] = BORDER_YUV[2]

    def _draw_label(self, name: str, cell: Rect, area: Rect) -> None:
        """Paste the name at the bottom-left of the picture, cropped to it."""
        if not name:
            return
        size = round(FONT_SIZE * min(max(cell.height / 360, 0.4), 1.0))
        patch = _label_patch(name, size, area.width)
        patch = patch[-area.height :, : area.width]
        height, width = patch.shape
        self._paste_luma(patch, Rect(area.x, area.y + area.height - height, width, height))

    def _paste_luma(self, patch: np.ndarray, rect: Rect) -> None:
        """Paste a grey patch (neutral chroma) at an even-aligned rect."""
        self._y[rect.y : rect.y + rect.height, rect.x : rect.x + rect.width] = patch
        self._neutral_chroma(rect)

    def _clear(self, rect: Rect) -> None:
        """Paint a rect black (limited-range Y=16, neutral chroma)."""
        self._y[rect.y : rect.y + rect.height, rect.x : rect.x + rect.width] = BLACK_Y
        self._neutral_chroma(rect)

    def _neutral_chroma(self, rect: Rect) -> None:
        rows, columns = _chroma_slices(rect)
        self._u[rows, columns] = NEUTRAL_CHROMA
        self._v[rows, columns] = NEUTRAL_CHROMA
