"""A Python peer connection's own datagrams through an impaired link (client/impairment.py).

Every datagram a peer connection sends or receives (STUN, DTLS, SRTP, through a TURN
relay or not) goes through one of aioice's `StunProtocol`s: it sends with
`protocol.transport.sendto` and is handed what arrives in `protocol.datagram_received`.
Wrapping those two on every protocol of the connection puts the whole path behind an up
and a down `Link`, the way a bad access network would, without a relay or a namespace.

This is the one place of the client that touches aioice/aiortc internals: the ICE
transport's private `_connection` and its private list `_protocols`
(tests/test_aiortc_internals.py covers them). The protocols exist once gathering is done,
when `setLocalDescription` returns: call `impair_ice` then. Nothing has gone through them
yet: the far end does not know our candidates, and aiortc starts its side of the checks in a
task that `setLocalDescription` only schedules.
"""

from __future__ import annotations

from typing import Any

from aiortc import RTCPeerConnection

from .impairment import Address, Impairments, Link


class ImpairedIce:
    """The up and down links of a client's peer connections (one pair for all, as one access network)."""

    def __init__(self, impairments: Impairments) -> None:
        self.up = Link(impairments.up, "up")
        self.down = Link(impairments.down, "down")

    def close(self) -> None:
        self.up.close()
        self.down.close()


class _ImpairedTransport:
    """An aioice protocol's transport (a socket's, or a TURN allocation's) whose sends go through `link`."""

    def __init__(self, transport: Any, link: Link) -> None:
        self._transport = transport
        self._link = link

    def sendto(self, data: bytes, addr: Address | None = None) -> None:
        transport = self._transport

        def deliver(datagram: bytes) -> None:
            if not transport.is_closing():
                transport.sendto(datagram, addr)

        self._link.send(data, deliver)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def impair_ice(pc: RTCPeerConnection, links: ImpairedIce) -> None:
    """Put every socket `pc` gathered behind `links` (idempotent; call after `setLocalDescription`)."""
    transports = [t.sender.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        transports.append(pc.sctp.transport)
    connections = {id(c): c for c in (dtls.transport._connection for dtls in transports if dtls is not None)}
    for connection in connections.values():
        # Patched in place, which aioice's types do not foresee.
        protocols: list[Any] = connection._protocols
        for protocol in protocols:
            if getattr(protocol, "_impaired_by", None) is links:
                continue
            protocol.transport = _ImpairedTransport(protocol.transport, links.up)
            protocol.datagram_received = _impaired_receive(protocol.datagram_received, links.down)
            protocol._impaired_by = links


def _impaired_receive(received: Any, link: Link) -> Any:
    def datagram_received(data: bytes, addr: Address) -> None:
        link.send(data, lambda datagram: received(datagram, addr))

    return datagram_received
