"""Grid layouts for the composite canvas.

Every coordinate and size is even: yuv420p stores chroma at half resolution,
so an odd edge would split a chroma sample between two tiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


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
