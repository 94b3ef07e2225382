import numpy as np
import pytest

from compositor import GRID, PIP, SPEAKER, LayoutError, Rect, fit, grid_layout, grid_shape, last_n, parse_layout

CANVASES = [(1280, 720), (1920, 1080), (640, 360), (320, 240), (854, 480)]


def test_grid_shape_cell_sequence():
    cells = [grid_shape(count)[0] * grid_shape(count)[1] for count in range(1, 18)]
    assert cells == [1, 2, 4, 4, 6, 6, 9, 9, 9, 12, 12, 12, 16, 16, 16, 16, 20]


@pytest.mark.parametrize(
    "count, shape",
    [
        (0, (1, 1)),
        (1, (1, 1)),
        (2, (2, 1)),
        (3, (2, 2)),
        (5, (3, 2)),
        (10, (4, 3)),
        (17, (5, 4)),
        (25, (5, 5)),
        (26, (6, 5)),
    ],
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
        Rect(0, 0, 426, 360),
        Rect(426, 0, 426, 360),
        Rect(852, 0, 426, 360),
        Rect(0, 360, 426, 360),
        Rect(426, 360, 426, 360),
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


@pytest.mark.parametrize("src", [(320, 240), (640, 480), (1280, 720), (176, 144), (321, 241), (720, 1280), (100, 100)])
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


# Layouts as data: built-in arrangements, custom regions, validation, last-N.

LAYOUT_CANVASES = [(1280, 720), (640, 360), (854, 480), (320, 240)]


def coverage_of(placed, width, height):
    coverage = np.zeros((height, width), np.int32)
    for rect, _ in placed:
        coverage[rect.y : rect.y + rect.height, rect.x : rect.x + rect.width] += 1
    return coverage


def assert_even_inside(placed, width, height):
    for rect, _ in placed:
        assert all(value % 2 == 0 for value in (rect.x, rect.y, rect.width, rect.height)), rect
        assert rect.width >= 2 and rect.height >= 2
        assert rect.x >= 0 and rect.y >= 0 and rect.x + rect.width <= width and rect.y + rect.height <= height


@pytest.mark.parametrize("width, height", LAYOUT_CANVASES)
def test_grid_layout_is_the_auto_grid(width, height):
    for count in range(1, 18):
        assert GRID.rects(count, width, height) == [(rect, 0) for rect in grid_layout(count, width, height)]


@pytest.mark.parametrize("width, height", LAYOUT_CANVASES)
@pytest.mark.parametrize("count", range(1, 18))
def test_speaker_layout_large_speaker_and_a_strip(width, height, count):
    for speaker in {0, count // 2, count - 1}:
        placed = SPEAKER.rects(count, width, height, speaker)
        assert len(placed) == count
        assert_even_inside(placed, width, height)
        assert coverage_of(placed, width, height).max() == 1  # no overlap
        large = placed[speaker][0]
        if count == 1:
            assert large == Rect(0, 0, width, height)
            continue
        # The floor holder: the whole width, the top three quarters.
        assert (large.x, large.y, large.width) == (0, 0, width)
        assert abs(large.height - 0.75 * height) <= 2
        strip = [rect for index, (rect, _) in enumerate(placed) if index != speaker]
        # The others in one row below it, left to right in their order, centred, same height.
        assert all(rect.y == large.height and rect.height == height - large.height for rect in strip)
        assert [rect.x for rect in strip] == sorted(rect.x for rect in strip)
        assert all(a.x + a.width == b.x for a, b in zip(strip, strip[1:]))  # touching, no gap
        left, right = strip[0].x, width - strip[-1].x - strip[-1].width
        assert abs(left - right) <= 4
        assert all(rect.width <= width // 4 + 2 for rect in strip)


@pytest.mark.parametrize("width, height", LAYOUT_CANVASES)
@pytest.mark.parametrize("count", range(1, 18))
def test_pip_layout_one_full_and_insets_on_top(width, height, count):
    speaker = count - 1
    placed = PIP.rects(count, width, height, speaker)
    assert len(placed) == count
    assert_even_inside(placed, width, height)
    assert placed[speaker] == (Rect(0, 0, width, height), 0)
    insets = [placed[index] for index in range(count) if index != speaker]
    assert all(z == 1 for _, z in insets)  # drawn over the full picture
    assert coverage_of(insets, width, height).max() <= 1  # insets do not overlap each other
    for rect, _ in insets:
        assert abs(rect.width - 0.2 * width) <= 2 and abs(rect.height - 0.2 * height) <= 2
    if count > 1:
        first = insets[0][0]  # bottom-right corner, with a margin
        assert abs(width - first.x - first.width - 0.025 * width) <= 2
        assert abs(height - first.y - first.height - 0.025 * height) <= 2
    assert PIP.capacity == 17


def test_speaker_defaults_to_the_first_tile():
    assert SPEAKER.rects(3, 1280, 720) == SPEAKER.rects(3, 1280, 720, 0)
    assert SPEAKER.rects(3, 1280, 720, 7) == SPEAKER.rects(3, 1280, 720, 0)
    assert PIP.rects(0, 1280, 720) == []


def test_custom_layout_places_regions_exactly():
    layout = parse_layout(
        {
            "regions": [
                {"x": 0, "y": 0, "width": 0.5, "height": 1},
                {"x": 0.5, "y": 0, "width": 0.5, "height": 0.5},
                {"x": 0.5, "y": 0.5, "width": 0.5, "height": 0.5, "z": 2},
            ]
        }
    )
    assert layout.capacity == 3
    assert layout.rects(3, 1280, 720) == [
        (Rect(0, 0, 640, 720), 0),
        (Rect(640, 0, 640, 360), 0),
        (Rect(640, 360, 640, 360), 2),
    ]
    assert layout.rects(3, 640, 360) == [
        (Rect(0, 0, 320, 360), 0),
        (Rect(320, 0, 320, 180), 0),
        (Rect(320, 180, 320, 180), 2),
    ]
    # Fewer tiles than regions: the first regions; more: as many as there are regions.
    assert layout.rects(1, 1280, 720) == [(Rect(0, 0, 640, 720), 0)]
    assert len(layout.rects(5, 1280, 720)) == 3


def test_custom_layout_rounds_edges_not_sizes():
    thirds = parse_layout({"regions": [{"x": i / 3, "y": 0, "width": 1 / 3, "height": 1} for i in range(3)]})
    placed = thirds.rects(3, 1280, 720)
    assert_even_inside(placed, 1280, 720)
    assert [rect.x for rect, _ in placed] == [0, 426, 854]
    assert placed[-1][0].x + placed[-1][0].width == 1280
    assert coverage_of(placed, 1280, 720).min() == 1  # touching thirds: no gap, no overlap


def test_custom_speaker_region_takes_the_floor_holder():
    layout = parse_layout(
        {
            "regions": [
                {"x": 0, "y": 0.75, "width": 0.25, "height": 0.25},
                {"x": 0, "y": 0, "width": 1, "height": 0.75, "speaker": True},
                {"x": 0.25, "y": 0.75, "width": 0.25, "height": 0.25},
            ]
        }
    )
    big, first, second = Rect(0, 0, 1280, 540), Rect(0, 540, 320, 180), Rect(320, 540, 320, 180)
    assert [rect for rect, _ in layout.rects(3, 1280, 720, speaker=2)] == [first, second, big]
    assert [rect for rect, _ in layout.rects(3, 1280, 720, speaker=0)] == [big, first, second]


def test_layout_round_trips_through_its_wire_form():
    for name in ("grid", "speaker", "pip"):
        assert parse_layout(name).to_json() == name
    data = {
        "regions": [
            {"x": 0.0, "y": 0.0, "width": 1.0, "height": 1.0, "z": 0},
            {"x": 0.5, "y": 0.5, "width": 0.25, "height": 0.25, "z": 3, "speaker": True},
        ]
    }
    assert parse_layout(data).to_json() == data
    assert parse_layout(parse_layout(data).to_json()) == parse_layout(data)


REGION = {"x": 0, "y": 0, "width": 0.5, "height": 0.5}


@pytest.mark.parametrize(
    "data, words",
    [
        ("mosaic", "no layout 'mosaic'"),
        (3, "a name (grid, speaker, pip, presentation) or an object"),
        (None, "a name (grid, speaker, pip, presentation) or an object"),
        ({}, "needs regions"),
        ({"regions": []}, "needs regions"),
        ({"regions": "grid"}, "needs regions"),
        ({"regions": [REGION] * 65}, "1 to 64 regions"),
        ({"regions": [7]}, "regions[0] must be an object"),
        ({"regions": [REGION, {"x": 0, "y": 0, "width": 0.5}]}, "regions[1].height is missing"),
        ({"regions": [REGION | {"x": "0"}]}, "regions[0].x must be a number"),
        ({"regions": [REGION | {"width": True}]}, "regions[0].width must be a number"),
        ({"regions": [REGION | {"x": -0.1}]}, "from 0 up to"),
        ({"regions": [REGION | {"y": 1}]}, "from 0 up to"),
        ({"regions": [REGION | {"width": 0}]}, "at least 0.02"),
        ({"regions": [REGION | {"height": -1}]}, "at least 0.02"),
        ({"regions": [REGION | {"x": 0.6}]}, "regions[0] goes beyond the canvas"),
        ({"regions": [REGION | {"y": 0.5, "height": 0.6}]}, "goes beyond the canvas"),
        ({"regions": [REGION | {"z": 1.5}]}, "regions[0].z must be an integer"),
        ({"regions": [REGION | {"z": 5000}]}, "regions[0].z must be an integer"),
        ({"regions": [REGION | {"speaker": "yes"}]}, "regions[0].speaker must be true or false"),
        ({"regions": [REGION | {"speaker": True}] * 2}, "At most one region"),
    ],
)
def test_bad_layout_data_is_refused_with_a_clear_message(data, words):
    with pytest.raises(LayoutError) as refused:
        parse_layout(data)
    assert words in str(refused.value)


def test_parse_layout_accepts_float_rounding_at_the_edge():
    layout = parse_layout({"regions": [{"x": 0.1 + 0.2, "y": 0, "width": 0.7, "height": 1}]})
    assert layout.rects(1, 1280, 720) == [(Rect(384, 0, 896, 720), 0)]


def test_last_n_fits_everybody_when_there_is_room():
    assert last_n(["a", "b", "c"], ["c"], 3) == (["a", "b", "c"], 0)


def test_last_n_shows_the_most_recent_speakers_and_counts_the_rest():
    ids = [f"p{i}" for i in range(10)]
    # 4 tiles: 3 people and a "+7"; the most recent speakers first, in join order on screen.
    assert last_n(ids, ["p8", "p2", "p9", "p5"], 4) == (["p2", "p8", "p9"], 7)
    # Not enough recent speakers: the earliest joiners fill the rest.
    assert last_n(ids, ["p7"], 4) == (["p0", "p1", "p7"], 7)
    # Speakers who left are skipped.
    assert last_n(ids, ["gone", "p3"], 3) == (["p0", "p3"], 8)
