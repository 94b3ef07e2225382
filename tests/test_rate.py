"""The REMB estimator's incoming bitrate counted per packet (mcu/rtc/rate.py), held to aiortc's own counter."""

from __future__ import annotations

import random
from typing import Any

from aiortc.rate import RateCounter
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, unpack_remb_fci
from conftest import within
from test_intake import Link

from mcu.rtc.rate import WindowRate
from signaling.ice import use_host_addresses


def test_the_rates_are_aiortcs_whatever_the_gaps_between_packets():
    rng = random.Random(7)
    for window in (1000, 50):
        theirs, ours = RateCounter(window, 8000), WindowRate(window, 8000)
        now = 10_000
        for _ in range(20_000):
            # Bursts of a frame's packets, frames apart, and now and then a silence longer than the window.
            now += rng.choice((0, 0, 1, 33, 66, 70)) if rng.random() > 0.002 else rng.randint(window, 3 * window)
            if rng.random() < 0.001:
                theirs.reset()
                ours.reset()
            assert ours.rate(now) == theirs.rate(now)
            size = rng.randint(100, 1300)
            theirs.add(size, now)
            ours.add(size, now)
            assert ours.rate(now) == theirs.rate(now)


async def test_a_video_receiver_counts_per_packet_and_still_sends_remb():
    use_host_addresses(["127.0.0.1"])
    link = Link()
    remb: list[int] = []
    sender = next(t.sender for t in link.client.getTransceivers() if t.kind == "video")
    handle = sender._handle_rtcp_packet

    async def logged(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            remb.append(unpack_remb_fci(packet.fci)[0])
        await handle(packet)

    sender._handle_rtcp_packet = logged
    async with link:
        receivers = {t.kind: t.receiver for t in link.server.getTransceivers()}
        estimator = receivers["video"]._RTCRtpReceiver__remote_bitrate_estimator
        assert isinstance(estimator.incoming_bitrate, WindowRate)
        assert receivers["audio"]._RTCRtpReceiver__remote_bitrate_estimator is None
        await within(10, lambda: remb and remb[-1] > 0)
