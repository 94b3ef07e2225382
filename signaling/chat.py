"""
Chat over a data channel: the messages a peer sends on its "chat" channel and the
limits on them (``docs/protocol.md``, "Chat (data channel)").

Pure validation, the messages' builders and readers, and a token bucket, no networking,
so the server's relay, the Python client and the tests share one definition of what a
peer may send and what it receives.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, NoReturn

from .protocol import INVALID_MESSAGE, Error, ProtocolError, read_error, typed_field

#: The label of the one data channel a client opens for chat.
LABEL = "chat"

#: The largest message a peer may send on the chat channel, in bytes once UTF-8 encoded.
MAX_CHAT_BYTES = 16 * 1024
#: Messages per second a peer may send on average, and how many it may send at once.
CHAT_RATE = 5.0
CHAT_BURST = 10

# Error codes, sent back on the chat channel in the "code" field of an "error" message.
CHAT_TOO_LARGE = "chat_too_large"
CHAT_RATE_LIMITED = "chat_rate_limited"
INVALID_CHAT = "invalid_chat"

# Tab and line feed are text; other controls (a carriage return or an escape
# sequence would rewrite a terminal's line) and lone surrogates (no UTF-8 for
# them, so no relay) are not.
_TEXT_FORBIDDEN_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def parse_chat(data: str | bytes) -> str:
    """
    Validate one message from a peer's chat channel and return its text.

    :raises ProtocolError: with ``chat_too_large`` or ``invalid_chat``.
    """
    # A character is at least one byte, so a long string needs no encoding to reject.
    if len(data) > MAX_CHAT_BYTES or (isinstance(data, str) and len(data.encode("utf-8")) > MAX_CHAT_BYTES):
        raise ProtocolError(CHAT_TOO_LARGE, f"A chat message may be at most {MAX_CHAT_BYTES} bytes.")
    if isinstance(data, bytes):
        raise ProtocolError(INVALID_CHAT, "Binary chat messages are not supported: send JSON text.")
    try:
        obj = json.loads(data, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise ProtocolError(INVALID_CHAT, "The chat message is not valid JSON.") from None
    if not isinstance(obj, dict) or obj.get("type") != "chat":
        raise ProtocolError(INVALID_CHAT, 'A chat message must be a JSON object of type "chat".')
    text = obj.get("text")
    if not isinstance(text, str):
        raise ProtocolError(INVALID_CHAT, 'The "text" field must be a string.')
    if not text.strip():
        raise ProtocolError(INVALID_CHAT, "The chat text must not be empty.")
    if _TEXT_FORBIDDEN_RE.search(text):
        raise ProtocolError(
            INVALID_CHAT, "The chat text must not contain control characters (other than tab and line feed)."
        )
    return text


def say(text: str) -> str:
    """What a client sends on its chat channel, as JSON text (``parse_chat`` reads it).

    Not ASCII-escaped: the size limit counts UTF-8 bytes, and an escape costs up to 12 for 4.
    """
    return json.dumps({"type": "chat", "text": text}, ensure_ascii=False)


def chat(peer_id: str, name: str, text: str, timestamp: int) -> dict[str, Any]:
    """A relayed chat message: who sent it and when the server took it (ms since the epoch)."""
    return {"type": "chat", "from": peer_id, "name": name, "text": text, "timestamp": timestamp}


@dataclass(frozen=True)
class ChatMessage:
    """A chat message as the server relays it to everybody in the room (see :func:`chat`)."""

    sender: str
    name: str
    text: str
    #: When the server took it, in ms since the epoch.
    timestamp: int


def read_chat(obj: Any) -> ChatMessage | Error | None:
    """The typed view of one decoded message of the chat channel; None for a type the client does not know.

    :raises ProtocolError: ``invalid_message`` when a ``chat`` or ``error`` is malformed.
    """
    if not isinstance(obj, dict):
        raise ProtocolError(INVALID_MESSAGE, "The message must be a JSON object.")
    kind = typed_field(obj, "type", str, "type")
    if kind == "error":
        return read_error(obj)
    if kind != "chat":
        return None
    return ChatMessage(
        sender=typed_field(obj, "from", str, "from"),
        name=typed_field(obj, "name", str, "name"),
        text=typed_field(obj, "text", str, "text"),
        timestamp=typed_field(obj, "timestamp", int, "timestamp"),
    )


class TokenBucket:
    """
    Allows ``rate`` events per second on average and ``burst`` at once.

    Times are passed in (any monotonic clock, in seconds) so that it can be tested
    without sleeping.
    """

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._time = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one; False means the event is over the limit."""
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._time) * self.rate)
        self._time = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
