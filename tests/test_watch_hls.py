"""The watch page where WebRTC cannot carry the room: it plays the room's live HLS instead."""

from __future__ import annotations

import dataclasses

import pytest

from client.peer import Peer
from client.sources import COLORS, ColorTrack, ToneTrack
from mcu.config import Config


@pytest.fixture
def config(tmp_path) -> Config:
    """One HLS tier: the fallback is the page's, not a test of the browser's switching between variants."""
    return Config(width=640, height=360, fps=15, video_bitrate=600_000, hls_dir=str(tmp_path / "hls"))


async def test_the_watch_page_plays_the_rooms_hls_where_webrtc_cannot_take_it(server, config):
    """The watch page's fallback: the room refuses a WebRTC viewer (its viewer cap, 0 here, answers 503),
    and the page plays the room's live HLS in its video element instead (Chromium plays HLS natively)."""
    from browser_checks import CHROMIUM, centre_rgb, chromium_playwright, video_frames_over

    playwright_api = chromium_playwright()
    config.limits = dataclasses.replace(config.limits, max_viewers_per_room=0)
    alice = Peer(server.url, "show", "alice", video=ColorTrack(COLORS["red"]), audio=ToneTrack(440.0), chat=False)
    try:
        await alice.join()
        async with playwright_api.async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=str(CHROMIUM),
                args=["--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required"],
            )
            try:
                page = await browser.new_page()
                await page.goto(f"http://127.0.0.1:{server.port}/watch/show", wait_until="domcontentloaded")
                frames = await video_frames_over(page, 30, 30)  # HLS starts a few segments behind
                status = await page.text_content("#status") or ""
                error = await page.evaluate("() => document.querySelector('video').error?.message ?? null")
                assert frames > 30, (frames, status, error)
                assert "HLS" in status and "could not take a WebRTC viewer" in status, status
                assert await page.evaluate("() => document.querySelector('video').src.endsWith('/hls/show/index.m3u8')")
                sample = await centre_rgb(page)
                assert all(abs(a - e) < 60 for a, e in zip(sample, COLORS["red"])), sample
                assert not server.conference.rooms["show"].viewers
            finally:
                await browser.close()
    finally:
        await alice.close()
