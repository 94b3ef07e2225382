"""Shared packets sent to a peer as they are pushed: no task, no queue, no RTP objects per packet.

aiortc's `RTCRtpSender` runs one task per track: it awaits the track's next packet,
then builds an `RtpPacket` per RTP packet, reads the clock twice, serializes the
header extensions and awaits four coroutines down to `sendto`. For a room of N
peers that is N task switches per encoded frame and the same Python work per
packet again for each peer: at 16 peers the largest share of the event loop.

`send_directly` replaces that task for a `PacketTrack`: each pushed packet is
packetized at once (a room's composite once for all of its peers, by `SharedPacker`),
its header (extensions included) serialized by aiortc once per sender and only
stamped per frame (`HeaderTemplate`), each RTP packet only numbered; then the frame's packets are
SRTP protected and sent together (`mcu.rtc.datagrams.send_rtp`: one system call where
the kernel segments them). What aiortc's sender keeps doing, it keeps doing: RTCP sender
reports (from the counters updated here), REMB, stats; PLI/FIR reach the track's
`request_keyframe` (the shared encoder, or the forwarded publisher); NACKs are answered
from this module's own history, with RTX where negotiated, within a budget. Every RTCP
packet routed to the sender is also shown to a `LinkMonitor` (mcu/rtc/link.py), and
`DirectSender.probe` pads the stream to try a higher rate (mcu/rooms/adaptation.py). It relies
on aiortc internals (tests/test_aiortc_internals.py covers them), all of them here.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import av
from aiortc import RTCRtpSender
from aiortc.codecs import get_encoder
from aiortc.codecs.opus import TIME_BASE as OPUS_TIME_BASE
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RTP_HISTORY_SIZE, HeaderExtensionsMap, RtcpSenderInfo, RtcpSrPacket, RtpPacket
from aiortc.utils import random16, random32, uint16_add, uint32_add

from mcu.rtc import wallclock
from mcu.rtc.datagrams import send_rtp
from mcu.rtc.link import LinkMonitor

logger = logging.getLogger(__name__)

_SEQUENCE = struct.Struct("!H")
_TIMESTAMP = struct.Struct("!L")
_HEADER = struct.Struct("!BBHLL")

#: A NACKed packet older than this is not sent again: its frame is long gone, the
#: receiver's jitter buffer asks for a keyframe instead (and gets one of its own tier).
RETRANSMIT_AGE = 1.0
#: Retransmissions earn this much credit per packet sent, up to RETRANSMIT_BURST: a NACK
#: storm costs the link at most half as much again as the stream itself.
RETRANSMIT_SHARE = 0.5
RETRANSMIT_BURST = 100.0
#: How far the sequence numbers jump at a resync: past the capacity of aiortc's video jitter
#: buffer (512 packets) twice over, so that it drops every packet it still waits for and starts afresh.
RESYNC_GAP = 1024
#: Probe padding: RTX packets without payload (RFC 4588), this many padding bytes each
#: (the most one RTP packet can say), sent every PROBE_TICK seconds.
PADDING = 255
PROBE_TICK = 0.01
#: After a probe's sender report, aiortc's own reports are held back this long (the longest a
#: receiver waits between its reports, and then some), so that the receiver's next report
#: echoes the probe's (a receiver echoes only the last it got).
ECHO_HOLD = 1.8


class DirectTrack(Protocol):
    """What a sender needs of the track it sends (mcu/media/tracks.py `PacketTrack`): packets pushed to
    the `DirectSender` attached to it, and keyframe requests routed back to whatever feeds it."""

    @property
    def direct(self) -> object | None: ...

    def attach(self, direct: DirectSender) -> None: ...

    def detach(self, direct: DirectSender) -> None: ...

    async def ended(self) -> None: ...

    def request_keyframe(self, reason: str) -> None: ...


@dataclass(frozen=True)
class Packed:
    """An encoded frame split into RTP payloads, once for all the peers of its output."""

    payloads: list[bytes]
    #: The payloads' RTP timestamp before each sender's random offset.
    timestamp: int


class SharedPacker:
    """Splits one encoder output's frames into RTP payloads once, for every peer it goes to.

    The payloads are the same bits for every peer: only the RTP header differs.
    One per output, not per codec: VP8's picture ID must run on without gaps for
    each receiver, and every peer of an output receives each of its frames.
    """

    def __init__(self, codec_name: str) -> None:
        self._packer = get_encoder(RTCRtpCodecParameters(mimeType=f"video/{codec_name.upper()}", clockRate=90000))

    def pack(self, packet: av.Packet) -> None:
        """Attach the packet's payloads to it (as its `opaque`), for `DirectSender.push`."""
        try:
            packet.opaque = Packed(*self._packer.pack(packet))
        except (ValueError, IndexError):
            pass  # each sender tries again, and says why it could not


def pack_opus(packets: list[av.Packet]) -> list[av.Packet]:
    """Attach each Opus packet's RTP payload to it, once for every peer it goes to (see `SharedPacker`)."""
    for packet in packets:
        # Opus's RTP clock (RFC 7587): 48 kHz whatever the rate; an encoder's packets all have a pts.
        if packet.time_base == OPUS_TIME_BASE and packet.pts is not None:
            packet.opaque = Packed([bytes(packet)], packet.pts)
    return packets


class HeaderTemplate:
    """One sender's RTP header, extensions included, serialized by aiortc once and stamped per frame.

    Between the frames of a sender only the timestamp and the abs-send-time change
    (and, per packet, the sequence number and the marker, set by the caller): a copy
    and two stamps instead of an `RtpPacket` and aiortc's serialization per frame.
    """

    def __init__(self, payload_type: int, ssrc: int, mid: str | None, extensions: HeaderExtensionsMap) -> None:
        def serialized(abs_send_time: int) -> bytes:
            packet = RtpPacket(payload_type=payload_type, ssrc=ssrc)
            packet.extensions.abs_send_time = abs_send_time
            packet.extensions.mid = mid
            return packet.serialize(extensions)

        self._header = serialized(0)
        # Where the 3 bytes of abs-send-time lie, if it was negotiated: the bytes that differ.
        changed = [i for i, (a, b) in enumerate(zip(self._header, serialized(0xFFFFFF))) if a != b]
        assert len(changed) in (0, 3), changed
        self._abs_send_time = changed[0] if changed else None

    def stamp(self, timestamp: int, ntp: int) -> bytearray:
        """The header of a frame sent at NTP time `ntp`, marker clear, sequence number to be set."""
        header = bytearray(self._header)
        _TIMESTAMP.pack_into(header, 4, timestamp)
        at = self._abs_send_time
        if at is not None:
            header[at : at + 3] = ((ntp >> 14) & 0xFFFFFF).to_bytes(3, "big")
        return header


class DirectSender:
    """Packetizes and sends one track's packets for one `RTCRtpSender`, from `PacketTrack.push`."""

    def __init__(
        self,
        sender: RTCRtpSender,
        codec: RTCRtpCodecParameters,
        send_rtcp: Callable[[list], Awaitable[None]] | None = None,
        link: LinkMonitor | None = None,
    ) -> None:
        self._sender = sender
        #: Told of each resync's sequence jump, so that the report covering it is not read as loss.
        self._link = link
        self._packer = get_encoder(codec)
        assert codec.payloadType is not None  # a negotiated codec has its number
        self._rtx_payload_type: int | None = sender._RTCRtpSender__rtx_payload_type  # type: ignore[attr-defined]
        self._header = HeaderTemplate(
            codec.payloadType,
            sender._ssrc,
            sender._RTCRtpSender__mid,  # type: ignore[attr-defined]
            sender._RTCRtpSender__rtp_header_extensions_map,  # type: ignore[attr-defined]
        )
        # Random starts, as aiortc's own: below 2^15 so that SRTP's rollover counter starts at 0.
        self._sequence = random16() % 32768
        self._rtx_sequence = random16() % 32768
        self._timestamp_origin = random32()
        #: The last RTP packets sent (unprotected), their header lengths and when, for NACKs.
        self._history: list[tuple[bytes, int, float] | None] = [None] * RTP_HISTORY_SIZE
        self._retransmit_credit = RETRANSMIT_BURST
        self._last_timestamp = self._timestamp_origin
        #: The NTP time of the last frame sent (None before the first), and the codec's RTP clock.
        self._last_ntp: int | None = None
        self._clock = codec.clockRate
        self._padding_header = (
            None
            if self._rtx_payload_type is None
            else HeaderTemplate(
                self._rtx_payload_type,
                sender._rtx_ssrc,
                sender._RTCRtpSender__mid,  # type: ignore[attr-defined]
                sender._RTCRtpSender__rtp_header_extensions_map,  # type: ignore[attr-defined]
            )
        )
        self._probe: asyncio.TimerHandle | None = None
        #: aiortc's way of sending RTCP, as it was before `send_directly` held back its reports.
        self._send_rtcp = send_rtcp or sender._send_rtcp
        #: Until when (time.monotonic()) aiortc's sender reports wait: a probe's is awaiting its echo.
        self.hold_reports_until = 0.0
        self.packets = 0
        #: Payload bytes sent: media, and all (retransmissions and padding too); retransmissions and
        #: those refused, probe packets.
        self.octets = 0
        self.sent_octets = 0
        self.retransmits = 0
        self.retransmits_refused = 0
        self.padding_packets = 0
        self.resyncs = 0

    def push(self, packet: av.Packet) -> None:
        """Send one encoded frame now: one or more RTP packets."""
        sender = self._sender
        if not sender._enabled:
            return  # the section is inactive
        packed = packet.opaque
        try:
            payloads, timestamp = (
                (packed.payloads, packed.timestamp) if isinstance(packed, Packed) else self._packer.pack(packet)
            )
        except (ValueError, IndexError) as exc:
            # A frame its packetizer cannot split (a forwarded one, say): that frame is lost, nothing else.
            logger.warning("a %s packet could not be packetized: %s", self._sender.kind, exc)
            return
        if not payloads:
            return
        timestamp = uint32_add(self._timestamp_origin, timestamp)
        ntp = wallclock.current_ntp_time()
        header = self._header.stamp(timestamp, ntp)
        header_length = len(header)
        last = len(payloads) - 1
        octets = 0
        packets = []
        sent_at = time.monotonic()
        for i, payload in enumerate(payloads):
            if i == last:
                header[1] |= 0x80  # marker: the frame's last packet
            _SEQUENCE.pack_into(header, 2, self._sequence)
            data = bytes(header) + payload
            self._history[self._sequence % RTP_HISTORY_SIZE] = (data, header_length, sent_at)
            packets.append(data)
            self._sequence = uint16_add(self._sequence, 1)
            octets += len(payload)
        try:
            send_rtp(sender.transport, packets)
        except ConnectionError:
            pass  # not yet (or no longer) connected: the frame is lost, as on the wire
        # What aiortc's RTCP sender reports are made of.
        sender._RTCRtpSender__ntp_timestamp = ntp  # type: ignore[attr-defined]
        sender._RTCRtpSender__rtp_timestamp = timestamp  # type: ignore[attr-defined]
        sender._RTCRtpSender__octet_count += octets  # type: ignore[attr-defined]
        sender._RTCRtpSender__packet_count += len(payloads)  # type: ignore[attr-defined]
        self.packets += len(payloads)
        self.octets += octets
        self.sent_octets += octets
        self._last_timestamp = timestamp
        self._last_ntp = ntp
        self._retransmit_credit = min(self._retransmit_credit + RETRANSMIT_SHARE * len(payloads), RETRANSMIT_BURST)

    async def retransmit(self, sequence_number: int) -> None:
        """A NACKed packet again, if recent and within budget: wrapped in RTX (RFC 4588) where negotiated."""
        kept = self._history[sequence_number % RTP_HISTORY_SIZE]
        if kept is None:
            return
        data, header_length, sent_at = kept
        if _SEQUENCE.unpack_from(data, 2)[0] != sequence_number:
            return  # overwritten since
        if self._retransmit_credit < 1 or time.monotonic() - sent_at > RETRANSMIT_AGE:
            self.retransmits_refused += 1
            return
        self._retransmit_credit -= 1
        self.retransmits += 1
        if self._rtx_payload_type is not None:
            first, second, _, timestamp, _ = _HEADER.unpack_from(data)
            header = _HEADER.pack(
                first, (second & 0x80) | self._rtx_payload_type, self._rtx_sequence, timestamp, self._sender._rtx_ssrc
            )
            data = header + data[12:header_length] + _SEQUENCE.pack(sequence_number) + data[header_length:]
            self._rtx_sequence = uint16_add(self._rtx_sequence, 1)
        self.sent_octets += len(data) - header_length
        await self._sender.transport._send_rtp(data)

    def resync(self) -> None:
        """Skip RESYNC_GAP sequence numbers and forget what was sent: the next frame (a keyframe) starts afresh.

        After a congested link lost packets whose retransmissions were lost too, a receiver whose
        jitter buffer orders by sequence number (aiortc's) waits for them until 512 more packets
        have come: 11 s at 400 kbit/s. Past the gap it drops them at once; libwebrtc counts them
        lost, finds its NACK list full and asks for a keyframe (of its new tier: nothing is
        answered from the cleared history). The receiver's next report counts the gap as lost:
        the controller ignores reports for a while after a switch (mcu/rooms/adaptation.py SETTLE_SECONDS),
        and the link believes none until one is about the new stream alone (mcu/rtc/link.py `skipped`):
        under load that report came 3.2 s after a move down, past the settling, and its 94 %
        "lost" moved a 750 kbit/s peer from `low` to audio only.
        """
        if self._link is not None:
            self._link.skipped(self._sequence, RESYNC_GAP)
        self._sequence = uint16_add(self._sequence, RESYNC_GAP)
        self._history = [None] * RTP_HISTORY_SIZE
        self.resyncs += 1

    def probe(self, bitrate: float, seconds: float, link: LinkMonitor) -> bool:
        """Add `bitrate` bit/s of padding for `seconds`, then a sender report whose echo `link` awaits.

        Padding travels as RTX packets without payload (the decoder sees nothing), stamped
        with the abs-send-time of their sending. The report leaves behind the burst: on a
        link that cannot carry the extra rate it waits in the bottleneck's queue, and the
        round-trip time of its echo (the receiver report's LSR/DLSR) shows that queue.
        False where no RTX was negotiated to carry padding.
        """
        if self._padding_header is None or not self._sender._enabled:
            return False
        self.stop_probe()
        loop = asyncio.get_running_loop()
        start = loop.time()
        self._pad(loop, start, start + seconds, bitrate / 8 / PADDING, 0.0, link)
        return True

    def _pad(
        self,
        loop: asyncio.AbstractEventLoop,
        last: float,
        until: float,
        per_second: float,
        owed: float,
        link: LinkMonitor,
    ) -> None:
        """Send the padding due since `last` (`per_second` packets a second, the loop's lateness
        made up), again in PROBE_TICK until `until`; then the probe's report."""
        self._probe = None
        now = loop.time()
        if now >= until or self._padding_header is None:
            self._report(link)
            return
        owed += per_second * (now - last)
        count = int(owed)
        owed -= count
        if count:
            header = self._padding_header.stamp(self._last_timestamp, wallclock.current_ntp_time())
            header[0] |= 0x20  # padding: the payload is PADDING bytes of it, the last saying how many
            body = bytes(PADDING - 1) + bytes([PADDING])
            packets = []
            for _ in range(count):
                _SEQUENCE.pack_into(header, 2, self._rtx_sequence)
                self._rtx_sequence = uint16_add(self._rtx_sequence, 1)
                packets.append(bytes(header) + body)
            try:
                send_rtp(self._sender.transport, packets)
            except ConnectionError:
                return
            self.padding_packets += count
            self.sent_octets += count * PADDING
        self._probe = loop.call_later(PROBE_TICK, self._pad, loop, now, until, per_second, owed, link)

    def _report(self, link: LinkMonitor) -> None:
        """A sender report now (as aiortc's own, which it does not replace), its echo awaited by `link`."""
        sender = self._sender
        ntp = wallclock.current_ntp_time()
        report = RtcpSrPacket(
            ssrc=sender._ssrc,
            sender_info=RtcpSenderInfo(
                ntp_timestamp=ntp,
                rtp_timestamp=self._last_timestamp,
                packet_count=self.packets & 0xFFFFFFFF,
                octet_count=self.octets & 0xFFFFFFFF,
            ),
        )
        link.expect_echo((ntp >> 16) & 0xFFFFFFFF, time.time())
        self.hold_reports_until = time.monotonic() + ECHO_HOLD
        asyncio.ensure_future(self._send_rtcp([report]))

    def date_reports(self, packets: list) -> None:
        """Stamp aiortc's periodic sender reports with the time they leave (RFC 3550 6.4.1), the RTP
        timestamp carried forward to it, and tell the link each one's LSR.

        aiortc stamps a report with the NTP time of the last packet sent: while a stream sends nothing
        (audio only, a paused tier) every report had the same LSR, and the round trip of their
        echoes could not be told apart, so a probe from audio only could not see a standing queue.
        """
        sender = self._sender
        for packet in packets:
            if not isinstance(packet, RtcpSrPacket) or self._last_ntp is None:
                continue
            ntp = wallclock.current_ntp_time()
            info = packet.sender_info
            info.ntp_timestamp = ntp
            info.rtp_timestamp = uint32_add(self._last_timestamp, round((ntp - self._last_ntp) * self._clock / 2**32))
            lsr, sent_at = (ntp >> 16) & 0xFFFFFFFF, time.time()
            # aiortc's own round-trip time (its stats) reads the echo of the report as sent.
            sender._RTCRtpSender__lsr = lsr  # type: ignore[attr-defined]
            sender._RTCRtpSender__lsr_time = sent_at  # type: ignore[attr-defined]
            if self._link is not None:
                self._link.sent_report(lsr, sent_at)

    def stop_probe(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None


def send_directly(sender: RTCRtpSender, track: DirectTrack, link: LinkMonitor | None = None) -> None:
    """Make `sender` send `track`'s packets as they are pushed instead of in aiortc's RTP task.

    Call it before the sender starts (when its transceiver is made). aiortc still
    starts and stops "its" RTP task: the task only attaches a `DirectSender` to the
    track, waits, and detaches it. With `link`, every RTCP packet routed to the sender
    is shown to it first.
    """
    rtp_started: asyncio.Event = sender._RTCRtpSender__rtp_started  # type: ignore[attr-defined]
    rtp_exited: asyncio.Event = sender._RTCRtpSender__rtp_exited  # type: ignore[attr-defined]

    send_rtcp = sender._send_rtcp

    async def run_rtp(codec: RTCRtpCodecParameters) -> None:
        direct = DirectSender(sender, codec, send_rtcp, link)
        sender._retransmit = direct.retransmit  # type: ignore[method-assign]
        rtp_started.set()
        track.attach(direct)
        try:
            await track.ended()
        except asyncio.CancelledError:
            pass
        finally:
            direct.stop_probe()
            track.detach(direct)
            rtp_exited.set()

    sender._run_rtp = run_rtp  # type: ignore[method-assign]

    async def send_periodic_rtcp(packets: list) -> None:
        direct = track.direct
        if isinstance(direct, DirectSender):
            if time.monotonic() < direct.hold_reports_until:
                return  # a probe's report awaits its echo: this periodic one (and its SDES) is skipped
            direct.date_reports(packets)
        await send_rtcp(packets)

    sender._send_rtcp = send_periodic_rtcp  # type: ignore[method-assign]
    # aiortc only honours PLI/FIR on its own encode path: the request goes to whatever feeds the track.
    sender._send_keyframe = lambda: track.request_keyframe("pli")  # type: ignore[method-assign]
    if link is not None:
        _watch_rtcp(sender, track, link)


def _watch_rtcp(sender: RTCRtpSender, track: DirectTrack, link: LinkMonitor) -> None:
    """Show `link` each RTCP packet routed to `sender` before aiortc handles it."""
    handle = sender._handle_rtcp_packet

    async def handle_rtcp_packet(packet: object) -> None:
        direct = track.direct
        octets = direct.sent_octets if isinstance(direct, DirectSender) else 0
        try:
            link.observe(packet, sender._ssrc, sender._rtx_ssrc, octets, time.monotonic())
        except Exception:
            # Raised into aiortc's RTCP handling it would end the transport: this packet's feedback is lost instead.
            logger.exception("RTCP feedback could not be read")
        await handle(packet)  # type: ignore[arg-type]

    sender._handle_rtcp_packet = handle_rtcp_packet  # type: ignore[method-assign]
