"""Chromium publishing through a 300 kbit/s uplink (the impaired relay in front of coturn, the page's
`?relay=1`): the server's REMB and loss reports bring its send rate under the limit and its tile in
a clean peer's composite stays live (issue 17)."""

from __future__ import annotations

import asyncio
import time

import pytest
from browser_checks import CHROMIUM, chromium_args, chromium_playwright, write_wav, write_y4m_frames
from media_checks import TileWatch
from test_impairment import relay, through  # noqa: F401  (relay is a fixture)
from test_turn import coturn  # noqa: F401  (coturn is a fixture)

from client.impairment import Relay
from client.peer import Peer
from client.sources import COLORS, MovingTrack
from compositor.layout import grid_layout
from mcu.config import Config

LIMIT = 300_000
SECONDS = 30
#: Left out: Chromium's bandwidth estimate starts (at 300 kbit/s) and settles.
SETTLE = 15.0
#: What Chromium sends (audio and video: both cross the bottleneck), and its video encoder's target.
SENDING_JS = """
async () => {
  const out = { bytesSent: 0, targetBitrate: null };
  (await window.meeting.pc.getStats()).forEach((s) => {
    if (s.type === "outbound-rtp") {
      out.bytesSent += s.bytesSent + (s.headerBytesSent ?? 0);
      if (s.kind === "video") out.targetBitrate = s.targetBitrate;
    }
  });
  return out;
}
"""


@pytest.fixture
def relay_spec() -> str:
    """A 300 kbit/s uplink with a queue of 30 datagrams."""
    return f"up.rate={LIMIT},up.queue=30,seed=5"


@pytest.fixture
def config(relay: Relay) -> Config:  # noqa: F811  (the fixture imported above)
    return Config(width=640, height=360, fps=15, ice_servers=through(relay))


async def test_a_browser_on_a_300k_uplink_sends_under_it_and_its_tile_stays_live(server, relay, tmp_path):  # noqa: F811
    playwright_api = chromium_playwright()
    video, audio = tmp_path / "moving.y4m", tmp_path / "500.wav"
    write_y4m_frames(video, MovingTrack(COLORS["red"]).frames)
    write_wav(audio, 500.0)
    viewer = Peer(server.url, "uplink", "viewer")
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=chromium_args(video, audio))
        try:
            page = await browser.new_page()
            await page.goto(f"http://127.0.0.1:{server.port}/?room=uplink&name=anna&relay=1")
            await page.wait_for_function("window.meeting && window.meeting.pc", timeout=10_000)
            await viewer.join()
            cell = grid_layout(2, 640, 360)[0]  # anna's, first in join order
            tile = TileWatch(cell.x, cell.y, cell.width, cell.height)
            start = time.monotonic()
            samples: list[tuple[float, dict]] = []
            settled_drops = None
            while (now := time.monotonic()) - start < SECONDS:
                tile.look(viewer.video_frame, now - start)
                if not samples or now - start - samples[-1][0] >= 1:
                    samples.append((now - start, await page.evaluate(SENDING_JS)))
                if settled_drops is None and now - start >= SETTLE:
                    settled_drops = relay.totals("up").tail_dropped
                await asyncio.sleep(0.1)
            elapsed = time.monotonic() - start
        finally:
            await browser.close()
            await viewer.close()
    up = relay.totals("up")
    rates = [(t1, (b["bytesSent"] - a["bytesSent"]) * 8 / (t1 - t0)) for (t0, a), (t1, b) in zip(samples, samples[1:])]
    after = [rate for t, rate in rates if t > SETTLE]
    freeze = tile.longest_still(SETTLE, elapsed)
    target = samples[-1][1]["targetBitrate"]
    print(
        f"\nbrowser behind {LIMIT // 1000}k: relay up {up}; sent kbit/s per second "
        f"{[round(r / 1000) for _, r in rates]}; video target at the end {target}; "
        f"tail drops after {SETTLE:.0f} s {up.tail_dropped - settled_drops}; tile changes {len(tile.changes)}, "
        f"longest freeze after {SETTLE:.0f} s {freeze:.2f} s"
    )
    assert up.offered > 0  # Chromium's media went through the relay
    # Under the limit, its encoder aiming lower still, and the queue no longer overflows. Without the server's
    # REMB Chromium's loss-based control alone kept going over: 107-461 kbit/s, its video target 354k at the
    # end, 120 tail drops after 15 s, the tile still for 1.2 s.
    assert sum(after) / len(after) < LIMIT and target < LIMIT
    assert up.tail_dropped - settled_drops <= 10
    # Its tile is live: a new picture at least every second.
    assert freeze <= 1.0, tile.changes
