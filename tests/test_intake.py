"""SRTP datagrams handled in the socket's callback (mcu/rtc/intake.py), between real aiortc peers.

Once hooked, no RTP or RTCP datagram takes aiortc's queue and task, and what
that task did still happens: frames come out of the jitter buffer, the
transport's counters grow, RTCP reaches its handlers; a handler that raises
loses its datagram, not the transport. The aiortc and aioice internals this
relies on fail here if an upgrade changes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterFrame
from conftest import within

from client.encoded import PreEncodedAudioTrack, PreEncodedVideoTrack
from mcu.rtc.intake import receive_directly
from mcu.rtc.receiver import install_encoded_receiver
from signaling.ice import rtc_configuration, use_host_addresses

RED = (230, 30, 30)


class Link:
    """A client sending pre-encoded video and audio to a server side that receives them directly."""

    def __init__(self) -> None:
        self.client = RTCPeerConnection(rtc_configuration([]))
        self.server = RTCPeerConnection(rtc_configuration([]))
        self.client.addTrack(PreEncodedVideoTrack(RED))
        self.client.addTrack(PreEncodedAudioTrack(440.0))
        self.frames = {"video": 0, "audio": 0}
        #: SRTP/SRTCP datagrams that went into aiortc's queue (its task's way in).
        self.queued_srtp = 0

        @self.server.on("track")
        def on_track(track: Any) -> None:
            receiver = next(t.receiver for t in self.server.getTransceivers() if t.receiver.track is track)

            def count(frame: JitterFrame, kind: str = track.kind) -> None:
                self.frames[kind] += 1

            install_encoded_receiver(receiver, count)

    @property
    def dtls(self) -> Any:
        return self.server.getTransceivers()[0].receiver.transport

    async def connect(self) -> None:
        await self.client.setLocalDescription(await self.client.createOffer())
        await self.server.setRemoteDescription(self.client.localDescription)
        await self.server.setLocalDescription(await self.server.createAnswer())
        await self.client.setRemoteDescription(self.server.localDescription)
        await within(10, lambda: self.server.connectionState == "connected")
        connection = self.dtls.transport._connection
        queue_it = connection.data_received

        def counted(data: bytes, component: int) -> None:
            if 127 < data[0] < 192:
                self.queued_srtp += 1
            queue_it(data, component)

        connection.data_received = counted

    async def __aenter__(self) -> Link:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.wait_for(asyncio.gather(self.client.close(), self.server.close()), 10)


@pytest.fixture
async def link() -> AsyncIterator[Link]:
    use_host_addresses(["127.0.0.1"])
    async with Link() as link:
        yield link


async def test_without_the_hook_every_datagram_takes_aiortcs_queue(link: Link) -> None:
    # The counting above sees aiortc's way in: so the next test's zero means something.
    await within(5, lambda: link.queued_srtp >= 20)


async def test_hooked_rtp_and_rtcp_skip_the_queue_and_everything_still_happens(link: Link) -> None:
    receive_directly(link.server)
    receive_directly(link.server)  # idempotent: one hook per socket
    await asyncio.sleep(0.1)  # what was queued before the hook drains first
    queued, frames = link.queued_srtp, dict(link.frames)
    stats = link.dtls._get_stats()
    before = next(s for s in stats.values() if s.type == "transport").packetsReceived

    def grew() -> bool:
        return link.frames["video"] >= frames["video"] + 15 and link.frames["audio"] >= frames["audio"] + 50

    await within(10, grew)
    assert link.queued_srtp == queued

    stats = link.dtls._get_stats()
    assert next(s for s in stats.values() if s.type == "transport").packetsReceived >= before + 65

    # SRTCP too: the client's sender reports reach the server's receivers.
    async def reported() -> bool:
        report = await link.server.getTransceivers()[0].receiver.getStats()
        return any(s.type == "remote-outbound-rtp" and s.packetsSent > 0 for s in report.values())

    deadline = asyncio.get_running_loop().time() + 5
    while not await reported():
        assert asyncio.get_running_loop().time() < deadline, "no sender report reached the receiver"
        await asyncio.sleep(0.1)
    assert link.queued_srtp == queued


async def test_a_handler_that_raises_loses_its_datagram_not_the_transport(link: Link) -> None:
    receive_directly(link.server)
    dtls = link.dtls
    handle = dtls._handle_rtp_data
    failures = 0

    async def fails_twice(data: bytes, arrival_time_ms: int) -> None:
        nonlocal failures
        if failures < 2:
            failures += 1
            raise ValueError("broken")
        await handle(data, arrival_time_ms)

    dtls._handle_rtp_data = fails_twice
    await within(5, lambda: failures == 2)
    video = link.frames["video"]
    await within(10, lambda: link.frames["video"] >= video + 10)
    assert dtls.state == "connected"
