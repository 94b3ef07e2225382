"""A frame's RTP packets onto a peer's socket in one system call: UDP generic segmentation offload.

aiortc sends each RTP packet on its own: SRTP, then four coroutines of aiortc and
aioice down to asyncio's `sendto`, then a system call and a pass through the
kernel's UDP stack. A composite frame is several packets for each peer (5-6 at
1.5 Mbit/s and 30 fps), all of one size but a shorter last one: what UDP GSO
(`UDP_SEGMENT`, Linux 4.18) takes in a single `sendmsg`, to be split by the kernel
or the network card. On loopback here a packet sent and received that way costs
2.2 times less CPU (scripts/bench_datagrams.py), and the Python above the system
call runs once a frame instead of once a packet.

`send_rtp` protects the packets with the peer's SRTP session and sends them
straight to the socket of its nominated ICE pair. A relayed pair (TURN: aioice
wraps what it sends), a socket whose writes are already queued, or a kernel
without GSO takes the packets one at a time, as before. It relies on aiortc and
aioice internals (tests/test_datagrams.py covers them).
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
import sys
from typing import Any

from aiortc import RTCDtlsTransport

from mcu.rtc.eager import run_eagerly

logger = logging.getLogger(__name__)

#: setsockopt/cmsg level and type of UDP GSO (linux/udp.h); Python 3.11's socket module lacks the name.
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
#: The kernel's limit on the segments of one send (UDP_MAX_SEGMENTS), and on its bytes.
MAX_SEGMENTS = 64
MAX_BYTES = 65000
_SEGMENT_SIZE = struct.Struct("=H")
#: Errors of a kernel or device that cannot segment: GSO is given up for the process.
_NO_GSO = {errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EIO}


class _State:
    #: Whether to try segmented sends: Linux only, and off for good once the kernel refuses one.
    gso = sys.platform == "linux"


def send_segmented(sock: socket.socket, data: bytes, segment: int, addr: Any) -> None:
    """One datagram per `segment` bytes of `data`, in one system call."""
    sock.sendmsg([data], [(socket.SOL_UDP, UDP_SEGMENT, _SEGMENT_SIZE.pack(segment))], 0, addr)


def send_rtp(dtls: RTCDtlsTransport, packets: list[bytes]) -> None:
    """SRTP-protect and send one frame's RTP packets to the peer of `dtls`, in order.

    Raises ConnectionError when the transport is not connected, as aiortc's own
    send does.
    """
    if dtls.state != "connected":
        raise ConnectionError("Cannot send encrypted RTP, not connected")
    if not packets:
        return
    protect = dtls._tx_srtp.protect
    datagrams = [protect(packet) for packet in packets]
    route = _route(dtls)
    if route is None:
        for datagram in datagrams:
            run_eagerly(dtls.transport._send(datagram))
    else:
        _send(*route, datagrams)
    dtls._RTCDtlsTransport__tx_bytes += sum(map(len, datagrams))  # type: ignore[attr-defined]
    dtls._RTCDtlsTransport__tx_packets += len(datagrams)  # type: ignore[attr-defined]


def _route(dtls: RTCDtlsTransport) -> tuple[Any, socket.socket, Any] | None:
    """The asyncio transport, its socket and the remote address of the nominated pair, when sent to directly."""
    pair = dtls.transport._connection._nominated.get(1)
    if pair is None:
        raise ConnectionError("Cannot send data, not connected")
    route = getattr(dtls, "_mcu_route", None)
    if route is None or route[0] is not pair:
        # A relayed pair's transport is aioice's TurnTransport, which has no socket of its own.
        # asyncio's selector transport has the write buffer that typeshed's DatagramTransport does not declare.
        transport: Any = pair.protocol.transport
        sock = getattr(transport, "_sock", None)
        route = dtls._mcu_route = (pair, transport, sock if isinstance(sock, socket.socket) else None)  # type: ignore[attr-defined]
    _, transport, sock = route
    if sock is None or transport.is_closing() or transport.get_write_buffer_size():
        return None
    return transport, sock, pair.remote_addr


def _send(transport: Any, sock: socket.socket, addr: Any, datagrams: list[bytes]) -> None:
    size = len(datagrams[0])
    segmentable = (
        _State.gso and len(datagrams) > 1 and all(len(d) == size for d in datagrams[:-1]) and len(datagrams[-1]) <= size
    )
    step = min(MAX_SEGMENTS, MAX_BYTES // size) if segmentable else 1
    for start in range(0, len(datagrams), step):
        chunk = datagrams[start : start + step]
        try:
            if len(chunk) == 1:
                sock.sendto(chunk[0], addr)
            else:
                send_segmented(sock, b"".join(chunk), size, addr)
        except (BlockingIOError, InterruptedError):
            # The socket's buffer is full: asyncio queues what is left, in order.
            for datagram in datagrams[start:]:
                transport.sendto(datagram, addr)
            return
        except OSError as exc:
            if len(chunk) > 1 and exc.errno in _NO_GSO:
                logger.info("UDP segmentation offload is not available (%s): one datagram a packet", exc)
                _State.gso = False
                _send(transport, sock, addr, datagrams[start:])
                return
            logger.debug("an RTP datagram could not be sent: %s", exc)  # lost, as on the wire
