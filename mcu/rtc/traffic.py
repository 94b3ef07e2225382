"""Bytes on the wire per peer connection, for /metrics.

aiortc counts what each DTLS transport sends and receives (it reports it in
`getStats()`, an async call per peer); the counters are read directly here so
a scrape stays synchronous and cheap (aiortc internal, covered by
tests/test_aiortc_internals.py). Peers that left are folded into a running
total so the exported counters never go down.
"""

from __future__ import annotations

from typing import Iterable

from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender


def transport_bytes(pc: RTCPeerConnection) -> tuple[int, int]:
    """(sent, received) bytes of every DTLS transport of `pc` (one when bundled)."""
    ends: list[RTCRtpSender | RTCRtpReceiver] = [*pc.getSenders(), *pc.getReceivers()]
    transports = {id(t): t for t in (end.transport for end in ends) if t is not None}
    if pc.sctp is not None:
        transports[id(pc.sctp.transport)] = pc.sctp.transport
    sent = sum(getattr(t, "_RTCDtlsTransport__tx_bytes", 0) for t in transports.values())
    received = sum(getattr(t, "_RTCDtlsTransport__rx_bytes", 0) for t in transports.values())
    return sent, received


class Traffic:
    """Bytes sent and received by all peers, present and past."""

    def __init__(self) -> None:
        self._sent = 0
        self._received = 0

    def depart(self, pc: RTCPeerConnection) -> None:
        """Keep what a leaving peer's connection carried (call before closing it)."""
        sent, received = transport_bytes(pc)
        self._sent += sent
        self._received += received

    def totals(self, pcs: Iterable[RTCPeerConnection]) -> tuple[int, int]:
        sent, received = self._sent, self._received
        for pc in pcs:
            s, r = transport_bytes(pc)
            sent, received = sent + s, received + r
        return sent, received
