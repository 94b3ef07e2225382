"""A PacketTrack's packets sent as they are pushed (mcu/rtc/sender.py), to a real aiortc receiver.

What aiortc's own RTP task did must still happen: consecutive sequence numbers,
one timestamp and a marker per frame, the negotiated header extensions, sender
reports that count what was sent, NACKs answered with RTX; and the aiortc
internals this relies on (the sender's private state, a send path that never
suspends) fail here if an upgrade changes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import random
from collections.abc import AsyncIterator

import av
import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpReceiver
from aiortc.codecs.vpx import VpxPayloadDescriptor
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtcpSrPacket, RtpPacket
from conftest import within

from client.encoded import encode_video_clip
from mcu.media import tracks
from mcu.media.encoders import AudioEncoder
from mcu.media.tracks import PacketTrack
from mcu.rtc import datagrams
from mcu.rtc.link import LinkMonitor
from mcu.rtc.sender import RETRANSMIT_AGE, DirectSender, HeaderTemplate, SharedPacker, pack_opus, send_directly
from signaling.ice import rtc_configuration, use_host_addresses

RED = (230, 30, 30)
FRAMES = 30
PTS_STEP = 6000  # 15 fps in 1/90000 s


def clip_packets(payloads: list[bytes]) -> list[av.Packet]:
    packets = []
    for index, payload in enumerate(payloads):
        packet = av.Packet(payload)
        packet.pts, packet.time_base = index * PTS_STEP, fractions.Fraction(1, 90000)
        packet.is_keyframe = index == 0
        packets.append(packet)
    return packets


class Link:
    """A server side that sends one PacketTrack directly, and a client that receives it (and logs its RTP)."""

    def __init__(self, kind: str = "video") -> None:
        self.server = RTCPeerConnection(rtc_configuration([]))
        self.client = RTCPeerConnection(rtc_configuration([]))
        self.track = PacketTrack(kind)
        self.transceiver = self.server.addTransceiver(self.track, direction="sendonly")
        self.monitor = LinkMonitor()
        send_directly(self.transceiver.sender, self.track, self.monitor)
        self.received: list[RtpPacket] = []
        self.remote: list[MediaStreamTrack] = []
        self.client.on("track", self.remote.append)

    @property
    def direct(self) -> DirectSender:
        assert isinstance(self.track._direct, DirectSender)
        return self.track._direct

    @property
    def far_receiver(self) -> RTCRtpReceiver:
        return self.client.getTransceivers()[0].receiver

    async def connect(self) -> None:
        await self.server.setLocalDescription(await self.server.createOffer())
        await self.client.setRemoteDescription(self.server.localDescription)
        await self.client.setLocalDescription(await self.client.createAnswer())
        await self.server.setRemoteDescription(self.client.localDescription)
        # Every RTP packet the client's receiver gets, as it arrives (before RTX is unwrapped).
        receiver = self.far_receiver
        handle = receiver._handle_rtp_packet

        async def logged(packet: RtpPacket, arrival_time_ms: int) -> None:
            self.received.append(packet)
            await handle(packet, arrival_time_ms)

        receiver._handle_rtp_packet = logged  # type: ignore[method-assign]
        await within(10, lambda: self.track._direct is not None)

    def push_clip(self, frames: int) -> list[bytes]:
        payloads = list(encode_video_clip(RED))[:frames]
        for packet in clip_packets(payloads):
            self.track.push(packet)
        return payloads

    def media(self) -> list[RtpPacket]:
        return [p for p in self.received if p.ssrc == self.transceiver.sender._ssrc]

    async def close(self) -> None:
        await asyncio.wait_for(asyncio.gather(self.server.close(), self.client.close()), 10)


@contextlib.asynccontextmanager
async def connected(kind: str = "video") -> AsyncIterator[Link]:
    use_host_addresses(["127.0.0.1"])
    link = Link(kind)
    try:
        await link.connect()
        yield link
    finally:
        await link.close()


@pytest.fixture
async def link() -> AsyncIterator[Link]:
    async with connected() as link:
        yield link


async def test_pushed_frames_go_out_at_once_as_rtp_a_decoder_takes(link: Link) -> None:
    tasks = asyncio.all_tasks()
    link.push_clip(FRAMES)
    # Sent during push(): nothing waits in the track's queue, and no task ran or was left to run.
    assert link.track._queue.qsize() == 0 and link.direct.packets >= FRAMES
    assert asyncio.all_tasks() == tasks
    await within(5, lambda: len(link.media()) == link.direct.packets)

    packets = link.media()
    first = packets[0].sequence_number
    assert [p.sequence_number for p in packets] == [(first + i) % 65536 for i in range(len(packets))]
    stamps = sorted({p.timestamp for p in packets})
    assert len(stamps) == FRAMES and {b - a for a, b in zip(stamps, stamps[1:])} == {PTS_STEP}
    for stamp in stamps:  # the marker on each frame's last packet only
        markers = [p.marker for p in packets if p.timestamp == stamp]
        assert markers == [0] * (len(markers) - 1) + [1]
    mid = link.client.getTransceivers()[0].mid
    assert all(p.extensions.mid == mid and p.extensions.abs_send_time is not None for p in packets)

    # The client decodes them: the clip's picture.
    frame = await asyncio.wait_for(link.remote[0].recv(), 10)
    assert (frame.width, frame.height) == (320, 240)

    # aiortc's sender reports (RTCP SR) count what was sent here.
    async def reported() -> int:
        stats = await link.far_receiver.getStats()
        return next((s.packetsSent for s in stats.values() if s.type == "remote-outbound-rtp"), 0)

    deadline = asyncio.get_running_loop().time() + 5
    while await reported() != link.direct.packets:
        assert asyncio.get_running_loop().time() < deadline, "no sender report with the packets sent"
        await asyncio.sleep(0.1)
    outbound = next(s for s in (await link.transceiver.sender.getStats()).values() if s.type == "outbound-rtp")
    assert outbound.packetsSent == link.direct.packets


async def test_sender_reports_carry_the_time_they_leave_and_their_echoes_are_timed(link: Link) -> None:
    """A stream that stops sending (audio only, a paused tier) still reports once a second: each report
    with the NTP time it leaves and the RTP timestamp carried forward to it (RFC 3550 6.4.1), so that the
    echo of each one gives a round trip. aiortc stamped all of them with the last packet's time."""
    reports: list[RtcpSrPacket] = []
    receiver = link.far_receiver
    handle = receiver._handle_rtcp_packet

    async def logged(packet: object) -> None:
        if isinstance(packet, RtcpSrPacket):
            reports.append(packet)
        await handle(packet)  # type: ignore[arg-type]

    receiver._handle_rtcp_packet = logged  # type: ignore[method-assign]
    link.push_clip(FRAMES)
    last = link.direct._last_timestamp
    await within(8, lambda: len(reports) >= 3)
    infos = [r.sender_info for r in reports]
    assert len({i.ntp_timestamp for i in infos}) == len(infos)
    for earlier, later in zip(infos, infos[1:]):
        seconds = (later.ntp_timestamp - earlier.ntp_timestamp) / 2**32
        assert 0.3 < seconds < 2.0
        assert (later.rtp_timestamp - earlier.rtp_timestamp) % 2**32 == pytest.approx(seconds * 90000, abs=90)
    assert all((i.rtp_timestamp - last) % 2**32 < 10 * 90000 for i in infos)  # carried forward from the last frame
    # The client's receiver reports echo them, and the link times each echo: a round trip on loopback.
    await within(8, lambda: link.monitor.stats.rtt is not None)
    assert link.monitor.stats.rtt is not None and 0 <= link.monitor.stats.rtt < 0.5


async def test_a_nack_is_answered_from_the_history_with_rtx(link: Link) -> None:
    link.push_clip(FRAMES)
    await within(5, lambda: len(link.media()) == link.direct.packets)
    lost = link.media()[-3]
    sender = link.transceiver.sender
    await link.far_receiver._send_rtcp_nack(sender._ssrc, [lost.sequence_number])

    await within(5, lambda: any(p.ssrc == sender._rtx_ssrc for p in link.received))
    rtx = next(p for p in link.received if p.ssrc == sender._rtx_ssrc)
    codecs = {c.payloadType: c for c in link.client.getTransceivers()[0]._codecs}
    assert codecs[rtx.payload_type].name == "rtx" and codecs[rtx.payload_type].parameters["apt"] == lost.payload_type
    assert rtx.payload == lost.sequence_number.to_bytes(2, "big") + lost.payload
    assert (rtx.timestamp, rtx.marker, rtx.extensions.mid) == (lost.timestamp, lost.marker, lost.extensions.mid)

    # A sequence number long gone from the history is not answered.
    count = len(link.received)
    await link.far_receiver._send_rtcp_nack(sender._ssrc, [(lost.sequence_number + 30000) % 65536])
    await asyncio.sleep(0.3)
    assert len(link.received) == count


async def test_an_inactive_section_sends_nothing_and_a_stopped_track_ends_the_rtp_task(link: Link) -> None:
    sender = link.transceiver.sender
    sender._enabled = False  # what aiortc does for a section made inactive
    link.push_clip(5)
    assert link.direct.packets == 0
    sender._enabled = True
    link.push_clip(5)
    assert link.direct.packets >= 5
    link.track.stop()
    await within(5, lambda: link.track._direct is None)
    assert sender._RTCRtpSender__rtp_exited.is_set()


async def test_a_send_that_waits_goes_out_after_its_wait_and_the_others_do_not_wait(
    link: Link, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TURN relay refreshing its channel makes aioice's send wait: that packet goes out late, not never."""
    # Through a relay the packets go aioice's way, one at a time (mcu/rtc/datagrams.py).
    monkeypatch.setattr(datagrams, "_route", lambda dtls: None)
    ice = link.transceiver.sender.transport.transport
    send = ice._send
    refreshed = asyncio.get_running_loop().create_future()
    waited: list[bytes] = []

    async def first_waits(data: bytes) -> None:
        if not waited:
            waited.append(data)
            await refreshed
        await send(data)

    ice._send = first_waits
    link.push_clip(5)
    count = link.direct.packets
    await within(5, lambda: len(link.media()) == count - 1)
    refreshed.set_result(None)
    await within(5, lambda: len(link.media()) == count)
    # The late one is the first of all, and it came last.
    first = min(p.sequence_number for p in link.media())
    assert link.media()[-1].sequence_number == first


async def test_a_pli_reaches_whatever_feeds_the_track(link: Link) -> None:
    requested = asyncio.Event()
    reasons: list[str] = []
    link.track.keyframe_requested = lambda reason: (reasons.append(reason), requested.set())
    await link.far_receiver._send_rtcp_pli(link.transceiver.sender._ssrc)
    await asyncio.wait_for(requested.wait(), 5)
    assert reasons == ["pli"] and link.monitor.stats.plis == 1


async def test_a_pli_while_a_keyframe_is_on_its_way_is_not_passed_on(link: Link) -> None:
    """The keyframe a receiver waits for is still in its queue: asking again adds a burst to that queue."""
    reasons: list[str] = []
    link.track.keyframe_requested = reasons.append
    link.track.keyframe_grace = tracks.KEYFRAME_GRACE  # as the MCU's participants have it
    link.track.request_keyframe("pli")  # nothing sent yet: the track itself waits for the first keyframe
    link.push_clip(FRAMES)
    link.track.request_keyframe("pli")  # that keyframe was just sent
    assert reasons == [] and link.track.plis_ignored == 2
    link.track._keyframe_sent_at -= tracks.KEYFRAME_GRACE
    link.track.request_keyframe("pli")
    link.track.request_keyframe("start")  # the server's own reasons always pass
    assert reasons == ["pli", "start"] and link.track.plis_ignored == 2


async def test_a_nack_for_a_packet_too_old_or_over_budget_is_not_answered(link: Link) -> None:
    link.push_clip(FRAMES)
    await within(5, lambda: len(link.media()) == link.direct.packets)
    sent = [p.sequence_number for p in link.media()]
    history = link.direct._history
    for index, kept in enumerate(history):
        if kept is not None:
            history[index] = (kept[0], kept[1], kept[2] - RETRANSMIT_AGE - 0.1)  # sent long ago
    await link.far_receiver._send_rtcp_nack(link.transceiver.sender._ssrc, sent[:3])
    await within(5, lambda: link.direct.retransmits_refused == 3)
    assert link.direct.retransmits == 0
    link.push_clip(FRAMES)  # fresh ones, but more asked for than the budget allows
    await within(5, lambda: len(link.media()) == link.direct.packets)
    fresh = [p.sequence_number for p in link.media()][len(sent) :]
    link.direct._retransmit_credit = 4.0  # a storm has spent the rest
    await link.far_receiver._send_rtcp_nack(link.transceiver.sender._ssrc, fresh[:9])
    await within(5, lambda: link.direct.retransmits + link.direct.retransmits_refused == 3 + 9)
    assert link.direct.retransmits == 4 and link.direct.retransmits_refused == 3 + 5


async def test_the_peers_of_one_output_get_its_frames_packetized_once(link: Link) -> None:
    async with connected() as other:
        for each in (link, other):
            each.direct._packer = None  # a sender that packetized on its own would fail here
        packer = SharedPacker("vp8")
        for packet in clip_packets(list(encode_video_clip(RED))[:FRAMES]):
            packer.pack(packet)
            link.track.push(packet)
            other.track.push(packet)
        await within(5, lambda: len(link.media()) == link.direct.packets and len(other.media()) == other.direct.packets)
        # The same payloads to both peers (each under its own header), and for each peer one
        # picture ID per frame, running on without a gap.
        assert [p.payload for p in link.media()] == [p.payload for p in other.media()]
        assert len({p.timestamp for p in link.media()}) == FRAMES
        pictures = [VpxPayloadDescriptor.parse(p.payload)[0].picture_id for p in link.media()]
        ids = list(dict.fromkeys(pictures))
        assert len(ids) == FRAMES and all((b - a) % (1 << 15) == 1 for a, b in zip(ids, ids[1:]))
        for each in (link, other):
            frame = await asyncio.wait_for(each.remote[0].recv(), 10)
            assert (frame.width, frame.height) == (320, 240)


async def test_the_peers_of_a_mix_get_its_opus_packets_packed_once() -> None:
    async with connected("audio") as link:
        link.direct._packer = None  # a sender that packed on its own would fail here
        encoder = AudioEncoder()
        tone = (8000 * np.sin(np.arange(960 * 10) * 2 * np.pi * 440 / 48000)).astype(np.int16)
        sent = []
        for index in range(10):
            for packet in pack_opus(encoder.encode(tone[index * 960 : (index + 1) * 960], index * 960)):
                sent.append(bytes(packet))
                link.track.push(packet)
        await within(5, lambda: len(link.media()) == link.direct.packets == 10)
        assert [p.payload for p in link.media()] == sent
        stamps = [p.timestamp for p in link.media()]
        assert [(b - a) % (1 << 32) for a, b in zip(stamps, stamps[1:])] == [960] * 9
        frame = await asyncio.wait_for(link.remote[0].recv(), 10)
        assert frame.sample_rate == 48000


@pytest.mark.parametrize("negotiated", [True, False])
def test_a_stamped_header_template_is_what_aiortc_serializes(negotiated: bool) -> None:
    extensions = HeaderExtensionsMap()
    if negotiated:
        extensions.configure(
            RTCRtpParameters(
                headerExtensions=[
                    RTCRtpHeaderExtensionParameters(id=3, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
                    RTCRtpHeaderExtensionParameters(
                        id=5, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
                    ),
                ]
            )
        )
    template = HeaderTemplate(96, 0x12345678, "1", extensions)
    rng = random.Random(3)
    for _ in range(200):
        timestamp, ntp = rng.getrandbits(32), rng.getrandbits(64)
        packet = RtpPacket(payload_type=96, timestamp=timestamp, ssrc=0x12345678)
        packet.extensions.abs_send_time = (ntp >> 14) & 0xFFFFFF
        packet.extensions.mid = "1"
        assert template.stamp(timestamp, ntp) == packet.serialize(extensions)
