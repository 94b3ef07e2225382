"""Layouts for the composite canvas, as data: built-in `grid`, `speaker`, `pip` and `presentation`, or custom regions.

Every coordinate and size is even: yuv420p stores chroma at half resolution,
so an odd edge would split a chroma sample between two tiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Sequence, TypeVar

#: Whatever names a participant in `last_n` (a peer id in the server).
Key = TypeVar("Key", bound=Hashable)


@dataclass(frozen=True)
class Rect:
    """An axis-aligned rectangle in canvas pixels."""

    x: int
    y: int
    width: int
    height: int


def _even(value: float) -> int:
    """Round down to an even integer (yuv420p chroma alignment)."""
    return int(value) // 2 * 2


def grid_shape(count: int) -> tuple[int, int]:
    """Return (columns, rows) of the smallest near-square grid holding `count` cells.

    Columns grow first, so 16:9 canvases get cells closer to the inputs' aspect.
    """
    if count <= 0:
        return 1, 1
    columns = math.isqrt(count - 1) + 1  # ceil(sqrt(count)) without float error
    rows = -(-count // columns)
    return columns, rows


def grid_layout(count: int, width: int, height: int) -> list[Rect]:
    """Split a width x height canvas into `count` equal cells, row-major.

    Cells are even-sized and even-placed; the rounding remainder is split
    evenly as a border around the grid so the picture stays centred.
    An incomplete last row is left-aligned: its free cells stay background.
    """
    if count <= 0:
        return []
    columns, rows = grid_shape(count)
    cell_width = _even(width / columns)
    cell_height = _even(height / rows)
    if cell_width < 2 or cell_height < 2:
        raise ValueError(f"canvas {width}x{height} too small for {count} cells")
    left = _even((width - cell_width * columns) / 2)
    top = _even((height - cell_height * rows) / 2)
    return [
        Rect(
            left + (index % columns) * cell_width,
            top + (index // columns) * cell_height,
            cell_width,
            cell_height,
        )
        for index in range(count)
    ]


def fit(src_width: int, src_height: int, cell: Rect) -> Rect:
    """Return the largest rect of the source's aspect inside `cell`, centred.

    The free area (letterbox or pillarbox bars) is left to the caller to keep
    black. Sizes are rounded to even and never below 2x2, so a tiny or
    extreme-aspect source still maps to a valid yuv420p region.
    """
    if src_width <= 0 or src_height <= 0:
        raise ValueError(f"invalid source size {src_width}x{src_height}")
    scale = min(cell.width / src_width, cell.height / src_height)
    width = min(max(2, 2 * round(src_width * scale / 2)), _even(cell.width))
    height = min(max(2, 2 * round(src_height * scale / 2)), _even(cell.height))
    return Rect(
        cell.x + _even((cell.width - width) / 2),
        cell.y + _even((cell.height - height) / 2),
        width,
        height,
    )


@dataclass(frozen=True)
class Region:
    """A place for one tile as fractions of the canvas; a higher `z` is drawn on top.

    In a custom layout, the region marked `speaker` shows the participant who
    holds the floor; the other regions take the other tiles in order.
    """

    x: float
    y: float
    width: float
    height: float
    z: int = 0
    speaker: bool = False

    def rect(self, width: int, height: int) -> Rect:
        """This region in pixels of a width x height canvas: even edges, at least 2x2, inside it.

        Both edges are rounded (not the size), so regions that touch as
        fractions touch in pixels, without a gap or an overlap.
        """
        left, top = _even_round(self.x * width), _even_round(self.y * height)
        right = min(_even_round((self.x + self.width) * width), _even(width))
        bottom = min(_even_round((self.y + self.height) * height), _even(height))
        left, top = min(left, right - 2), min(top, bottom - 2)
        return Rect(left, top, right - left, bottom - top)


def _even_round(value: float) -> int:
    """Round to the nearest even integer, halves up.

    The nudge makes an edge computed two ways (x + width of one region, x of
    the next) round alike despite float error.
    """
    return 2 * math.floor(value / 2 + 0.5 + 1e-9)


#: A built-in layout's regions for (tile count, index of the floor holder).
Arrange = Callable[[int, int], list[Region]]

#: Built-in strip and inset sizes, as fractions of the canvas.
STRIP_HEIGHT = 0.25
STRIP_MIN_CELLS = 4
INSET_SIZE = 0.2
INSET_MARGIN = 0.025
INSETS_PER_ROW = 4
#: The presentation layout's strip of cameras at the right, as a fraction of the canvas width; its cells
#: are that wide and a fifth of the height (16:9 on a 16:9 canvas) until more than five need to share it.
PRESENTATION_STRIP = 0.2
PRESENTATION_MIN_CELLS = 5
#: The largest custom layout accepted, in regions.
MAX_REGIONS = 64
#: The smallest custom region, as a fraction of the canvas on each axis.
MIN_REGION = 0.02


def _speaker_regions(count: int, speaker: int) -> list[Region]:
    """The floor holder large on top; the others in one row below, in their order."""
    if count == 1:
        return [Region(0, 0, 1, 1)]
    others = count - 1
    cell = 1 / max(others, STRIP_MIN_CELLS)
    left = (1 - cell * others) / 2
    strip = iter(Region(left + i * cell, 1 - STRIP_HEIGHT, cell, STRIP_HEIGHT) for i in range(others))
    large = Region(0, 0, 1, 1 - STRIP_HEIGHT)
    return [large if index == speaker else next(strip) for index in range(count)]


def _pip_regions(count: int, speaker: int) -> list[Region]:
    """The floor holder fills the canvas; the others are small insets on top of it.

    Insets fill the bottom row from the right, then the rows above.
    """
    insets = iter(
        Region(
            1 - (INSET_MARGIN + INSET_SIZE) * (i % INSETS_PER_ROW + 1),
            1 - (INSET_MARGIN + INSET_SIZE) * (i // INSETS_PER_ROW + 1),
            INSET_SIZE,
            INSET_SIZE,
            z=1,
        )
        for i in range(count - 1)
    )
    return [Region(0, 0, 1, 1) if index == speaker else next(insets) for index in range(count)]


def _presentation_regions(count: int, main: int) -> list[Region]:
    """The main tile (a shared screen, else the floor holder) as large as the canvas less a strip at the right;
    the others stacked in that strip, in their order, centred.

    A strip at the side takes the same share of a 16:9 screen's area as one below it
    would, and leaves a 16:10 or 4:3 screen more room.
    """
    if count == 1:
        return [Region(0, 0, 1, 1)]
    others = count - 1
    cell = 1 / max(others, PRESENTATION_MIN_CELLS)
    top = (1 - cell * others) / 2
    left = 1 - PRESENTATION_STRIP
    strip = iter(Region(left, top + i * cell, PRESENTATION_STRIP, cell) for i in range(others))
    large = Region(0, 0, left, 1)
    return [large if index == main else next(strip) for index in range(count)]


@dataclass(frozen=True)
class Layout:
    """How a canvas is shared between tiles: a built-in arrangement or custom regions.

    A layout is data: it says where each tile goes for a given tile count and
    floor holder, and the compositor draws accordingly at any canvas size.
    """

    name: str
    #: The custom regions (empty for a built-in layout).
    regions: tuple[Region, ...] = ()
    #: The most tiles it places; None: any number.
    capacity: int | None = None

    def rects(self, count: int, width: int, height: int, speaker: int | None = None) -> list[tuple[Rect, int]]:
        """Where each of `count` tiles goes on a width x height canvas, and its z-order.

        `speaker` is the index of the tile holding the floor (the first one if
        None). A custom layout places at most its number of regions.
        """
        if count <= 0:
            return []
        main = speaker if speaker is not None and 0 <= speaker < count else 0
        if self.name == "grid":
            return [(rect, 0) for rect in grid_layout(count, width, height)]
        if self.regions:
            regions = _assign(self.regions, count, main)
        else:
            regions = _BUILT_IN[self.name](count, main)
        return [(region.rect(width, height), region.z) for region in regions]

    def to_json(self) -> str | dict[str, Any]:
        """The layout as `setLayout` takes it and `layoutChanged` reports it."""
        if not self.regions:
            return self.name
        return {
            "regions": [
                {"x": r.x, "y": r.y, "width": r.width, "height": r.height, "z": r.z}
                | ({"speaker": True} if r.speaker else {})
                for r in self.regions
            ]
        }


def _assign(regions: tuple[Region, ...], count: int, speaker: int) -> list[Region]:
    """A custom layout's regions for the first `count` tiles: the floor holder to the speaker region."""
    reserved = next((r for r in regions if r.speaker), None)
    if reserved is None or speaker >= len(regions):
        return list(regions[:count])
    rest = iter(r for r in regions if r is not reserved)
    return [reserved if index == speaker else next(rest) for index in range(min(count, len(regions)))]


_BUILT_IN: dict[str, Arrange] = {
    "speaker": _speaker_regions,
    "pip": _pip_regions,
    "presentation": _presentation_regions,
}

GRID = Layout("grid")
SPEAKER = Layout("speaker")
PIP = Layout("pip", capacity=1 + INSETS_PER_ROW * INSETS_PER_ROW)
#: What a room shows while someone shares a screen, unless a layout was chosen for it (mcu/rooms/room.py).
PRESENTATION = Layout("presentation")
BUILT_IN: dict[str, Layout] = {layout.name: layout for layout in (GRID, SPEAKER, PIP, PRESENTATION)}


class LayoutError(ValueError):
    """Layout data that cannot be used; the message says which part and why."""


def _number(value: Any, where: str) -> float:
    # bool is an int in Python, but true is not a number in JSON.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LayoutError(f"{where} must be a number.")
    return float(value)


def _region(data: Any, index: int) -> Region:
    where = f"regions[{index}]"
    if not isinstance(data, dict):
        raise LayoutError(f"{where} must be an object with x, y, width and height.")
    values = {}
    for key in ("x", "y", "width", "height"):
        if key not in data:
            raise LayoutError(f"{where}.{key} is missing.")
        values[key] = _number(data[key], f"{where}.{key}")
    x, y, width, height = values["x"], values["y"], values["width"], values["height"]
    if not (0 <= x < 1 and 0 <= y < 1):
        raise LayoutError(f"{where}: x and y must be fractions of the canvas, from 0 up to (not including) 1.")
    if width < MIN_REGION or height < MIN_REGION:
        raise LayoutError(f"{where}: width and height must be at least {MIN_REGION} of the canvas.")
    if x + width > 1 + 1e-9 or y + height > 1 + 1e-9:
        raise LayoutError(f"{where} goes beyond the canvas: x + width and y + height must be at most 1.")
    z = data.get("z", 0)
    if isinstance(z, bool) or not isinstance(z, int) or abs(z) > 1000:
        raise LayoutError(f"{where}.z must be an integer from -1000 to 1000.")
    speaker = data.get("speaker", False)
    if not isinstance(speaker, bool):
        raise LayoutError(f"{where}.speaker must be true or false.")
    return Region(x, y, min(width, 1 - x), min(height, 1 - y), z, speaker)


def parse_layout(data: Any) -> Layout:
    """A layout from its wire form: a built-in name, or `{"regions": [...]}`.

    :raises LayoutError: with a message that names the faulty part.
    """
    if isinstance(data, str):
        layout = BUILT_IN.get(data)
        if layout is None:
            raise LayoutError(f"There is no layout {data[:64]!r}: use one of {', '.join(BUILT_IN)}, or regions.")
        return layout
    if not isinstance(data, dict):
        raise LayoutError("A layout is a name (grid, speaker, pip, presentation) or an object with regions.")
    regions = data.get("regions")
    if not isinstance(regions, list) or not 1 <= len(regions) <= MAX_REGIONS:
        raise LayoutError(f"A custom layout needs regions: a list of 1 to {MAX_REGIONS} regions.")
    parsed = tuple(_region(region, index) for index, region in enumerate(regions))
    if sum(region.speaker for region in parsed) > 1:
        raise LayoutError("At most one region may be the speaker's.")
    return Layout("custom", parsed, capacity=len(parsed))


def last_n(ids: Sequence[Key], recent: Sequence[Key], limit: int) -> tuple[list[Key], int]:
    """Which of `ids` get a tile when at most `limit` tiles fit, and how many are left out.

    All of them if they fit; otherwise `limit - 1` (one tile counts the
    others, "+N"): the most recent speakers first (`recent`, most recent
    first), then the earliest joiners. The chosen keep the order of `ids`.
    """
    if len(ids) <= limit:
        return list(ids), 0
    keep = max(limit - 1, 0)
    present = set(ids)
    ranked = [key for key in recent if key in present]
    chosen = set(ranked[:keep])
    for key in ids:
        if len(chosen) >= keep:
            break
        chosen.add(key)
    return [key for key in ids if key in chosen], len(ids) - len(chosen)
