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
SRTP protected and sent together (`mcu.datagrams.send_rtp`: one system call where
the kernel segments them). What aiortc's sender keeps doing, it keeps doing: RTCP sender
reports (from the counters updated here), REMB, stats; PLI/FIR reach the track's
`request_keyframe` (the shared encoder, or the forwarded publisher); NACKs are answered
from this module's own history, with RTX where negotiated. It relies on aiortc
internals (tests/test_aiortc_internals.py covers them).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from dataclasses import dataclass

import av
from aiortc import RTCRtpSender
from aiortc.codecs import get_encoder
from aiortc.codecs.opus import TIME_BASE as OPUS_TIME_BASE
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RTP_HISTORY_SIZE, HeaderExtensionsMap, RtpPacket
from aiortc.utils import random16, random32, uint16_add, uint32_add

from . import wallclock
from .datagrams import send_rtp
from .tracks import PacketTrack

logger = logging.getLogger(__name__)

_SEQUENCE = struct.Struct("!H")
_TIMESTAMP = struct.Struct("!L")
_HEADER = struct.Struct("!BBHLL")


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
        if packet.time_base == OPUS_TIME_BASE:  # Opus's RTP clock (RFC 7587): 48 kHz whatever the rate
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

    def __init__(self, sender: RTCRtpSender, codec: RTCRtpCodecParameters) -> None:
        self._sender = sender
        self._packer = get_encoder(codec)
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
        #: The last RTP packets sent (unprotected) and their header lengths, for NACKs.
        self._history: list[tuple[bytes, int] | None] = [None] * RTP_HISTORY_SIZE
        self.packets = 0

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
        for i, payload in enumerate(payloads):
            if i == last:
                header[1] |= 0x80  # marker: the frame's last packet
            _SEQUENCE.pack_into(header, 2, self._sequence)
            data = bytes(header) + payload
            self._history[self._sequence % RTP_HISTORY_SIZE] = (data, header_length)
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

    async def retransmit(self, sequence_number: int) -> None:
        """A NACKed packet again: wrapped in RTX (RFC 4588) where negotiated, else as it was."""
        kept = self._history[sequence_number % RTP_HISTORY_SIZE]
        if kept is None:
            return
        data, header_length = kept
        if _SEQUENCE.unpack_from(data, 2)[0] != sequence_number:
            return  # overwritten since
        if self._rtx_payload_type is not None:
            first, second, _, timestamp, _ = _HEADER.unpack_from(data)
            header = _HEADER.pack(
                first, (second & 0x80) | self._rtx_payload_type, self._rtx_sequence, timestamp, self._sender._rtx_ssrc
            )
            data = header + data[12:header_length] + _SEQUENCE.pack(sequence_number) + data[header_length:]
            self._rtx_sequence = uint16_add(self._rtx_sequence, 1)
        await self._sender.transport._send_rtp(data)


def send_directly(sender: RTCRtpSender, track: PacketTrack) -> None:
    """Make `sender` send `track`'s packets as they are pushed instead of in aiortc's RTP task.

    Call it before the sender starts (when its transceiver is made). aiortc still
    starts and stops "its" RTP task: the task only attaches a `DirectSender` to the
    track, waits, and detaches it.
    """
    rtp_started: asyncio.Event = sender._RTCRtpSender__rtp_started  # type: ignore[attr-defined]
    rtp_exited: asyncio.Event = sender._RTCRtpSender__rtp_exited  # type: ignore[attr-defined]

    async def run_rtp(codec: RTCRtpCodecParameters) -> None:
        direct = DirectSender(sender, codec)
        sender._retransmit = direct.retransmit  # type: ignore[method-assign]
        rtp_started.set()
        track.attach(direct)
        try:
            await track.ended()
        except asyncio.CancelledError:
            pass
        finally:
            track.detach(direct)
            rtp_exited.set()

    sender._run_rtp = run_rtp  # type: ignore[method-assign]
    # aiortc only honours PLI/FIR on its own encode path: the request goes to whatever feeds the track.
    sender._send_keyframe = track.request_keyframe  # type: ignore[method-assign]
