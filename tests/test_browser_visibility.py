"""The page honours the server's sender control: off screen, it stops encoding its camera's upstream.

A Chromium page (Debian's, driven by Playwright, a fake camera and a silent fake
microphone) in an mcu room that shows at most one participant's tile (max_tiles 2:
one tile and "+N"). Two Python peers join after it, one of them talking: it takes
the only tile, the page goes off screen and the server tells it to pause. The
page's outbound video (`framesEncoded` of its "outbound-rtp" stats) must stop
while its preview keeps playing, and grow again once the talker leaves and the
page is shown again; the user's own camera switch and the server's wish combine.
Run inside a loopback-only network namespace (scripts/test does that).
"""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import numpy as np
import pytest
from browser_checks import CHROMIUM, chromium_args, chromium_playwright, poll, write_y4m

from client.encoded import PreEncodedAudioTrack, PreEncodedVideoTrack
from client.peer import Peer
from client.sources import COLORS
from mcu.config import Config

playwright_api = chromium_playwright()

# Frames the page's camera encoder has produced, frames its local preview has shown, and
# whether the server last asked for its video.
COUNTS_JS = """
async () => {
  const stats = await window.meeting.pc.getStats();
  const video = [...stats.values()].find((s) => s.type === 'outbound-rtp' && s.kind === 'video');
  return {
    encoded: video?.framesEncoded ?? 0,
    preview: document.getElementById('local').getVideoPlaybackQuality().totalVideoFrames,
    sendVideo: window.meeting.visibility?.sendVideo,
  };
}
"""


@pytest.fixture
def config() -> Config:
    return Config(width=320, height=180, fps=15, video_bitrate=300_000, max_tiles=2)


def write_silence(path: Path, seconds: int = 2) -> None:
    """A silent microphone: the page must never take the floor by itself."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(48000)
        out.writeframes(np.zeros(48000 * seconds, np.int16).tobytes())


async def growth(page, seconds: float = 1.5) -> dict:
    """How many frames the page encoded and previewed over `seconds`, and the server's wish at the end."""
    first = await page.evaluate(COUNTS_JS)
    await asyncio.sleep(seconds)
    last = await page.evaluate(COUNTS_JS)
    return {**last, "encoded": last["encoded"] - first["encoded"], "preview": last["preview"] - first["preview"]}


def told(page, send_video: bool):
    return lambda: page.evaluate(f"window.meeting?.visibility?.sendVideo === {str(send_video).lower()}")


async def test_the_page_pauses_its_upstream_off_screen_and_resumes_when_shown(server, tmp_path):
    video, audio = tmp_path / "red.y4m", tmp_path / "silence.wav"
    write_y4m(video, COLORS["red"])
    write_silence(audio)
    room = "visibility"
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=chromium_args(video, audio))
        page = await browser.new_page(viewport={"width": 1280, "height": 720})
        peers: list[Peer] = []
        try:
            await page.goto(f"http://127.0.0.1:{server.port}/?room={room}&name=anna")
            # Alone, the page holds the tile and encodes.
            await poll(told(page, True), 15, "the page to be told to send")
            await poll(lambda: page.evaluate("window.meeting.visibility.onScreen"), 5, "anna on screen")
            await poll(lambda: page.evaluate(f"({COUNTS_JS})().then((c) => c.encoded > 10)"), 15, "encoding")
            # A talker and a silent peer: the talker takes the only tile.
            for name, tone in (("ben", 0.3), ("cleo", 0.0)):
                peers.append(
                    Peer(
                        server.url, room, name, video=PreEncodedVideoTrack(COLORS["green"]),
                        audio=PreEncodedAudioTrack(700.0, amplitude=tone), decode=False, chat=False,
                    )
                )  # fmt: skip
                await peers[-1].join()
            await poll(told(page, False), 15, "the page to be told to pause")
            assert not await page.evaluate("window.meeting.visibility.onScreen")
            assert "not on screen" in await page.locator("#participants li", has_text="anna").text_content()
            await asyncio.sleep(0.5)  # frames already in the encoder
            paused = await growth(page)
            assert paused["encoded"] == 0, paused
            assert paused["preview"] > 5, paused  # the camera stays open: the preview plays
            assert await page.evaluate("window.meeting.local.getVideoTracks()[0].readyState") == "live"
            assert await page.evaluate("window.meeting.local.getVideoTracks()[0].enabled")

            # The user's camera switch while paused does not resume the upstream.
            await page.click("#camera")
            await page.click("#camera")
            await asyncio.sleep(0.5)
            assert (await growth(page))["encoded"] == 0

            # The talker leaves: the page is shown again and encodes again.
            await peers.pop(0).close()
            await poll(told(page, True), 15, "the page to be told to resume")
            await poll(lambda: page.evaluate("window.meeting.visibility.onScreen"), 5, "anna on screen again")
            resumed = await growth(page)
            assert resumed["encoded"] > 5, resumed
            assert "not on screen" not in await page.locator("#participants li", has_text="anna").text_content()

            # Shown, the user's camera off pauses it at once, before the server's own pause (2 s later):
            # an mcu room shows her placeholder, not the black frames a disabled track would send.
            await page.click("#camera")
            await asyncio.sleep(0.3)
            off = await growth(page, 1.0)
            assert off["encoded"] == 0 and off["sendVideo"] is True, off
        finally:
            await asyncio.gather(*(peer.close() for peer in peers))
            await browser.close()
