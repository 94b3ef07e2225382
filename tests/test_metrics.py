"""Prometheus /metrics: rooms, peers, composite fps, encode time, drops, underruns, loop lag, bytes."""

from __future__ import annotations

import asyncio

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from client.peer import Peer
from client.sources import COLORS, ColorTrack, ToneTrack


async def scrape(server) -> dict[tuple[str, tuple], float]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{server.port}/metrics") as reply:
            assert reply.status == 200 and reply.content_type == "text/plain"
            text = await reply.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_follow_the_room(server) -> None:
    peers = [
        Peer(server.url, "m", "Ana", video=ColorTrack(COLORS["red"]), audio=ToneTrack(500), decode=False),
        Peer(server.url, "m", "Bo", video=ColorTrack(COLORS["green"]), audio=ToneTrack(700), decode=False),
    ]
    try:
        for peer in peers:
            await peer.join()
        await peers[0].wait_for(lambda: all(p.video_bytes > 20_000 for p in peers), 15)
        first = await scrape(server)
        await asyncio.sleep(2)
        second = await scrape(server)
        room = (("room", "m"),)
        assert second[("mcu_rooms", ())] == 1 and second[("mcu_peers", ())] == 2
        assert second[("mcu_room_peers", room)] == 2
        # The composite runs at the configured 15 fps (the fps gauge covers the 2 s between scrapes).
        assert 10 <= second[("mcu_composite_fps", room)] <= 17
        frames = second[("mcu_composite_frames_total", room)] - first[("mcu_composite_frames_total", room)]
        assert 20 <= frames <= 34
        assert second[("mcu_encode_seconds_total", room)] > first[("mcu_encode_seconds_total", room)] > 0
        # Both peers' video is decoded in the room's video process, which has not had to be restarted.
        decoding = second[("mcu_video_decode_seconds_total", room)] - first[("mcu_video_decode_seconds_total", room)]
        assert decoding > 0 and second[("mcu_picture_restarts_total", room)] == 0
        assert second[("mcu_audio_ticks_total", room)] - first[("mcu_audio_ticks_total", room)] >= 80
        for name in ("mcu_composite_ticks_skipped_total", "mcu_audio_underruns_total", "mcu_audio_ticks_dropped_total"):
            assert (name, room) in second
        # Two peers' composites at 600 kbit/s and their uploads: tens of kB per second each way.
        sent = second[("mcu_media_bytes_sent_total", ())] - first[("mcu_media_bytes_sent_total", ())]
        received = second[("mcu_media_bytes_received_total", ())] - first[("mcu_media_bytes_received_total", ())]
        assert sent > 40_000 and received > 20_000
        assert second[("mcu_event_loop_lag_seconds_count", ())] >= first[("mcu_event_loop_lag_seconds_count", ())] + 10
        # Each receiver's link, labelled by room, tier and kind only: both on their ceiling, reporting.
        assert second[("mcu_receivers_by_tier", (("room", "m"), ("tier", "high")))] == 2
        assert second[("mcu_rtcp_feedback_total", (("kind", "reports"), ("room", "m")))] >= 2
        assert second[("mcu_rtcp_feedback_total", (("kind", "absurd_rembs"), ("room", "m")))] == 0
        assert second[("mcu_tier_switches_total", (("direction", "down"), ("room", "m")))] == 0
        assert 0 <= second[("mcu_receiver_loss_max", room)] < 0.1

        # A peer that leaves takes its room series with the room, never the byte counters down.
        for peer in peers:
            await peer.close()
        await asyncio.sleep(0.5)
        after = await scrape(server)
        assert after[("mcu_rooms", ())] == 0 and after[("mcu_peers", ())] == 0
        assert ("mcu_room_peers", room) not in after
        assert after[("mcu_media_bytes_sent_total", ())] >= second[("mcu_media_bytes_sent_total", ())]
        assert after[("mcu_media_bytes_received_total", ())] >= second[("mcu_media_bytes_received_total", ())]
    finally:
        for peer in peers:
            await peer.close()
