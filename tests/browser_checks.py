"""What the Chromium and Firefox tests share: sampling the page's composite, and where to look."""

from __future__ import annotations

import asyncio
import socket
import wave
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from media_checks import cell_colours, close_to, tone_levels

from client.sources import rgb_to_yuv
from compositor.layout import grid_layout

#: The placeholder tile in YUV, and as a browser's canvas shows it in RGB.
PLACEHOLDER = (40, 128, 128)
PLACEHOLDER_RGB = (28, 28, 28)

# A JavaScript function: RGB (mean of 8x8 pixels) at a point `at` of each grid cell of
# <video id="remote">, cells given as fractions of the picture; null until the video plays.
SAMPLE_FUNCTION = """
function sample(cells, at) {
  const video = document.getElementById('remote');
  if (!video.videoWidth || video.readyState < 2 || video.paused) return null;
  const canvas = document.createElement('canvas');
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  const context = canvas.getContext('2d');
  context.drawImage(video, 0, 0);
  return cells.map(([x, y, w, h]) => {
    const px = context.getImageData(Math.round((x + w * at[0]) * canvas.width) - 4,
                                     Math.round((y + h * at[1]) * canvas.height) - 4, 8, 8).data;
    let r = 0, g = 0, b = 0;
    for (let i = 0; i < px.length; i += 4) { r += px[i]; g += px[i + 1]; b += px[i + 2]; }
    const n = px.length / 4;
    return [r / n, g / n, b / n];
  });
}
"""


def isolated_network() -> bool:
    """True in a network namespace whose only interface is loopback (scripts/test makes one)."""
    return all(name == "lo" for _, name in socket.if_nameindex())


#: Debian's Chromium: the only browser the tests drive (never a downloaded one).
CHROMIUM = Path("/usr/bin/chromium")


def chromium_playwright() -> ModuleType:
    """Playwright's async API, or a skip where Debian's Chromium or a loopback-only namespace is missing."""
    if not CHROMIUM.exists() or not isolated_network():
        pytest.skip("needs Debian's chromium and a network namespace with loopback alone (scripts/test)")
    return pytest.importorskip("playwright.async_api")


def grid_fractions(count: int, width: int = 640, height: int = 360) -> list[list[float]]:
    """The server's grid cells for `count` tiles, as fractions of the composite."""
    return [[c.x / width, c.y / height, c.width / width, c.height / height] for c in grid_layout(count, width, height)]


def rgb_close(actual: list[float], expected: tuple[int, int, int], tolerance: float = 45) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected))


async def python_peer_sees_and_hears(py, colours: list, browser_tones: list[float], own_tone: float) -> list:
    """The Python peer of a browser test sees every colour (any order) and hears the browsers, not itself.

    Returns the composite's cell colours (YUV), so the caller can find a browser's tile.
    """

    def sees_everyone() -> bool:
        if py.video_frame is None:
            return False
        cells = cell_colours(py.video_frame, len(colours))
        return all(any(close_to(c, rgb_to_yuv(col)) for c in cells) for col in colours)

    await py.wait_for(sees_everyone, timeout=10)
    cells = cell_colours(py.video_frame, len(colours))
    await asyncio.sleep(1.5)
    levels = tone_levels(py.audio(1.0), [*browser_tones, own_tone])
    assert all(levels[f] > 100 for f in browser_tones), levels
    assert min(levels[f] for f in browser_tones) - levels[own_tone] >= 30, levels
    return cells


async def poll(check, timeout: float, what: str):
    """Await `check()` until it returns something true, or fail after `timeout` s."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (result := await check()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)
    return result


def write_y4m(path: Path, rgb: tuple[int, int, int], width: int = 320, height: int = 240) -> None:
    """A short solid-colour clip; Chromium's fake camera loops it."""
    y, u, v = rgb_to_yuv(rgb)
    quarter = width * height // 4
    frame = b"FRAME\n" + bytes([y]) * (width * height) + bytes([u]) * quarter + bytes([v]) * quarter
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F15:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(15):
            out.write(frame)


def write_y4m_frames(path: Path, frames: list[np.ndarray], width: int = 320, height: int = 240) -> None:
    """yuv420p pictures (each height * 3 / 2 rows of `width`) as a clip that Chromium's fake camera loops, 15 fps."""
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F15:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            out.write(b"FRAME\n" + frame.tobytes())


def write_wav(path: Path, frequency: float, seconds: int = 2) -> None:
    """A tone; Chromium's fake microphone loops it."""
    t = np.arange(48000 * seconds) / 48000
    samples = (np.sin(2 * np.pi * frequency * t) * 0.3 * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(48000)
        out.writeframes(samples.tobytes())


def chromium_args(video: Path, audio: Path) -> list[str]:
    return [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={video}",
        f"--use-file-for-fake-audio-capture={audio}",
        "--autoplay-policy=no-user-gesture-required",
        # The namespace has loopback only; Chromium leaves it out of ICE unless told.
        "--allow-loopback-in-peer-connection",
    ]


async def video_frames_over(page, count: int, seconds: float) -> int:
    """The page's first <video> element's decoded frames, once over `count` or after `seconds` (polled every 0.2 s)."""
    frames = 0
    for _ in range(round(seconds / 0.2)):
        frames = await page.evaluate("() => document.querySelector('video').getVideoPlaybackQuality().totalVideoFrames")
        if frames > count:
            break
        await asyncio.sleep(0.2)
    return frames


async def centre_rgb(page) -> list[int]:
    """The RGBA of the centre pixel of the page's first <video> element's picture now."""
    return await page.evaluate(
        """() => {
            const video = document.querySelector('video');
            const canvas = document.createElement('canvas');
            canvas.width = video.videoWidth; canvas.height = video.videoHeight;
            const context = canvas.getContext('2d');
            context.drawImage(video, 0, 0);
            return Array.from(context.getImageData(canvas.width / 2, canvas.height / 2, 1, 1).data);
        }"""
    )
