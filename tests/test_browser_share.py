"""The page shares its screen (Chromium's fake screen, through getDisplayMedia) and a Python peer sees the
presentation layout; the same page shares a canvas next, on the same section, and stops."""

from __future__ import annotations

import time

import pytest
from browser_checks import CHROMIUM, chromium_args, chromium_playwright, poll, write_wav, write_y4m
from media_checks import cell_colours, close_to, colour_in
from test_share import screen_area

from client.peer import Peer
from client.sources import COLORS, ColorTrack, rgb_to_yuv
from compositor.layout import PRESENTATION, Rect

#: What Chromium's fake screen shows (headless, --use-fake-device-for-media-stream): 1280x720, its planes all
#: 0 (Y, U and V: a green on screen) but for a disc in the middle and a clock at the top left, in luma.
FAKE_SCREEN = (0, 0, 0)
FAKE_SCREEN_SIZE = (1280, 720)


@pytest.fixture
async def page(tmp_path):
    playwright_api = chromium_playwright()
    video, audio = tmp_path / "red.y4m", tmp_path / "tone.wav"
    write_y4m(video, COLORS["red"])
    write_wav(audio, 660)
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=chromium_args(video, audio))
        try:
            yield await browser.new_page(viewport={"width": 1280, "height": 720})
        finally:
            await browser.close()


def presentation_of(frame, screen: tuple[int, int, int], size: tuple[int, int] = FAKE_SCREEN_SIZE) -> bool:
    """The screen (its colour, left of its middle) large at the left, then the Python peer (blue) and the page
    (red) in the strip."""
    if frame is None:
        return False
    rects = [rect for rect, _ in PRESENTATION.rects(3, frame.width, frame.height, speaker=0)]
    strip = all(close_to(colour_in(frame, r), rgb_to_yuv(COLORS[c])) for r, c in zip(rects[1:], ("blue", "red")))
    area = screen_area(3, frame.width, frame.height, size)
    left = Rect(area.x + area.width // 8, area.y + area.height // 3, area.width // 4, area.height // 3)
    return strip and close_to(colour_in(frame, left), screen, 20)


def grid_of(frame) -> bool:
    return frame is not None and all(
        close_to(c, rgb_to_yuv(COLORS[e])) for c, e in zip(cell_colours(frame, 2), ("blue", "red"))
    )


async def test_the_page_shares_its_screen_and_a_python_peer_sees_the_presentation(server, page):
    py = Peer(server.url, "pageshare", "py", video=ColorTrack(COLORS["blue"]))
    try:
        await py.join()
        await page.goto(f"http://127.0.0.1:{server.port}/?room=pageshare&name=brenda")
        await py.wait_for(lambda: grid_of(py.video_frame), timeout=15)
        button = page.locator("#share")
        assert await button.text_content() == "Share screen"

        started = time.monotonic()
        await button.click()  # getDisplayMedia: Chromium's fake screen, no picker
        await py.wait_for(lambda: presentation_of(py.video_frame, FAKE_SCREEN), timeout=10)
        print(f"page share to presentation in a Python peer's composite: {time.monotonic() - started:.3f} s")
        brenda = await page.evaluate("window.meeting.peerId")
        assert py.screens == [brenda]
        await poll(lambda: page.evaluate("window.meeting.screen.screens.length === 1"), 5, "the page's screenShare")
        assert await button.text_content() == "Stop sharing"

        await button.click()
        await py.wait_for(lambda: grid_of(py.video_frame), timeout=5)
        assert py.screens == [] and await button.text_content() == "Share screen"

        # A canvas instead of the screen (what a page may share besides getDisplayMedia): the same section again.
        await page.evaluate(
            """() => {
              const canvas = Object.assign(document.createElement('canvas'), {width: 960, height: 540});
              const context = canvas.getContext('2d');
              setInterval(() => { context.fillStyle = 'rgb(200, 200, 200)'; context.fillRect(0, 0, 960, 540); }, 50);
              return window.meeting.screen.start(canvas.captureStream(15).getVideoTracks()[0]);
            }"""
        )
        grey = rgb_to_yuv((200, 200, 200))  # the same in BT.601 and BT.709 (a browser's canvas uses the latter)
        await py.wait_for(lambda: presentation_of(py.video_frame, grey, (960, 540)), timeout=10)
        assert await page.evaluate("window.meeting.pc.getTransceivers().length") == 3  # no fourth section
        assert not py.errors
    finally:
        await py.close()
