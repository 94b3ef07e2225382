import av
import numpy as np
import pytest

import compositor.video as video
from compositor import GRID, PIP, SPEAKER, Compositor, Rect, Tile, fit, grid_layout, parse_layout

# BT.601 limited-range YUV of pure colours.
RED = (81, 90, 240)
GREEN = (145, 54, 34)
BLUE = (41, 240, 110)
BLACK = (16, 128, 128)
WIDTH, HEIGHT = 1280, 720


def solid(width, height, yuv):
    """A yuv420p frame of one colour, built from numpy planes."""
    frame = av.VideoFrame(width, height, "yuv420p")
    for plane, value in zip(frame.planes, yuv):
        plane.update(np.full(plane.buffer_size, value, np.uint8))
    return frame


def planes(frame):
    """Y, U, V of a composed frame as full-size arrays (chroma upsampled by repetition)."""
    assert frame.format.name == "yuv420p"
    assert (frame.width, frame.height) == (WIDTH, HEIGHT)
    data = frame.to_ndarray()
    y = data[:HEIGHT]
    chroma = data[HEIGHT:].reshape(-1)
    quarter = WIDTH * HEIGHT // 4
    u = chroma[:quarter].reshape(HEIGHT // 2, WIDTH // 2).repeat(2, 0).repeat(2, 1)
    v = chroma[quarter:].reshape(HEIGHT // 2, WIDTH // 2).repeat(2, 0).repeat(2, 1)
    return np.stack([y, u, v], axis=-1).astype(np.int16)


def assert_colour(yuv_image, x, y, colour, tolerance=3):
    assert np.abs(yuv_image[y, x] - colour).max() <= tolerance, (x, y, yuv_image[y, x], colour)


def assert_region(yuv_image, rect, colour, tolerance=0):
    region = yuv_image[rect.y : rect.y + rect.height, rect.x : rect.x + rect.width]
    assert region.size > 0
    assert np.abs(region - colour).max() <= tolerance, (rect, colour)


def assert_black_outside(image, pictures):
    """Every pixel outside the given picture rects is exactly black."""
    outside = np.ones(image.shape[:2], bool)
    for picture in pictures:
        outside[picture.y : picture.y + picture.height, picture.x : picture.x + picture.width] = False
    assert np.all(image[outside] == BLACK)


def centre(rect):
    return rect.x + rect.width // 2, rect.y + rect.height // 2


def test_three_tiles_colours_bars_and_free_cell():
    frames = [solid(320, 240, RED), solid(320, 240, GREEN), solid(320, 240, BLUE)]
    image = planes(Compositor(WIDTH, HEIGHT).compose([Tile(n, f) for n, f in zip("abc", frames)]))
    cells = grid_layout(4, WIDTH, HEIGHT)
    pictures = [fit(320, 240, cell) for cell in cells[:3]]
    for cell, picture, colour in zip(cells, pictures, (RED, GREEN, BLUE)):
        assert_colour(image, *centre(cell), colour)
        # 4:3 in a 16:9 cell: 80 px pillarbox bars either side.
        assert picture == Rect(cell.x + 80, cell.y, 480, 360)
        # The picture above the label is the input colour everywhere.
        assert_region(image, Rect(picture.x, picture.y, picture.width, picture.height // 2), colour, 3)
    # Bars and the free fourth cell are exactly black.
    assert_black_outside(image, pictures)


def test_label_has_dark_box_and_light_text():
    cell = grid_layout(16, WIDTH, HEIGHT)[0]
    image = planes(Compositor(WIDTH, HEIGHT).compose([Tile("Alice", solid(320, 240, GREEN))] * 16))
    picture = fit(320, 240, cell)
    corner = image[picture.y + picture.height - 16 : picture.y + picture.height, picture.x : picture.x + 30]
    luma = corner[..., 0]
    assert luma.min() < 50 and luma.max() > 200  # dark box, light text
    assert np.all(np.abs(corner[..., 1:] - 128) <= 1)  # grey, not tinted by the tile


def test_placeholder_grey_with_centred_name():
    image = planes(Compositor(WIDTH, HEIGHT).compose([Tile("Bob", None), Tile("Eve", solid(320, 240, RED))]))
    cell = grid_layout(2, WIDTH, HEIGHT)[0]
    assert_region(image, Rect(cell.x, cell.y, cell.width, 100), (video.PLACEHOLDER_Y, 128, 128))
    cx, cy = centre(cell)
    middle = image[cy - 40 : cy + 40, cx - 100 : cx + 100, 0]
    assert middle.max() > 200  # the name is drawn in the middle
    assert_colour(image, *centre(grid_layout(2, WIDTH, HEIGHT)[1]), RED)


def test_rgb24_input_is_converted():
    rgb = np.zeros((240, 320, 3), np.uint8)
    rgb[..., 0] = 255
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    image = planes(Compositor(WIDTH, HEIGHT).compose([Tile("rgb", frame)]))
    assert_colour(image, WIDTH // 2, HEIGHT // 2, RED)


def test_odd_sized_input():
    image = planes(Compositor(WIDTH, HEIGHT).compose([Tile("odd", solid(321, 241, BLUE))]))
    assert_colour(image, WIDTH // 2, HEIGHT // 2, BLUE)


def test_returns_canvas_without_copy():
    compositor = Compositor(WIDTH, HEIGHT)
    first = compositor.compose([Tile("a", solid(320, 240, RED))])
    second = compositor.compose([])
    # Both frames wrap the same buffer: the first is only valid until the next compose.
    assert first.planes[0].buffer_ptr == second.planes[0].buffer_ptr
    assert_region(planes(first), Rect(0, 0, WIDTH, HEIGHT), BLACK)


def test_unchanged_frame_is_not_rescaled(monkeypatch):
    calls = []
    resize = video.cv2.resize
    monkeypatch.setattr(video.cv2, "resize", lambda *a, **k: calls.append(1) or resize(*a, **k))
    compositor = Compositor(WIDTH, HEIGHT)
    tiles = [Tile("a", solid(320, 240, RED)), Tile("b", solid(320, 240, GREEN))]
    compositor.compose(tiles)
    assert len(calls) == 6  # Y, U, V of two tiles
    image = planes(compositor.compose(list(tiles)))
    assert len(calls) == 6
    assert_colour(image, *centre(grid_layout(2, WIDTH, HEIGHT)[0]), RED)
    tiles[0] = Tile("a", solid(320, 240, BLUE))
    image = planes(compositor.compose(tiles))
    assert len(calls) == 9
    assert_colour(image, *centre(grid_layout(2, WIDTH, HEIGHT)[0]), BLUE)
    assert_colour(image, *centre(grid_layout(2, WIDTH, HEIGHT)[1]), GREEN)


@pytest.mark.parametrize("before", [3, 4])
def test_layout_change_leaves_no_stale_pixels(before):
    compositor = Compositor(WIDTH, HEIGHT)
    red, green, blue = solid(320, 240, RED), solid(320, 240, GREEN), solid(320, 240, BLUE)
    tiles = [Tile("a", red), Tile("b", green), Tile("c", red)][: before - 1]
    compositor.compose(tiles + [Tile("d", blue)])
    image = planes(compositor.compose(tiles))
    assert not np.any(image[..., 1] > 200)  # nothing left of the removed blue tile
    cells = grid_layout(len(tiles), WIDTH, HEIGHT)
    for cell, colour in zip(cells, (RED, GREEN, RED)):
        assert_colour(image, *centre(cell), colour)
    assert_black_outside(image, [fit(320, 240, cell) for cell in cells])


def test_aspect_change_clears_old_picture():
    compositor = Compositor(WIDTH, HEIGHT)
    compositor.compose([Tile("a", solid(1280, 720, RED))])
    image = planes(compositor.compose([Tile("a", solid(320, 240, GREEN))]))
    assert_black_outside(image, [Rect(160, 0, 960, HEIGHT)])
    assert_colour(image, WIDTH // 2, HEIGHT // 2, GREEN)


def test_placeholder_replaced_by_picture_and_back():
    compositor = Compositor(WIDTH, HEIGHT)
    compositor.compose([Tile("a", None)])
    image = planes(compositor.compose([Tile("a", solid(320, 240, RED))]))
    assert_region(image, Rect(0, 0, 160, HEIGHT), BLACK)
    image = planes(compositor.compose([Tile("a", None)]))
    assert_region(image, Rect(0, 0, 160, 200), (video.PLACEHOLDER_Y, 128, 128))


def test_rejects_odd_canvas():
    with pytest.raises(ValueError):
        Compositor(1279, 720)
    with pytest.raises(ValueError):
        Compositor(1280, 722)


def split(width, height, left, right):
    """A yuv420p frame whose left half is one colour and right half another."""
    frame = solid(width, height, left)
    for plane, lvalue, rvalue in zip(frame.planes, left, right):
        data = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size).copy()
        data[:, plane.width // 2 :] = rvalue
        data[:, : plane.width // 2] = lvalue
        plane.update(data)
    return frame


@pytest.mark.parametrize("size", [(640, 480), (1280, 720), (1920, 1080), (352, 288)])
def test_downscaled_picture_keeps_its_content(size):
    cell = grid_layout(16, WIDTH, HEIGHT)[5]
    tiles = [Tile("", None)] * 16
    tiles[5] = Tile("", split(*size, RED, BLUE))
    image = planes(Compositor(WIDTH, HEIGHT).compose(tiles))
    picture = fit(*size, cell)
    quarter = picture.width // 4
    left = Rect(picture.x, picture.y, quarter, picture.height)
    right = Rect(picture.x + picture.width - quarter, picture.y, quarter, picture.height)
    assert_region(image, left, RED, 3)
    assert_region(image, right, BLUE, 3)
    assert_black_outside(
        image[cell.y : cell.y + cell.height, cell.x : cell.x + cell.width],
        [Rect(picture.x - cell.x, picture.y - cell.y, picture.width, picture.height)],
    )


# Layouts, z-order, the speaking border.


def test_speaker_layout_draws_the_floor_holder_large():
    tiles = [Tile("a", solid(320, 240, RED)), Tile("b", solid(320, 240, GREEN)), Tile("c", solid(320, 240, BLUE))]
    image = planes(Compositor(WIDTH, HEIGHT).compose(tiles, SPEAKER, speaker=1))
    placed = SPEAKER.rects(3, WIDTH, HEIGHT, 1)
    assert placed[1][0] == Rect(0, 0, WIDTH, 540)
    for (cell, _), colour in zip(placed, (RED, GREEN, BLUE)):
        assert_colour(image, *centre(cell), colour)
    assert_black_outside(image, [fit(320, 240, cell) for cell, _ in placed])


def test_pip_inset_stays_on_top_when_the_full_picture_changes():
    compositor = Compositor(WIDTH, HEIGHT)
    small = Tile("small", solid(320, 240, GREEN))
    compositor.compose([Tile("big", solid(1280, 720, RED)), small], PIP)
    inset = PIP.rects(2, WIDTH, HEIGHT)[1][0]
    # A new picture under the inset (the inset's own frame unchanged): it must be redrawn on top.
    image = planes(compositor.compose([Tile("big", solid(1280, 720, BLUE)), small], PIP))
    assert_colour(image, *centre(inset), GREEN)
    assert_colour(image, 100, 100, BLUE)


def test_z_order_not_list_order_decides_what_is_on_top():
    layout = parse_layout(
        {
            "regions": [
                {"x": 0.25, "y": 0.25, "width": 0.5, "height": 0.5, "z": 5},
                {"x": 0, "y": 0, "width": 1, "height": 1},
            ]
        }
    )
    image = planes(
        Compositor(WIDTH, HEIGHT).compose([Tile("", solid(1280, 720, GREEN)), Tile("", solid(1280, 720, RED))], layout)
    )
    assert_colour(image, WIDTH // 2, HEIGHT // 2, GREEN)
    assert_colour(image, 50, 50, RED)


@pytest.mark.parametrize("width, height", [(1280, 720), (640, 360)])
def test_any_canvas_size(width, height):
    layout = parse_layout(
        {"regions": [{"x": 0, "y": 0, "width": 0.5, "height": 1}, {"x": 0.5, "y": 0, "width": 0.5, "height": 1}]}
    )
    frame = Compositor(width, height).compose([Tile("", solid(320, 240, RED)), Tile("", solid(320, 240, BLUE))], layout)
    assert (frame.width, frame.height) == (width, height)
    y = frame.to_ndarray()[:height]
    assert abs(int(y[height // 2, width // 4]) - RED[0]) <= 3
    assert abs(int(y[height // 2, 3 * width // 4]) - BLUE[0]) <= 3


@pytest.mark.parametrize("switch", [(GRID, SPEAKER), (SPEAKER, PIP), (PIP, GRID), (SPEAKER, SPEAKER)])
def test_layout_switch_leaves_no_stale_pixels(switch):
    before, after = switch
    compositor = Compositor(WIDTH, HEIGHT)
    tiles = [Tile("a", solid(320, 240, RED)), Tile("b", solid(320, 240, GREEN)), Tile("c", solid(320, 240, BLUE))]
    compositor.compose(tiles, before, speaker=0)
    # The same frames (cached cells) in the new arrangement; for SPEAKER -> SPEAKER the floor moves.
    image = planes(compositor.compose(tiles, after, speaker=2))
    placed = after.rects(3, WIDTH, HEIGHT, 2)
    for (cell, _), colour in zip(placed, (RED, GREEN, BLUE)):
        assert_colour(image, *centre(cell), colour)
    if after is not PIP:
        assert_black_outside(image, [fit(320, 240, cell) for cell, _ in placed])


def border_mask(image, tolerance=3):
    return np.all(np.abs(image - video.BORDER_YUV) <= tolerance, axis=-1)


def test_speaking_tile_gets_a_border_and_loses_it():
    compositor = Compositor(WIDTH, HEIGHT)
    red, green = solid(320, 240, RED), solid(320, 240, GREEN)
    image = planes(compositor.compose([Tile("a", red), Tile("b", green, speaking=True)]))
    cells = grid_layout(2, WIDTH, HEIGHT)
    border = border_mask(image)
    speaking = cells[1]
    thickness = min(speaking.width, speaking.height) // 40 // 2 * 2
    assert thickness == 16
    # A frame of `thickness` px inside the cell's edges, on all four sides, and nowhere else.
    inner = np.zeros_like(border)
    inner[speaking.y : speaking.y + speaking.height, speaking.x : speaking.x + speaking.width] = True
    inner[
        speaking.y + thickness : speaking.y + speaking.height - thickness,
        speaking.x + thickness : speaking.x + speaking.width - thickness,
    ] = False
    assert np.array_equal(border, inner)
    assert_colour(image, *centre(speaking), GREEN)
    # Stops speaking (same frame object): the border goes, the picture and bars come back.
    image = planes(compositor.compose([Tile("a", red), Tile("b", green)]))
    assert not border_mask(image).any()
    assert_black_outside(image, [fit(320, 240, cell) for cell in cells])


def test_speaking_placeholder_gets_a_border_too():
    image = planes(Compositor(WIDTH, HEIGHT).compose([Tile("a", None, speaking=True)]))
    assert border_mask(image)[:4].all()
    assert_colour(image, WIDTH // 2, 200, (video.PLACEHOLDER_Y, 128, 128))


def test_plus_n_tile_is_a_placeholder_with_its_count():
    image = planes(Compositor(WIDTH, HEIGHT).compose([Tile("a", solid(320, 240, RED)), Tile("+7", None)]))
    cell = grid_layout(2, WIDTH, HEIGHT)[1]
    cx, cy = centre(cell)
    assert image[cy - 60 : cy + 60, cx - 100 : cx + 100, 0].max() > 200  # "+7" drawn large in the middle
    assert_colour(image, cell.x + 10, cell.y + 10, (video.PLACEHOLDER_Y, 128, 128))
