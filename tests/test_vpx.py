"""libvpx's VP8 encoder called directly (mcu/media/vpx.py): FFmpeg's bytes without a map, only what changed with one."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest

from compositor.video import Compositor, Tile
from mcu.media.encoders import VIDEO_TIME_BASE
from mcu.media.vpx import MACROBLOCK, SWEEP_SECONDS, ChangedBlocks, Vp8Encoder, VpxError

FPS = 30


def textures(count: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [cv2.GaussianBlur(rng.integers(0, 255, (240, 640), dtype=np.uint8), (9, 9), 3) for _ in range(count)]


def tile_frame(texture: np.ndarray, step: int, shade: int, lift: int | None = None) -> av.VideoFrame:
    """A 320x240 picture: the texture scrolled by `step`, flat chroma; with `lift`, the texture at
    half contrast raised by that much."""
    buffer = np.empty((360, 320), np.uint8)
    luma = np.roll(texture, step * 3, axis=1)[:, :320]
    buffer[:240] = luma if lift is None else luma // 2 + lift
    buffer[240:] = shade
    return av.VideoFrame.from_numpy_buffer(buffer, format="yuv420p")


def composites(count: int, width: int = 640, height: int = 360, moving: int = 4, jump: int = 0):
    """A 4-tile grid where the first `moving` tiles change every other frame, out of phase; with
    `jump`, each change also raises or lowers a moving tile's luma by that much."""
    compositor = Compositor(width, height)
    grain = textures(4)
    frames = [tile_frame(grain[k], 0, 96 + 8 * k) for k in range(4)]
    for i in range(count):
        for k in range(moving):
            if (i + k) % 2 == 0:
                lift = jump * ((i // 2) % 2) if jump else None
                frames[k] = tile_frame(grain[k], i, 96 + 8 * k, lift)
        yield compositor.compose([Tile(f"peer {k}", frame) for k, frame in enumerate(frames)])


def luma_psnr(decoded: av.VideoFrame, reference: np.ndarray) -> float:
    error = np.mean((decoded.to_ndarray()[: reference.shape[0]].astype(np.float64) - reference) ** 2)
    return float(10 * np.log10(255**2 / max(error, 1e-9)))


def test_without_a_map_the_packets_are_ffmpeg_s_own() -> None:
    """The same libvpx, configured as FFmpeg configures it from the options the room used to give
    PyAV: the same bytes (at a fixed speed; a positive cpu-used is a time budget, and timing varies)."""
    ours = Vp8Encoder(640, 360, FPS, 600_000, cpu_used=-8, gop=10 * FPS, skip_unchanged=False)
    ffmpeg = av.CodecContext.create("libvpx", "w")
    ffmpeg.width, ffmpeg.height, ffmpeg.pix_fmt = 640, 360, "yuv420p"
    ffmpeg.bit_rate, ffmpeg.framerate, ffmpeg.gop_size, ffmpeg.thread_count = 600_000, FPS, 10 * FPS, 1
    ffmpeg.time_base = VIDEO_TIME_BASE
    rate = "600000"
    ffmpeg.options = {
        "deadline": "realtime",
        "cpu-used": "-8",
        "lag-in-frames": "0",
        "static-thresh": "1",
        "noise-sensitivity": "0",
        "undershoot-pct": "100",
        "overshoot-pct": "15",
        "minrate": rate,
        "maxrate": rate,
        "bufsize": rate,
    }
    for i, frame in enumerate(composites(40)):
        frame.pts, frame.time_base = i * 3000, VIDEO_TIME_BASE
        frame.pict_type = av.video.frame.PictureType.I if i == 0 else av.video.frame.PictureType.NONE
        expected = [(bytes(packet), packet.is_keyframe) for packet in ffmpeg.encode(frame)]
        assert ours.encode(frame, i * 3000, keyframe=i == 0) == expected
        assert [key for _, key in expected] == [i == 0]


@pytest.mark.parametrize("size", [(1280, 720), (640, 360), (320, 180), (200, 52)])
def test_changed_blocks_are_exactly_the_macroblocks_where_a_pixel_differs(size: tuple[int, int]) -> None:
    width, height = size
    changes = ChangedBlocks(width, height)
    rng = np.random.default_rng(width)
    picture = rng.integers(0, 255, (height * 3 // 2, width), dtype=np.uint8)
    changes.update(av.VideoFrame.from_numpy_buffer(picture.copy(), format="yuv420p"))
    for _ in range(20):
        before = picture.copy()
        for _ in range(rng.integers(0, 4)):
            row, column = rng.integers(0, picture.shape[0]), rng.integers(0, width)
            picture[row, column] ^= 1 << int(rng.integers(0, 8))
        changed = changes.update(av.VideoFrame.from_numpy_buffer(picture.copy(), format="yuv420p"))
        # Brute force: every differing pixel of each plane, to its macroblock.
        expected = np.zeros((changes.rows, changes.cols), bool)
        differs = before != picture
        for y, x in np.argwhere(differs[:height]):
            expected[y // MACROBLOCK, x // MACROBLOCK] = True
        chroma = differs[height:].reshape(-1)
        quarter = width * height // 4
        for plane in (chroma[:quarter], chroma[quarter:]):
            for y, x in np.argwhere(plane.reshape(height // 2, width // 2)):
                expected[y // (MACROBLOCK // 2), x // (MACROBLOCK // 2)] = True
        assert np.array_equal(changed, expected)
        assert np.array_equal(
            np.concatenate([p.reshape(-1) for p in planes_of(changes, width, height)]), picture.reshape(-1)
        )


def planes_of(changes: ChangedBlocks, width: int, height: int) -> list[np.ndarray]:
    y, u, v = changes.planes
    return [y[:height, :width], u[: height // 2, : width // 2], v[: height // 2, : width // 2]]


def test_only_the_changed_tiles_are_coded_and_every_picture_decodes_to_its_source() -> None:
    """Two of four tiles move: the static half is skipped, and nothing stale is left on screen:
    each decoded picture shows the moving tiles as they are now, not as they were a frame ago
    (each change also moves their brightness by 100, far more than the coding noise)."""
    encoder = Vp8Encoder(640, 360, FPS, 600_000, cpu_used=-8, gop=10 * FPS)
    decoder = av.CodecContext.create("libvpx", "r")
    worst = np.inf
    previous = None
    moving = slice(0, 180)  # the grid's top row: tiles 0 and 1
    for i, frame in enumerate(composites(60, moving=2, jump=100)):
        reference = frame.to_ndarray()[:360].astype(np.float64)
        packets = encoder.encode(frame, i * 3000, keyframe=i == 0)
        assert [key for _, key in packets] == [i == 0]
        for data, _ in packets:
            for decoded in decoder.decode(av.Packet(data)):
                worst = min(worst, luma_psnr(decoded, reference))
                if previous is not None:
                    shown = decoded.to_ndarray()[moving].astype(np.float64)
                    now, before = (np.mean((shown - picture[moving]) ** 2) for picture in (reference, previous))
                    assert now < before / 4
        previous = reference
    # The two static tiles and the bars: over half the picture, less the refresh band.
    assert encoder.skipped_blocks / (encoder.skipped_blocks + encoder.active_blocks) > 0.45
    assert worst > 30


def test_the_refresh_band_refines_what_stopped_changing() -> None:
    """A detailed picture coded once at a low bitrate, then unchanged: without the sweep it would keep
    its first, coarse coding (inactive macroblocks are copies); the sweep recodes it row band by band."""
    width, height = 320, 192
    grain = cv2.GaussianBlur(np.random.default_rng(5).integers(0, 255, (height, width), dtype=np.uint8), (3, 3), 1)
    buffer = np.full((height * 3 // 2, width), 128, np.uint8)
    buffer[:height] = grain
    frame = av.VideoFrame.from_numpy_buffer(buffer, format="yuv420p")
    encoder = Vp8Encoder(width, height, FPS, 150_000, cpu_used=-8, gop=10 * FPS)
    decoder = av.CodecContext.create("libvpx", "r")
    quality = []
    for i in range(round(3 * SWEEP_SECONDS * FPS)):
        for data, _ in encoder.encode(frame, i * 3000, keyframe=i == 0):
            quality.extend(luma_psnr(decoded, grain.astype(np.float64)) for decoded in decoder.decode(av.Packet(data)))
    assert quality[-1] > quality[0] + 2


def test_a_frame_of_another_size_is_refused() -> None:
    encoder = Vp8Encoder(320, 180, FPS, 200_000, cpu_used=-8, gop=10 * FPS)
    with pytest.raises(VpxError):
        encoder.encode(av.VideoFrame(640, 360, "yuv420p"), 0, keyframe=True)
