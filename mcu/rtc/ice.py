"""The sockets of a peer connection: aioice's protocols, behind its private `_connection`.

Every datagram an aiortc peer connection sends or receives (STUN, DTLS, SRTP, through a TURN
relay or not) goes through one of aioice's `StunProtocol`s: it sends with
`protocol.transport.sendto` and is handed what arrives in `protocol.datagram_received`.
They exist once gathering is done, when `setLocalDescription` returns. The ICE transport's
`_connection` and the connection's `_protocols` are private (tests/test_aiortc_internals.py).
"""

from __future__ import annotations

from typing import Any

from aiortc import RTCPeerConnection


def ice_protocols(pc: RTCPeerConnection) -> list[Any]:
    """Every aioice protocol (one per gathered socket or TURN allocation) of `pc`'s ICE connections."""
    transports = [t.sender.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        transports.append(pc.sctp.transport)
    connections = {id(c): c for c in (dtls.transport._connection for dtls in transports if dtls is not None)}
    return [protocol for connection in connections.values() for protocol in connection._protocols]
