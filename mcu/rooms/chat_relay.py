"""A room's chat: what one peer sends on its chat data channel goes to every peer's.

Relaying never waits: aiortc's ``RTCDataChannel.send`` only queues, so a peer
whose queue has grown past :data:`CHAT_BUFFER_LIMIT` (it does not read, or its
link is too slow) misses messages instead of holding memory for them.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Mapping

from mcu.rooms.participant import Participant
from signaling import chat, grants, protocol
from signaling.chat import CHAT_BURST, CHAT_RATE, TokenBucket
from signaling.protocol import ProtocolError

logger = logging.getLogger(__name__)

#: Bytes queued on a peer's chat channel beyond which it misses messages.
CHAT_BUFFER_LIMIT = 256 * 1024


@dataclass
class ChatStats:
    #: Messages accepted and relayed, and messages refused with an error.
    relayed: int = 0
    refused: int = 0
    #: Deliveries skipped: the receiver's channel was over CHAT_BUFFER_LIMIT, or it
    #: takes no message this large.
    dropped: int = 0


class ChatRelay:
    """Validates each peer's messages against the limits and relays them to the room."""

    def __init__(self, room: str, participants: Mapping[str, Participant]) -> None:
        self.room = room
        self.stats = ChatStats()
        self._participants = participants
        self._buckets: dict[str, TokenBucket] = {}

    def receive(self, participant: Participant, data: str | bytes) -> None:
        """One message from `participant`'s chat channel: relay it, or refuse it to the sender."""
        if self._participants.get(participant.peer_id) is not participant:
            return  # it has left; its channel is closing
        try:
            self._relay(participant, data)
        except ProtocolError as exc:
            self.stats.refused += 1
            logger.debug("room %s: chat from %s refused: %s", self.room, participant.peer_id, exc.code)
            self._deliver(participant, json.dumps(protocol.error(exc.code, exc.message)))
        except Exception:
            # aiortc calls this from its SCTP receive path: nothing may escape.
            logger.exception("room %s: chat from %s failed", self.room, participant.peer_id)

    def remove(self, peer_id: str) -> None:
        self._buckets.pop(peer_id, None)

    def _relay(self, participant: Participant, data: str | bytes) -> None:
        if grants.CHAT not in participant.grants:
            raise ProtocolError(protocol.FORBIDDEN, "You are not allowed to chat in this room.")
        now = time.monotonic()
        bucket = self._buckets.get(participant.peer_id)
        if bucket is None:
            bucket = self._buckets[participant.peer_id] = TokenBucket(CHAT_RATE, CHAT_BURST, now)
        # Every message takes a token, valid or not, before it is read.
        if not bucket.take(now):
            raise ProtocolError(
                chat.CHAT_RATE_LIMITED,
                f"Too many chat messages: at most {CHAT_RATE:g} per second, {CHAT_BURST} at once.",
            )
        text = chat.parse_chat(data)
        message = chat.chat(participant.peer_id, participant.name, text, int(time.time() * 1000))
        # Text was checked for lone surrogates, so it encodes: send UTF-8, not \u escapes.
        encoded = json.dumps(message, ensure_ascii=False)
        self.stats.relayed += 1
        for receiver in list(self._participants.values()):
            self._deliver(receiver, encoded)

    def _deliver(self, participant: Participant, text: str) -> None:
        channel = participant.chat_channel
        if channel is None or channel.readyState != "open":
            return  # not open yet, or closing: it misses this one
        if channel.bufferedAmount > CHAT_BUFFER_LIMIT:
            self.stats.dropped += 1
            return
        try:
            channel.send(text)
        except ValueError:
            # Its SDP announced a max-message-size below this message: the others still get it.
            self.stats.dropped += 1
