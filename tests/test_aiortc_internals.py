"""The aiortc internals that the MCU and its load client rely on, one test each.

An aiortc upgrade that changes one of them must fail here, not in a benchmark:
- a track whose `recv()` returns `av.Packet` is only packetized, and one packet
  object may go to several senders (the shared encoder's fan-out);
- `RTCRtpSender._send_keyframe` is what an incoming PLI calls (keyframe routing);
- `RTCRtpReceiver`'s private decoder queue can be replaced before `receive()`
  (receiving without decoding, `mcu.rtc.receiver.install_encoded_receiver`), and what
  it is given handed to a callback at once;
- its private jitter buffer can be replaced, for audio by one that holds a single frame
  (aiortc's holds four, 60 ms more of latency) or by one that hands each packet on as it comes
  (the MCU's playout buffer does the rest), and wrapped to keep each audio packet's RFC 6464
  level (`packet.extensions.audio_level`) on the frame (active speaker), and a
  sender of packets can be made to send that level (`RTCEncodedFrame.audio_level`);
- a receiver can send a PLI for the media SSRC it receives (the SFU forwards keyframe requests upstream);
- every datagram of a peer connection leaves through `transport.sendto` of one of the aioice
  protocols in its ICE transport's private `_connection._protocols`, there once gathering is done,
  and arrives through that protocol's `datagram_received` (mcu/rtc/ice.py finds them,
  client/impaired_ice.py wraps both).
- a sender's `_handle_rtcp_packet` sees the RTCP routed to it (link feedback, mcu/rtc/link.py); its
  private `__lsr` and `__lsr_time`, which aiortc's own round-trip time reads, are set to each periodic
  sender report as we date it when it leaves (mcu/rtc/sender.py `date_reports`); its `_send_rtcp`
  sends a report of ours and can hold its periodic ones; RTX packets
  without payload reach the far REMB estimator only (probes); aiortc's video jitter buffer waits for
  a lost packet until a sequence gap makes it drop it (the resync of a move down).
- the DTLS transport's private `_role`, set to "server" between an actpass offer and the answer, makes
  the answer say `a=setup:passive` and the transport take the server's side (mcu/rtc/dtls.py).
"""

from __future__ import annotations

import asyncio
import fractions
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import av
import pytest
from aiortc import (
    MediaStreamTrack,
    RTCCertificate,
    RTCDtlsTransport,
    RTCIceGatherer,
    RTCIceTransport,
    RTCPeerConnection,
    RTCRtpReceiver,
)
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpreceiver import RemoteStreamTrack
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, RtpPacket, pack_remb_fci
from conftest import within
from test_sender import connected

from client.encoded import PreEncodedAudioTrack, PreEncodedVideoTrack, encode_video_clip
from client.sources import ToneTrack
from mcu.rtc.dtls import answer_as_dtls_server
from mcu.rtc.jitter import PacedNacks, VideoJitterBuffer
from mcu.rtc.receiver import (
    _EncodedHandoff,
    install_encoded_receiver,
    install_video_jitter_buffer,
    send_pli,
    video_losses,
)
from mcu.rtc.sender import PADDING
from mcu.rtc.traffic import transport_bytes
from signaling.ice import rtc_configuration, use_host_addresses

RED = (230, 30, 30)
DECODER_THREADS = ("video-decoder", "audio-decoder")


class FanOutTrack(MediaStreamTrack):
    """Yields whatever packet objects the test pushes, like the MCU's PacketTrack."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.queue: asyncio.Queue[av.Packet] = asyncio.Queue()

    async def recv(self) -> av.Packet:
        return await self.queue.get()


@pytest.fixture
async def pcs() -> AsyncIterator[tuple[RTCPeerConnection, RTCPeerConnection]]:
    """A sending and a receiving peer connection, closed (and their threads joined) after the test."""
    use_host_addresses(["127.0.0.1"])
    sender, receiver = RTCPeerConnection(rtc_configuration([])), RTCPeerConnection(rtc_configuration([]))
    try:
        yield sender, receiver
    finally:
        await asyncio.wait_for(asyncio.gather(sender.close(), receiver.close()), 10)


async def connect(offerer: RTCPeerConnection, answerer: RTCPeerConnection) -> None:
    """Offer/answer without trickle (aiortc gathers before setLocalDescription returns)."""
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(answerer.localDescription)


async def test_packet_track_is_packetized_not_encoded_and_one_packet_feeds_two_senders(pcs, monkeypatch) -> None:
    sending, receiving = pcs
    encodes = 0
    original_encode = Vp8Encoder.encode

    def counting_encode(self, *args, **kwargs):
        nonlocal encodes
        encodes += 1
        return original_encode(self, *args, **kwargs)

    monkeypatch.setattr(Vp8Encoder, "encode", counting_encode)
    tracks = [FanOutTrack(), FanOutTrack()]
    for track in tracks:
        sending.addTrack(track)
    received: list[MediaStreamTrack] = []
    receiving.on("track", received.append)
    await connect(sending, receiving)

    async def feed() -> None:
        for index, payload in enumerate(encode_video_clip(RED) * 10):
            packet = av.Packet(payload)
            packet.pts, packet.time_base = index * 6000, fractions.Fraction(1, 90000)
            for track in tracks:
                track.queue.put_nowait(packet)  # the same object to both senders
            await asyncio.sleep(1 / 15)

    feeder = asyncio.ensure_future(feed())
    try:
        assert len(received) == 2
        for track in received:
            for _ in range(5):
                frame = await asyncio.wait_for(track.recv(), 10)
                assert isinstance(frame, av.VideoFrame)
                assert (frame.width, frame.height) == (320, 240)
    finally:
        feeder.cancel()
    assert encodes == 0


async def test_pli_from_the_far_receiver_calls_the_senders_send_keyframe(pcs) -> None:
    sending, receiving = pcs
    transceiver = sending.addTransceiver(PreEncodedVideoTrack(RED), direction="sendonly")
    requests = asyncio.Event()
    transceiver.sender._send_keyframe = requests.set
    await connect(sending, receiving)
    await within(10, lambda: sending.connectionState == "connected")

    far_receiver = receiving.getTransceivers()[0].receiver
    await far_receiver._send_rtcp_pli(transceiver.sender._ssrc)
    await asyncio.wait_for(requests.wait(), 5)


def looks_like_vp8(data: bytes) -> bool:
    """A VP8 frame tag whose first partition fits (RFC 6386 section 9.1)."""
    if len(data) < 3:
        return False
    first_partition = (data[0] | data[1] << 8 | data[2] << 16) >> 5
    keyframe = not data[0] & 1
    return first_partition < len(data) and (not keyframe or data[3:6] == b"\x9d\x01\x2a")


async def test_encoded_receiver_yields_frames_undecoded_and_its_thread_exits_on_close(pcs) -> None:
    sending, receiving = pcs
    sending.addTransceiver(PreEncodedVideoTrack(RED), direction="sendonly")
    sending.addTransceiver(PreEncodedAudioTrack(440.0), direction="sendonly")
    received: dict[str, MediaStreamTrack] = {}

    @receiving.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        receiver = next(t.receiver for t in receiving.getTransceivers() if t.receiver.track is track)
        install_encoded_receiver(receiver)
        received[track.kind] = track

    await connect(sending, receiving)
    assert set(received) == {"video", "audio"}
    video = [await asyncio.wait_for(received["video"].recv(), 10) for _ in range(20)]
    audio = [await asyncio.wait_for(received["audio"].recv(), 10) for _ in range(20)]
    assert all(isinstance(frame, JitterFrame) for frame in video + audio)
    assert all(looks_like_vp8(frame.data) for frame in video)
    assert any(not frame.data[0] & 1 for frame in video), "no keyframe among the first frames"
    assert all(frame.data for frame in audio)
    assert any(t.name in DECODER_THREADS for t in threading.enumerate())

    await asyncio.wait_for(receiving.close(), 10)
    assert not [t.name for t in threading.enumerate() if t.name in DECODER_THREADS]
    for track in received.values():
        # The decoder thread ended the track on its way out; frames still queued come first.
        with pytest.raises(MediaStreamError):
            while True:
                await asyncio.wait_for(track.recv(), 5)


async def test_a_decoding_video_receiver_takes_our_jitter_buffer_and_still_decodes(pcs) -> None:
    """The Python client's receiver: aiortc's private `__jitter_buffer` and `__nack_generator` replaced by
    mcu/rtc/jitter.py's, whose `add` aiortc's own decoding path calls as it called its own."""
    sending, receiving = pcs
    sending.addTransceiver(PreEncodedVideoTrack(RED), direction="sendonly")
    received: list[MediaStreamTrack] = []

    @receiving.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        install_video_jitter_buffer(receiving.getTransceivers()[0].receiver)
        received.append(track)

    await connect(sending, receiving)
    receiver = receiving.getTransceivers()[0].receiver
    assert isinstance(receiver._RTCRtpReceiver__jitter_buffer, VideoJitterBuffer)
    assert isinstance(receiver._RTCRtpReceiver__nack_generator, PacedNacks)
    frames = [await asyncio.wait_for(received[0].recv(), 10) for _ in range(10)]
    assert all(isinstance(frame, av.VideoFrame) for frame in frames)
    assert frames[-1].to_ndarray(format="rgb24")[8, 8].tolist() == pytest.approx(list(RED), abs=25)


async def test_an_encoded_receiver_can_hand_each_frame_to_a_callback_and_its_track_then_only_ends(pcs) -> None:
    """The server's way: no task wakes up per frame; a callback that raises loses its frame, not the transport."""
    sending, receiving = pcs
    sending.addTransceiver(PreEncodedVideoTrack(RED), direction="sendonly")
    frames: list[JitterFrame] = []
    received: list[MediaStreamTrack] = []

    def take(frame: JitterFrame) -> None:
        frames.append(frame)
        if len(frames) == 1:
            raise ValueError("a consumer's bug")

    @receiving.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        install_encoded_receiver(receiving.getTransceivers()[0].receiver, take)
        received.append(track)

    await connect(sending, receiving)
    await within(10, lambda: len(frames) >= 20)
    assert all(isinstance(frame, JitterFrame) and looks_like_vp8(frame.data) for frame in frames)
    assert all(frame.codec_name == "vp8" for frame in frames)
    assert receiving.connectionState == "connected"
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(received[0].recv(), 0.5)  # nothing is queued for it

    await asyncio.wait_for(receiving.close(), 10)
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(received[0].recv(), 5)


async def test_encoded_audio_frames_carry_the_rfc6464_level_the_sender_measured(pcs) -> None:
    """aiortc sends `ssrc-audio-level` when it encodes; the receiver's jitter buffer can be wrapped to keep it."""
    sending, receiving = pcs
    sending.addTransceiver(ToneTrack(440.0, 0.1), direction="sendonly")
    received: list[MediaStreamTrack] = []

    @receiving.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        install_encoded_receiver(receiving.getTransceivers()[0].receiver)
        received.append(track)

    await connect(sending, receiving)
    frames = [await asyncio.wait_for(received[0].recv(), 10) for _ in range(30)]
    # A sine of amplitude 0.1 is 0.1/sqrt(2) RMS: -23 dBov.
    assert [frame.audio_level for frame in frames[5:]] == [-23] * 25


async def test_an_encoded_audio_receiver_lets_a_frame_go_as_soon_as_the_next_one_starts() -> None:
    """aiortc's audio jitter buffer lets frame n go when packet n + 4 comes; the MCU mixes it one packet later."""
    transport = RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()])
    receiver = RTCRtpReceiver("audio", transport)
    receiver._track = RemoteStreamTrack(kind="audio")
    install_encoded_receiver(receiver)
    buffer = receiver._RTCRtpReceiver__jitter_buffer
    released = []
    for number in range(40):
        packet = RtpPacket(payload_type=111, sequence_number=number, timestamp=number * 960)
        packet._data = bytes([number]) * 40  # what the receiver sets once it has depacketized it
        _, frame = buffer.add(packet)
        if frame is not None:
            released.append((number, frame.timestamp // 960, frame.data))
    # Each frame comes out with the packet after it, in order, none lost, its payload whole.
    assert released == [(n, n - 1, bytes([n - 1]) * 40) for n in range(1, 40)]
    await transport.stop()


async def test_audio_packets_can_be_handed_on_as_they_come_when_the_consumer_reorders() -> None:
    """aiortc's jitter buffer lets nothing go after a lost packet until 16 more have come; the MCU's
    receivers (audio_in_order=False) hand each packet on at once, with its timestamp and level."""
    transport = RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()])
    receivers = [RTCRtpReceiver("audio", transport) for _ in range(2)]
    for receiver, in_order in zip(receivers, (True, False)):
        receiver._track = RemoteStreamTrack(kind="audio")
        install_encoded_receiver(receiver, lambda frame: None, audio_in_order=in_order)
    released: list[list[tuple[int, int, int | None]]] = [[], []]
    for number in [0, 1, 2, 4, 3, 6, 7, 8, 9, 10]:  # 3 late, 5 lost
        for receiver, out in zip(receivers, released):
            packet = RtpPacket(payload_type=111, sequence_number=number, timestamp=number * 960)
            packet._data = bytes([number]) * 40
            packet.extensions.audio_level = (True, 30)
            _, frame = receiver._RTCRtpReceiver__jitter_buffer.add(packet)
            if frame is not None:
                out.append((number, frame.timestamp // 960, frame.audio_level))
    assert [frame for _, frame, _ in released[0]] == [0, 1, 2, 3]  # stuck at the lost packet
    assert released[1] == [(n, n, -30) for n in [0, 1, 2, 4, 3, 6, 7, 8, 9, 10]]
    await transport.stop()


async def test_an_answer_can_take_the_dtls_servers_side(pcs) -> None:
    """mcu/rtc/dtls.py sets the DTLS transport's private role before the answer: passive in the SDP, and the
    handshake still completes with the offerer as the client."""
    sending, receiving = pcs
    sending.addTransceiver(ToneTrack(440.0, 0.1), direction="sendonly")
    await sending.setLocalDescription(await sending.createOffer())
    assert "a=setup:actpass" in sending.localDescription.sdp
    await receiving.setRemoteDescription(sending.localDescription)
    answer_as_dtls_server(receiving)
    await receiving.setLocalDescription(await receiving.createAnswer())
    assert "a=setup:passive" in receiving.localDescription.sdp
    await sending.setRemoteDescription(receiving.localDescription)
    await within(10, lambda: receiving.connectionState == "connected")
    roles = [pc.getTransceivers()[0].receiver.transport._role for pc in (sending, receiving)]
    assert roles == ["client", "server"]


async def test_dtls_transport_byte_counters_match_its_stats(pcs) -> None:
    """mcu/rtc/traffic.py reads the DTLS transport's private byte counters; getStats() reports the same ones."""
    sending, receiving = pcs
    sending.addTransceiver(ToneTrack(440.0, 0.1), direction="sendonly")
    await connect(sending, receiving)
    await within(10, lambda: transport_bytes(receiving)[1] > 5_000)
    await asyncio.sleep(0.1)
    sent, received = transport_bytes(sending)
    stats = [s for s in (await sending.getStats()).values() if s.type == "transport"]
    assert sent > 5_000 and received > 0
    assert sent <= sum(s.bytesSent for s in stats) and received <= sum(s.bytesReceived for s in stats)
    assert sum(s.bytesSent for s in stats) - sent < 5_000  # the same counter, read a moment later


async def test_a_pre_encoded_audio_sender_can_send_the_rfc6464_level(pcs) -> None:
    """aiortc sends no level for packets it did not encode; setting it on the encoded frame sends the header."""
    sending, receiving = pcs
    track = PreEncodedAudioTrack(440.0, amplitude=0.1)
    track.attach_sender(sending.addTransceiver(track, direction="sendonly").sender)
    received: list[MediaStreamTrack] = []

    @receiving.on("track")
    def on_track(remote: MediaStreamTrack) -> None:
        install_encoded_receiver(receiving.getTransceivers()[0].receiver)
        received.append(remote)

    await connect(sending, receiving)
    frames = [await asyncio.wait_for(received[0].recv(), 10) for _ in range(30)]
    assert [frame.audio_level for frame in frames[5:]] == [-23] * 25


async def test_an_encoded_receiver_can_ask_its_sender_for_a_keyframe(pcs) -> None:
    """mcu/rtc/receiver.py `send_pli`: the receiver's private `_send_rtcp_pli`, for the media SSRC among those it saw
    (its private `__active_ssrc`, less `__rtx_ssrc`), reaches the far sender's `_send_keyframe`."""
    sending, receiving = pcs
    transceiver = sending.addTransceiver(PreEncodedVideoTrack(RED), direction="sendonly")
    requests = asyncio.Event()
    transceiver.sender._send_keyframe = requests.set

    @receiving.on("track")
    def on_track(remote: MediaStreamTrack) -> None:
        install_encoded_receiver(receiving.getTransceivers()[0].receiver)

    await connect(sending, receiving)
    receiver = receiving.getTransceivers()[0].receiver
    await within(10, lambda: bool(receiver._RTCRtpReceiver__active_ssrc))
    assert set(receiver._RTCRtpReceiver__rtx_ssrc.values()) == {transceiver.sender._ssrc}
    assert send_pli(receiver)
    await asyncio.wait_for(requests.wait(), 5)


async def test_an_encoded_video_receiver_takes_our_jitter_buffer_and_nacks(pcs) -> None:
    """mcu/rtc/jitter.py in place of the receiver's private `__jitter_buffer` and `__nack_generator`, its
    codecs read from the private `__codecs`: frames flow from the first keyframe; the receiver sends a PLI when
    the buffer says so (to the far sender's `_send_keyframe`) and a NACK for just the `missing` it lists."""
    sending, receiving = pcs
    transceiver = sending.addTransceiver(PreEncodedVideoTrack(RED), direction="sendonly")
    keyframes_asked = asyncio.Event()
    transceiver.sender._send_keyframe = keyframes_asked.set
    frames: list[JitterFrame] = []

    @receiving.on("track")
    def on_track(remote: MediaStreamTrack) -> None:
        install_encoded_receiver(receiving.getTransceivers()[0].receiver, frames.append)

    await connect(sending, receiving)
    receiver = receiving.getTransceivers()[0].receiver
    buffer, nacks = receiver._RTCRtpReceiver__jitter_buffer, receiver._RTCRtpReceiver__nack_generator
    assert isinstance(buffer, VideoJitterBuffer) and isinstance(nacks, PacedNacks)
    await within(10, lambda: len(frames) >= 10)
    assert not frames[0].data[0] & 1, "the first frame let out is a keyframe"
    assert video_losses(receiver) == (0, 0)

    buffer._give_up()  # as after a hole waited out: the next packet asks for a keyframe
    await asyncio.wait_for(keyframes_asked.wait(), 5)
    assert video_losses(receiver)[1] >= 1

    sent: list[tuple[int, list[int]]] = []

    async def record_nack(ssrc: int, lost: list[int]) -> None:
        sent.append((ssrc, lost))

    receiver._send_rtcp_nack = record_nack
    ssrc = transceiver.sender._ssrc
    vp8 = next(pt for pt, codec in receiver._RTCRtpReceiver__codecs.items() if codec.name == "VP8")
    ahead = RtpPacket(payload_type=vp8, ssrc=ssrc)
    ahead.sequence_number = (nacks.max_seq + 3) % 0x10000
    ahead.payload = b"\x00\x00"
    gap = [(nacks.max_seq + 1) % 0x10000, (nacks.max_seq + 2) % 0x10000]
    await receiver._handle_rtp_packet(ahead, arrival_time_ms=0)
    assert sent[:1] == [(ssrc, gap)]


def test_an_unreadable_header_extension_is_skipped_not_fatal():
    """A zero-length value where the bundle expects an audio level: aiortc raised in its receive loop."""
    from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
    from aiortc.rtp import HeaderExtensionsMap

    from mcu.rtc.header_extensions import install_tolerant_extensions

    install_tolerant_extensions()
    extensions = HeaderExtensionsMap()
    extensions.configure(
        RTCRtpParameters(
            headerExtensions=[RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:ssrc-audio-level")]
        )
    )
    two_byte_profile = 0x1000
    assert extensions.get(two_byte_profile, b"\x01\x00\x00\x00").audio_level is None  # id 1, zero bytes
    assert extensions.get(two_byte_profile, b"\x01\x01\x85\x00").audio_level == (True, 5)  # a real one still reads


def test_a_process_whose_receivers_were_never_stopped_still_exits() -> None:
    """aiortc's decoder threads are not daemons: one waiting in the encoded handoff must not hold the process."""
    script = (
        "import asyncio, threading\n"
        "from mcu.rtc.receiver import _EncodedHandoff\n"
        "handoff = _EncodedHandoff(asyncio.Queue(), None)\n"
        "threading.Thread(target=handoff.get, name='video-decoder').start()\n"
    )
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parent.parent, timeout=10, check=True)
    assert time.monotonic() - started < 5


def test_a_waiting_decoder_thread_sleeps_until_its_receiver_stops() -> None:
    """No timed wait in the handoff: a 16-peer room has 32 idle decoder threads, and each wake-up
    takes the GIL from the event loop."""
    handoff = _EncodedHandoff(asyncio.Queue(), None)
    thread = threading.Thread(target=handoff.get, name="audio-decoder")
    thread.start()

    def switches() -> int:
        status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
        return int(status.split("voluntary_ctxt_switches:")[1].split()[0])

    try:
        time.sleep(0.2)
        before = switches()
        time.sleep(1.5)
        assert switches() == before
    finally:
        handoff.put(None)
        thread.join(2)
    assert not thread.is_alive()


async def test_every_datagram_passes_the_ice_connections_protocols_once_gathered(pcs) -> None:
    """client/impaired_ice.py: `RTCIceTransport._connection._protocols` lists the sockets after
    `setLocalDescription`, and wrapping their `transport.sendto` and `datagram_received` sees all the traffic."""
    sending, receiving = pcs
    sending.addTransceiver(ToneTrack(440.0, 0.1), direction="sendonly")
    await sending.setLocalDescription(await sending.createOffer())
    connection = sending.getTransceivers()[0].sender.transport.transport._connection
    protocols = list(connection._protocols)
    assert protocols and [p.local_candidate for p in protocols] == connection.local_candidates
    counted = {"sent": 0, "received": 0}

    class Counting:
        def __init__(self, transport) -> None:
            self.transport = transport

        def sendto(self, data: bytes, addr=None) -> None:
            counted["sent"] += len(data)
            self.transport.sendto(data, addr)

        def __getattr__(self, name: str):
            return getattr(self.transport, name)

    def counting(received):
        def datagram_received(data: bytes, addr) -> None:
            counted["received"] += len(data)
            received(data, addr)

        return datagram_received

    for protocol in protocols:
        protocol.transport = Counting(protocol.transport)
        protocol.datagram_received = counting(protocol.datagram_received)
    await receiving.setRemoteDescription(sending.localDescription)
    await receiving.setLocalDescription(await receiving.createAnswer())
    await sending.setRemoteDescription(receiving.localDescription)
    await within(10, lambda: transport_bytes(sending)[0] > 5_000)
    stats = [s for s in (await sending.getStats()).values() if s.type == "transport"]
    # What DTLS and SRTP sent and received, and the STUN checks besides: none went around the protocols.
    assert counted["sent"] >= sum(s.bytesSent for s in stats) > 5_000
    assert counted["received"] >= sum(s.bytesReceived for s in stats) > 0
    assert connection._protocols == protocols  # no socket was added after gathering


# --- the link feedback and probing of mcu/rtc/sender.py (on test_sender's sender-receiver pair) ---


async def _frames(link, seconds: float) -> None:
    """Push the clip's frames at 15 fps for `seconds`, pts running on (senders and receivers need traffic)."""
    payloads = list(encode_video_clip(RED))
    for index in range(round(seconds * 15)):
        packet = av.Packet(payloads[index % len(payloads)])
        packet.pts, packet.time_base = index * 6000, fractions.Fraction(1, 90000)
        packet.is_keyframe = index % len(payloads) == 0
        link.track.push(packet)
        await asyncio.sleep(1 / 15)


async def test_rtcp_routed_to_a_sender_reaches_its_link_monitor_with_each_reports_rtt() -> None:
    """`_handle_rtcp_packet` sees every RTCP packet aiortc routes to the sender; each receiver report's round
    trip, from the sender reports as dated when they leave, is what aiortc's own RTT reads from its private
    `__lsr` and `__lsr_time`, set to the same reports."""
    async with connected() as link:
        rembs: list[float] = []
        link.monitor._on_remb = lambda bitrate, now: rembs.append(bitrate)  # the far receiver sends its own too
        feeding = asyncio.ensure_future(_frames(link, 10))
        try:
            stats, ssrc = link.monitor.stats, link.transceiver.sender._ssrc
            await within(8, lambda: stats.reports >= 2 and stats.rtt is not None)
            assert 0 <= stats.rtt < 0.1 and link.monitor.base_rtt is not None
            aiortc_rtt = link.transceiver.sender._RTCRtpSender__rtt  # smoothed from the same samples
            assert aiortc_rtt is not None and abs(stats.rtt - aiortc_rtt) < 0.05
            far = link.far_receiver
            await far._send_rtcp_pli(ssrc)
            await far._send_rtcp_nack(ssrc, [1, 2])
            remb = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=pack_remb_fci(640_000, [ssrc]))
            await far._send_rtcp(remb)
            await within(5, lambda: stats.plis == 1 and stats.nacks == 1 and 640_000 in rembs)
            assert stats.nacked_packets == 2
            # About an SSRC nobody sends: aiortc's router drops it before any sender; the link goes on.
            await far._send_rtcp_pli(ssrc ^ 0x5A5A5A5A)
            await far._send_rtcp(
                RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=pack_remb_fci(0, [ssrc ^ 1]))
            )
            reports = stats.reports
            await within(5, lambda: stats.reports > reports)
            assert (stats.plis, stats.absurd_rembs) == (1, 0) and 0 not in rembs
        finally:
            feeding.cancel()


async def test_a_probe_pads_over_rtx_unseen_by_the_decoder_and_its_sender_report_is_echoed() -> None:
    """Payload-less RTX packets reach aiortc's REMB estimator, not its jitter buffer; aiortc's periodic
    sender reports are held back so that the receiver's next report echoes the probe's."""
    async with connected() as link:
        echoes: list[float] = []
        link.monitor._on_echo = lambda rtt, now: echoes.append(rtt)
        estimator = link.far_receiver._RTCRtpReceiver__remote_bitrate_estimator
        feeding = asyncio.ensure_future(_frames(link, 10))
        try:
            await within(5, lambda: link.remote and len(link.media()) > 10)
            rtx_ssrc = link.transceiver.sender._rtx_ssrc
            assert link.direct.probe(800_000, 0.25, link.monitor)
            await within(5, lambda: echoes)
            padding = [p for p in link.received if p.ssrc == rtx_ssrc]
            expected = 800_000 * 0.25 / 8 / PADDING
            assert 0.8 * expected <= len(padding) <= 1.2 * expected + 5
            assert all(p.payload == b"" and p.padding_size == PADDING for p in padding)
            assert all(p.extensions.abs_send_time is not None for p in padding)
            assert estimator.ssrcs.get(rtx_ssrc) is not None  # the REMB estimator counted them
            assert 0 <= echoes[0] < 0.1  # loopback: no queue
        finally:
            feeding.cancel()


async def test_a_sequence_gap_makes_aiortcs_jitter_buffer_drop_what_it_waits_for() -> None:
    """A packet that never comes stalls aiortc's video jitter buffer (512 packets of capacity); a
    resync's gap lets the next keyframe through at once."""
    async with connected() as link:
        decoded: list[int] = []

        async def consume() -> None:
            while True:
                frame = await link.remote[0].recv()
                decoded.append(frame.width)

        feeding = asyncio.ensure_future(_frames(link, 8))
        await within(5, lambda: link.remote)
        consumer = asyncio.ensure_future(consume())
        try:
            await within(5, lambda: len(decoded) >= 5)
            link.direct._sequence = (link.direct._sequence + 1) % 65536  # a packet lost for good
            link.direct._retransmit_credit = 0
            await asyncio.sleep(0.2)
            stalled = len(decoded)
            await asyncio.sleep(1.0)
            assert len(decoded) <= stalled + 1  # waiting for the lost packet
            link.direct.resync()
            link.track.restart()  # the next keyframe, as after a move down
            await within(3, lambda: len(decoded) >= stalled + 5)
        finally:
            feeding.cancel()
            consumer.cancel()
