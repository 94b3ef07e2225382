"""A publisher behind a 300 kbit/s uplink (client/impairment.py's rate limit and tail-drop queue):
the server's REMB brings its encoder under the limit, a frame lost on the way is given up and a
keyframe asked for, rate-limited, and its tile in a clean peer's composite stays live (issue 17)."""

from __future__ import annotations

import asyncio
import time

import pytest
from media_checks import TileWatch

from client.impairment import parse_spec
from client.peer import Peer
from client.sources import COLORS, MovingTrack
from compositor.layout import grid_layout
from mcu.config import Config
from mcu.rtc.jitter import PLI_INTERVAL

LIMIT = 300_000
SECONDS = 30
#: The first seconds are left out: the encoder starts at 500 kbit/s and the queue overflows until REMB
#: has brought it down (the link is then busy with what was queued and lost).
SETTLE = 15.0


@pytest.fixture
def config() -> Config:
    return Config(width=640, height=360, fps=15, video_bitrate=600_000)


async def video_bytes_sent(peer: Peer) -> int:
    stats = await peer.pc.getStats()
    return next(s.bytesSent for s in stats.values() if s.type == "outbound-rtp" and s.kind == "video")


async def test_an_uplink_limited_publisher_lowers_its_bitrate_and_its_tile_stays_live(server):
    impairment = parse_spec(f"up.rate={LIMIT},up.queue=30,seed=3")
    publisher = Peer(server.url, "uplink", "publisher", video=MovingTrack(COLORS["red"]), impairment=impairment)
    viewer = Peer(server.url, "uplink", "viewer")
    try:
        await publisher.join()
        await viewer.join()
        cell = grid_layout(2, 640, 360)[0]  # the publisher's, first in join order
        tile = TileWatch(cell.x, cell.y, cell.width, cell.height)
        start = time.monotonic()
        settled: tuple[int, int] | None = None
        while (now := time.monotonic()) - start < SECONDS:
            tile.look(viewer.video_frame, now - start)
            if settled is None and now - start >= SETTLE:
                settled = publisher.impaired.up.counters.tail_dropped, await video_bytes_sent(publisher)
            await asyncio.sleep(0.1)
        elapsed = time.monotonic() - start
        assert settled is not None
        up = publisher.impaired.up.counters
        rate = (await video_bytes_sent(publisher) - settled[1]) * 8 / (elapsed - SETTLE)
        freeze = tile.longest_still(SETTLE, elapsed)
        stats = server.conference.rooms["uplink"].stats()
        print(
            f"\nuplink {up}; tail drops after {SETTLE:.0f} s: {up.tail_dropped - settled[0]}; video sent then "
            f"{rate / 1000:.0f} kbit/s; tile changes {len(tile.changes)}, longest freeze after {SETTLE:.0f} s "
            f"{freeze:.2f} s; "
            f"frames lost {stats['videoFramesLost']}, keyframes asked {stats['videoKeyframesAsked']}, "
            f"decode errors {stats['videoDecodeErrors']}"
        )
        assert settled[0] > 0  # the 500 kbit/s start did overflow the bottleneck
        # REMB brought the encoder under the limit: its media rate, and the queue no longer overflows.
        assert rate < LIMIT and up.tail_dropped - settled[0] <= 10
        # The tile is live: its pixels change at least every second.
        assert freeze <= 1.0, tile.changes
        # Frames lost on the way were given up, each time asking for a keyframe, at most every PLI_INTERVAL.
        assert stats["videoFramesLost"] > 0
        assert 1 <= stats["videoKeyframesAsked"] <= elapsed / PLI_INTERVAL + 1
    finally:
        await asyncio.gather(publisher.close(), viewer.close(), return_exceptions=True)
