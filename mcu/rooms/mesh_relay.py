"""The mesh mode's relay: the server carries no media, it passes signaling from peer to peer.

In a mesh room every peer opens one peer connection to every other peer. The
server answers no offer of its own: an ``offer``, ``answer`` or ``candidate``
names its target with ``to`` and reaches it with ``from`` instead. Addressing
follows the room's mode, so a message meant for the server cannot slip to a
peer, nor one meant for a peer to the server (``wrong_mode``).
"""

from __future__ import annotations

from collections.abc import Mapping

from signaling import protocol
from signaling.protocol import Answer, Candidate, Offer, ProtocolError
from signaling.websocket import Session

#: The room mode in which peers connect to each other.
MESH = "mesh"


def addressed_to_peer(mode: str, to: str | None, kind: str) -> bool:
    """Whether a client's `kind` message (offer, answer, candidate) goes to a peer rather than to the server.

    :raises ProtocolError: ``wrong_mode`` when its addressing does not fit the room's mode.
    """
    if mode == MESH and to is None:
        raise ProtocolError(protocol.WRONG_MODE, f'This is a mesh room: "{kind}" needs "to", the peerId it is for.')
    if mode != MESH and to is not None:
        raise ProtocolError(protocol.WRONG_MODE, f'This is an {mode} room: "{kind}" goes to the server, without "to".')
    return mode == MESH


class MeshRelay:
    """Delivers peer-to-peer signaling within a room, and counts it."""

    def __init__(self, sessions: Mapping[str, Session]) -> None:
        #: The joined sessions of the server by peerId (shared with the conference).
        self._sessions = sessions
        #: Messages delivered since the server started.
        self.relayed = 0

    def relay(self, sender: str, members: Mapping[str, object], message: Offer | Answer | Candidate) -> None:
        """Send `message` to its `to`, a peer of the sender's room (`members`), marked as coming from `sender`.

        :raises ProtocolError: ``unknown_peer`` when `to` is the sender or nobody of the room.
        """
        to = message.to
        assert to is not None, "addressed_to_peer() passes only messages for a peer"
        session = self._sessions.get(to) if to in members and to != sender else None
        if session is None:
            raise ProtocolError(protocol.UNKNOWN_PEER, f"There is no other participant {to[:32]!r} in this room.")
        session.send(protocol.relayed(sender, message))
        self.relayed += 1
