import numpy as np
import pytest

from compositor import Rect, fit, grid_layout, grid_shape

CANVASES = [(1280, 720), (1920, 1080), (640, 360), (320, 240), (854, 480)]


def test_grid_shape_cell_sequence():
    cells = [grid_shape(count)[0] * grid_shape(count)[1] for count in range(1, 18)]
    assert cells == [1, 2, 4, 4, 6, 6, 9, 9, 9, 12, 12, 12, 16, 16, 16, 16, 20]


@pytest.mark.parametrize(
    "count, shape",
    [(0, (1, 1)), (1, (1, 1)), (2, (2, 1)), (3, (2, 2)), (5, (3, 2)), (10, (4, 3)),
     (17, (5, 4)), (25, (5, 5)), (26, (6, 5))],
)
def test_grid_shape_columns_then_rows(count, shape):
    assert grid_shape(count) == shape


def test_grid_layout_empty():
    assert grid_layout(0, 1280, 720) == []


@pytest.mark.parametrize("width, height", CANVASES)
def test_grid_layout_cells_even_inside_disjoint(width, height):
    for count in range(1, 26):
        cells = grid_layout(count, width, height)
        assert len(cells) == count
        columns, rows = grid_shape(count)
        coverage = np.zeros((height, width), np.int32)
        for cell in cells:
            assert all(value % 2 == 0 for value in (cell.x, cell.y, cell.width, cell.height))
            assert cell.x >= 0 and cell.y >= 0
            assert cell.x + cell.width <= width and cell.y + cell.height <= height
            # Equal cells that use the canvas up to the even-rounding remainder.
            assert (cell.width, cell.height) == (cells[0].width, cells[0].height)
            assert width - columns * cell.width < 2 * columns
            assert height - rows * cell.height < 2 * rows
            coverage[cell.y : cell.y + cell.height, cell.x : cell.x + cell.width] += 1
        assert coverage.max() == 1
        assert coverage.sum() == count * cells[0].width * cells[0].height


def test_grid_layout_row_major():
    cells = grid_layout(5, 1280, 720)
    assert cells == [
        Rect(0, 0, 426, 360), Rect(426, 0, 426, 360), Rect(852, 0, 426, 360),
        Rect(0, 360, 426, 360), Rect(426, 360, 426, 360),
    ]


def test_fit_pillarbox_and_exact():
    cell = Rect(640, 360, 640, 360)
    assert fit(320, 240, cell) == Rect(720, 360, 480, 360)
    assert fit(1920, 1080, cell) == cell
    assert fit(1080, 1920, cell) == Rect(640 + 218, 360, 202, 360)


def test_fit_letterbox():
    assert fit(1280, 720, Rect(0, 0, 320, 240)) == Rect(0, 30, 320, 180)


def test_fit_minimum_size():
    fitted = fit(4000, 1, Rect(0, 0, 640, 360))
    assert (fitted.width, fitted.height) == (640, 2)
    assert fitted.y == 178


@pytest.mark.parametrize(
    "src", [(320, 240), (640, 480), (1280, 720), (176, 144), (321, 241), (720, 1280), (100, 100)]
)
@pytest.mark.parametrize("cell", [Rect(0, 0, 640, 360), Rect(426, 240, 426, 240), Rect(2, 4, 320, 180)])
def test_fit_aspect_even_centred(src, cell):
    src_width, src_height = src
    fitted = fit(src_width, src_height, cell)
    assert all(value % 2 == 0 for value in (fitted.x - cell.x, fitted.y - cell.y, fitted.width, fitted.height))
    assert cell.x <= fitted.x and fitted.x + fitted.width <= cell.x + cell.width
    assert cell.y <= fitted.y and fitted.y + fitted.height <= cell.y + cell.height
    # Largest: it touches the cell on at least one axis (within rounding).
    assert cell.width - fitted.width <= 2 or cell.height - fitted.height <= 2
    # Aspect preserved within the 1-2 px of rounding each side to even.
    assert abs(fitted.width - fitted.height * src_width / src_height) <= 2 * max(1, src_width / src_height)
    # Centred: the gaps on both sides differ by at most one even step.
    left = fitted.x - cell.x
    right = cell.x + cell.width - fitted.x - fitted.width
    top = fitted.y - cell.y
    bottom = cell.y + cell.height - fitted.y - fitted.height
    assert abs(left - right) <= 2 and abs(top - bottom) <= 2


def test_fit_rejects_empty_source():
    with pytest.raises(ValueError):
        fit(0, 240, Rect(0, 0, 640, 360))
