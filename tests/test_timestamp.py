"""The capture-time stamp survives VP8 twice and a 16-tile composite, and reads back exactly."""

from __future__ import annotations

import fractions

import av
import numpy as np

from client.encoded import encode_video_clip
from client.sources import COLORS
from client.stamp import (
    AREA,
    CHECK_BITS,
    COLUMNS,
    DATA_BITS,
    ROWS,
    StampedVideoTrack,
    cells,
    draw_stamp,
    latency_ms,
    luma_of,
    read_stamp,
)
from compositor.layout import fit, grid_layout
from compositor.video import Compositor, Tile

#: The smallest tile bench_compare reads: a 16-grid on a 640x360 canvas gives 120x90 (its default canvas, 1280x720,
#: gives 240x180).
CANVAS = (640, 360)


def _vp8(width: int, height: int, bitrate: int) -> av.CodecContext:
    """A VP8 encoder set up like aiortc's: realtime, no lookahead."""
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.bit_rate = bitrate
    codec.time_base = fractions.Fraction(1, 30)
    codec.options = {"deadline": "realtime", "lag-in-frames": "0", "cpu-used": "4"}
    return codec


def _cell(index: int, width: int, height: int) -> tuple[slice, slice]:
    """The rows and columns of code cell `index` (row-major) in a width x height picture."""
    left, top, right, bottom = (round(f * size) for f, size in zip(AREA, (width, height, width, height)))
    cell_width, cell_height = (right - left) / COLUMNS, (bottom - top) / ROWS
    row, column = divmod(index, COLUMNS)
    return (
        slice(round(top + row * cell_height), round(top + (row + 1) * cell_height)),
        slice(round(left + column * cell_width), round(left + (column + 1) * cell_width)),
    )


def _roundtrip(codec: av.CodecContext, decoder: av.CodecContext, frame: av.VideoFrame) -> list[av.VideoFrame]:
    return [decoded for packet in codec.encode(frame) for decoded in decoder.decode(packet)]


def test_code_reads_back_and_rejects_what_is_not_a_code() -> None:
    rng = np.random.default_rng(6)
    for value in [0, 1, 65535, *rng.integers(0, 1 << 16, 50)]:
        luma = np.full((90, 120), 100, np.uint8)
        draw_stamp(luma, int(value))
        assert read_stamp(luma) == value
    # A value past the 16 bits wraps, and latencies are taken on the wrapping clock.
    assert (cells(70000) == cells(70000 - 65536)).all()
    assert latency_ms(65530, 65536 + 20) == 26
    # Other peers' tiles: flat colours, noise, a stamp with one cell flipped.
    assert read_stamp(np.full((90, 120), 235, np.uint8)) is None
    assert read_stamp(rng.integers(16, 236, (90, 120)).astype(np.uint8)) is None
    # A code with one data bit flipped (a picture caught between two stamps): the check refuses it.
    for bit in range(1, 1 + DATA_BITS + CHECK_BITS):
        luma = np.full((180, 240), 100, np.uint8)
        draw_stamp(luma, 12345)
        rows, columns = _cell(bit, 240, 180)
        luma[rows, columns] = 251 - luma[rows, columns]
        assert read_stamp(luma) is None, bit
    # A cell half way between black and white is no code either.
    luma = np.full((180, 240), 100, np.uint8)
    draw_stamp(luma, 12345)
    luma[40:60, 60:100] = 125
    assert read_stamp(luma) is None


async def test_stamp_through_sender_vp8_a_16_tile_composite_and_its_vp8() -> None:
    """The stamper's 320x240 VP8 (300 kbit/s), decoded, scaled into tile 6 of a 640x360 16-grid among textured
    tiles, the composite through VP8 at 600 kbit/s: every frame after the first reads its exact stamp."""
    track = StampedVideoTrack(fps=30)
    sender, sender_decoder = _vp8(320, 240, 300_000), av.CodecContext.create("vp8", "r")
    composite, composite_decoder = _vp8(*CANVAS, 600_000), av.CodecContext.create("vp8", "r")
    others = [av.CodecContext.create("vp8", "r") for _ in range(15)]
    clips = [encode_video_clip(color) for color in list(COLORS.values())[:5]]
    compositor = Compositor(*CANVAS)
    cell = grid_layout(16, *CANVAS)[6]
    area = fit(320, 240, cell)
    assert (area.width, area.height) == (120, 90)
    sent: list[int] = []
    read: list[int | None] = []
    for index in range(45):
        frame = await track.recv()
        sent.append(read_stamp(luma_of(frame)))
        other_frames = [
            next(iter(decoder.decode(av.Packet(clips[i % 5][index % len(clips[i % 5])]))), None)
            for i, decoder in enumerate(others)
        ]
        for decoded in _roundtrip(sender, sender_decoder, frame):
            tiles = [Tile(f"load{i}", f) for i, f in enumerate(other_frames)]
            tiles.insert(6, Tile("stamper", decoded))
            for picture in _roundtrip(composite, composite_decoder, compositor.compose(tiles)):
                luma = luma_of(picture)[area.y : area.y + area.height, area.x : area.x + area.width]
                read.append(read_stamp(luma))
                # No other tile ever reads as a stamp.
                for rect in grid_layout(16, *CANVAS)[:6]:
                    tile = fit(320, 240, rect)
                    assert (
                        read_stamp(luma_of(picture)[tile.y : tile.y + tile.height, tile.x : tile.x + tile.width])
                        is None
                    )
    assert None not in sent
    assert len(set(sent)) > 40  # the stamp is the capture time: it changes every frame
    assert len(read) == len(sent)
    assert read[1:] == sent[1 : len(read)]
