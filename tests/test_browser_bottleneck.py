"""A Chromium page behind a 700 kbit/s downlink (its TURN relay goes through client.impairment's relay,
rate-limited towards the page): the server moves it to a smaller tier, and it keeps playing (issue 17)."""

from __future__ import annotations

import asyncio
import time

import pytest
from browser_checks import CHROMIUM, chromium_args, chromium_playwright, write_wav, write_y4m
from test_impairment import relay, through  # noqa: F401  (relay is a fixture)
from test_turn import coturn  # noqa: F401  (coturn is a fixture)

from client.encoded import PreEncodedAudioTrack, PreEncodedVideoTrack
from client.impairment import Relay
from client.peer import Peer
from client.sources import COLORS
from mcu.config import Config

#: The page's inbound video: decoded frames and the picture's width.
INBOUND_VIDEO_JS = """
async () => {
  const stats = await window.meeting.pc.getStats();
  let out = null;
  stats.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") {
      out = { decoded: s.framesDecoded ?? 0, width: s.frameWidth ?? 0 };
    }
  });
  return out;
}
"""


@pytest.fixture
def relay_spec() -> str:
    """700 kbit/s towards the page, as a slow downlink, with a queue of 40 datagrams."""
    return "down.rate=700k,down.queue=40,seed=3"


@pytest.fixture
def config(relay: Relay) -> Config:  # noqa: F811  (the fixture imported above)
    """960x540@15 at 1.2 Mbit/s (high), 640x360@15 (low), 320x180@15 (small); the page's TURN is the relay."""
    return Config(width=960, height=540, fps=15, video_bitrate=1_200_000, ice_servers=through(relay))


async def test_a_browser_behind_a_slow_downlink_moves_down_and_keeps_playing(server, relay, tmp_path):  # noqa: F811
    playwright_api = chromium_playwright()
    video, audio = tmp_path / "red.y4m", tmp_path / "500.wav"
    write_y4m(video, COLORS["red"])
    write_wav(audio, 500.0)
    # Two publishers on clean loopback with a moving, noisy picture: the composite needs its bitrate.
    peers = [
        Peer(server.url, "slow", f"py{i}", video=PreEncodedVideoTrack(colour), audio=PreEncodedAudioTrack(700.0 + i))
        for i, colour in enumerate([(40, 200, 40), (40, 40, 200)])
    ]
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=chromium_args(video, audio))
        try:
            for peer in peers:
                await peer.join()
            page = await browser.new_page()
            await page.goto(f"http://127.0.0.1:{server.port}/?room=slow&name=anna&relay=1")
            room = server.conference.rooms["slow"]
            deadline = time.monotonic() + 30
            while "anna" not in {p.name for p in room.participants.values()}:
                assert time.monotonic() < deadline, "the page did not join"
                await asyncio.sleep(0.1)
            anna = next(p for p in room.participants.values() if p.name == "anna")
            # It starts on high, cannot carry it, and is moved down within a few seconds of its first picture.
            deadline = time.monotonic() + 30
            while not (stats := await page.evaluate(INBOUND_VIDEO_JS)) or not stats["decoded"]:
                assert time.monotonic() < deadline, "the page decoded nothing"
                await asyncio.sleep(0.2)
            first_picture = time.monotonic()
            while anna.tier == "high":
                assert time.monotonic() - first_picture < 10, f"still on high: {room.links().get(anna.peer_id)}"
                await asyncio.sleep(0.1)
            moved = time.monotonic()
            moved_after = moved - first_picture
            # The new tier's picture: its keyframe, through the queue the old tier left full.
            widths = {"low": 640, "small": 320, "audio": 0}
            while (before := await page.evaluate(INBOUND_VIDEO_JS))["width"] != widths[anna.tier]:
                assert time.monotonic() - moved < 8, (anna.tier, before)
                await asyncio.sleep(0.1)
            shown_after = time.monotonic() - moved
            await asyncio.sleep(5)
            after = await page.evaluate(INBOUND_VIDEO_JS)
            tier, down = anna.tier, relay.totals("down")
            status = await page.text_content("#status")
            print(
                f"\nmoved to {tier} {moved_after:.1f} s after its first picture, shown {shown_after:.1f} s later; "
                f"page {before} -> {after}; {down}"
            )
        finally:
            await browser.close()
            await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)
    # On a tier its link carries (low or small, a video tier), it keeps playing: at least 12 of 15 fps,
    # at that tier's width.
    assert tier in ("low", "small"), tier
    assert after["decoded"] - before["decoded"] >= 12 * 5, (before, after)
    assert after["width"] == {"low": 640, "small": 320}[tier], after
    # The server's `tier` message told the page, which says so.
    assert "connection is slow" in status, status
