"""A frame's RTP packets sent to a real aiortc peer in one system call, with UDP GSO (mcu/rtc/datagrams.py).

Whatever way they go (one segmented send, one send a packet after the kernel
refused to segment, asyncio's queue when the socket is full), every packet
arrives, in order, and the frames decode; and the aiortc and aioice internals
the direct route relies on fail here if an upgrade changes them.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiortc.rtp import RtpPacket
from conftest import within
from test_sender import FRAMES, Link, clip_packets, connected

from client.encoded import encode_video_clip
from mcu.rtc import datagrams

GREEN = (30, 200, 30)


@pytest.fixture
async def link() -> AsyncIterator[Link]:
    async with connected() as link:
        yield link


def record_sends(monkeypatch: pytest.MonkeyPatch, fail: OSError | None = None) -> list[int]:
    """The segment counts of the segmented sends made (after `fail` was raised once, if given)."""
    sends: list[int] = []
    sendmsg = datagrams.send_segmented

    def recorded(sock: Any, data: bytes, segment: int, addr: Any) -> None:
        if fail is not None and not sends:
            sends.append(0)
            raise fail
        sends.append(-(-len(data) // segment))
        sendmsg(sock, data, segment, addr)

    monkeypatch.setattr(datagrams, "send_segmented", recorded)
    return sends


async def arrived_whole(link: Link) -> None:
    """Every packet sent arrived once, in the order of its sequence numbers, and the clip decodes."""
    await within(5, lambda: len(link.media()) == link.direct.packets)
    numbers = [p.sequence_number for p in link.media()]
    assert numbers == [(numbers[0] + i) % 65536 for i in range(len(numbers))]
    frame = await asyncio.wait_for(link.remote[0].recv(), 10)
    assert (frame.width, frame.height) == (320, 240)


async def test_a_frames_packets_go_in_one_segmented_send_and_all_arrive(
    link: Link, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datagrams._State, "gso", True)
    sends = record_sends(monkeypatch)
    dtls = link.transceiver.sender.transport
    sent = dtls._RTCDtlsTransport__tx_packets
    link.push_clip(FRAMES)
    await arrived_whole(link)
    # Frames of several packets went in one send each: fewer system calls than packets.
    assert sends and sum(sends) + (FRAMES - len(sends)) == link.direct.packets
    assert dtls._RTCDtlsTransport__tx_packets - sent == link.direct.packets


async def test_a_kernel_that_cannot_segment_gets_one_datagram_a_packet(
    link: Link, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datagrams._State, "gso", True)
    sends = record_sends(monkeypatch, fail=OSError(errno.EIO, "no checksum offload"))
    link.push_clip(FRAMES)
    await arrived_whole(link)
    assert sends == [0] and datagrams._State.gso is False


async def test_a_full_socket_hands_the_rest_to_asyncios_queue_in_order(
    link: Link, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datagrams._State, "gso", True)
    sends = record_sends(monkeypatch, fail=BlockingIOError(errno.EAGAIN, "full"))
    packets = clip_packets(list(encode_video_clip(GREEN))[:FRAMES])
    link.track.push(packets[0])  # a keyframe: several packets, the first segmented send fails
    assert sends == [0]
    for packet in packets[1:]:
        link.track.push(packet)
    await arrived_whole(link)


async def test_packets_of_different_sizes_go_one_by_one(link: Link, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datagrams._State, "gso", True)
    sends = record_sends(monkeypatch)
    sender = link.transceiver.sender
    datagrams.send_rtp(sender.transport, [])  # nothing to send is not an error
    # A middle packet shorter than the others: the kernel could not cut them apart.
    packets = [
        RtpPacket(
            payload_type=link.transceiver._codecs[0].payloadType,
            sequence_number=100 + i,
            timestamp=1,
            ssrc=sender._ssrc,
            payload=b"\x10" + bytes(size),
        ).serialize()
        for i, size in enumerate((1000, 600, 1000))
    ]
    datagrams.send_rtp(sender.transport, packets)
    await within(5, lambda: len(link.media()) == 3)
    assert sends == [] and [p.sequence_number for p in link.media()] == [100, 101, 102]


async def test_the_route_follows_the_nominated_pair(link: Link, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pair nominated anew (a relayed one here) is sent through; the socket of the old one is not."""
    sends = record_sends(monkeypatch)
    dtls = link.transceiver.sender.transport
    connection = dtls.transport._connection
    direct = connection._nominated[1]
    link.push_clip(2)
    await within(5, lambda: len(link.media()) == link.direct.packets)
    relayed: list[bytes] = []

    class Relay:
        transport = object()  # aioice's TurnTransport: no socket of its own

        async def send_data(self, data: bytes, addr: Any) -> None:
            relayed.append(data)

    count = len(sends)
    connection._nominated[1] = type("Pair", (), {"protocol": Relay(), "remote_addr": direct.remote_addr})()
    try:
        datagrams.send_rtp(dtls, [bytes(link.media()[0].serialize())] * 3)
        assert len(relayed) == 3 and len(sends) == count
    finally:
        connection._nominated[1] = direct
    before = link.direct.packets
    link.push_clip(2)
    await within(5, lambda: len(link.media()) == link.direct.packets > before)
