"""SRTP datagrams handled in the socket's callback: no STUN parse, queue or task wakeup per datagram.

aiortc receives in a task per DTLS transport: aioice first tries to parse every
datagram as STUN, then queues it, and the transport's task wakes up to take it,
unprotect it and route it to its receiver. At 16 peers that is about 1 500
datagrams a second, each paying for an exception, a queue and a task switch
before any RTP work is done.

`receive_directly(pc)` hooks a connected peer connection's sockets so that an
SRTP or SRTCP datagram goes straight to what aiortc's task would have done with
it: the same counters, the same unprotect, the same handlers, run to their end
at once (`mcu.rtc.eager.run_eagerly`). Everything else (STUN, DTLS records, the data channel)
still takes aiortc's way, and so does an SRTP datagram that arrives while older
datagrams are queued there, so that none overtakes them. It relies on aiortc and
aioice internals (tests/test_intake.py covers them).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pylibsrtp
from aiortc import RTCDtlsTransport, RTCPeerConnection
from aiortc.rtp import is_rtcp

from mcu.rtc import wallclock
from mcu.rtc.eager import run_eagerly

logger = logging.getLogger(__name__)


def receive_directly(pc: RTCPeerConnection) -> None:
    """Handle the SRTP datagrams of `pc`'s connected DTLS transports in their sockets' callbacks.

    Call it once the connection is connected: the sockets (aioice's protocols) of
    its ICE transports exist then. Idempotent.
    """
    transports = {id(t.receiver.transport): t.receiver.transport for t in pc.getTransceivers()}
    for dtls in transports.values():
        if dtls is not None and dtls.state == "connected":
            _hook(dtls)


def _hook(dtls: RTCDtlsTransport) -> None:
    connection = dtls.transport._connection
    for protocol in connection._protocols:
        if getattr(protocol, "_mcu_direct", None) is dtls:
            continue
        protocol.datagram_received = _datagram_handler(  # type: ignore[method-assign]
            dtls, connection, protocol.datagram_received
        )
        protocol._mcu_direct = dtls  # type: ignore[attr-defined]


def _datagram_handler(dtls: RTCDtlsTransport, connection: Any, queued: Any) -> Any:
    """A protocol's `datagram_received`: SRTP/SRTCP handled now, anything else passed to `queued`."""
    waiting: asyncio.Queue = connection._queue

    def datagram_received(data: bytes, addr: tuple[Any, ...]) -> None:
        srtp = dtls._rx_srtp
        # 128-191: RTP and RTCP (RFC 7983); aiortc's own task takes the rest, and takes all in order
        # while anything is queued for it.
        if not (127 < data[0] < 192) or srtp is None or not waiting.empty() or dtls.state != "connected":
            queued(data, addr)
            return
        dtls._RTCDtlsTransport__rx_bytes += len(data)  # type: ignore[attr-defined]
        dtls._RTCDtlsTransport__rx_packets += 1  # type: ignore[attr-defined]
        try:
            if is_rtcp(data):
                handling = dtls._handle_rtcp_data(srtp.unprotect_rtcp(data))
            else:
                arrival_time_ms = wallclock.current_ms()
                handling = dtls._handle_rtp_data(srtp.unprotect(data), arrival_time_ms=arrival_time_ms)
        except pylibsrtp.Error:
            return  # aiortc drops it too (replayed, forged or corrupt)
        try:
            run_eagerly(handling)
        except ConnectionError:
            pass  # a reply (RTCP) to a connection going down: aiortc's task ends the transport itself
        except Exception:
            # In aiortc's task this would end the transport; here the datagram is lost instead.
            logger.exception("a received RTP/RTCP datagram could not be handled")

    return datagram_received
