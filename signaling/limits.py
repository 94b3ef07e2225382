"""What one server, room and connection may use: each limit refuses with its own error code.

A server on the open internet must bound everything a stranger can make it
hold: rooms, peers, bytes per message, messages per second, an idle socket
that never joins, SDP that takes long to parse, tracks it would decode.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import protocol
from .protocol import ProtocolError

_MEDIA_SECTION_RE = re.compile(r"^m=(?:audio|video) ", re.MULTILINE)


@dataclass(frozen=True)
class Limits:
    #: Rooms one server holds at once (`too_many_rooms`).
    max_rooms: int = 100
    #: Participants in one room (`room_full`): what one room's process was measured to hold, 16 of
    #: them shown, with sender control (docs/operations.md, "How many in one room").
    max_peers_per_room: int = 100
    #: WHEP viewers of one room (`room_full`, HTTP 503), counted apart from its participants: each costs
    #: about what an off-screen publisher does (the composite and the mix it is sent, no decode, no tile).
    max_viewers_per_room: int = 100
    #: Bytes of one signaling message once UTF-8 encoded (`message_too_large`).
    max_message_bytes: int = protocol.MAX_MESSAGE_BYTES
    #: Signaling messages per second per connection on average, and at once (`rate_limited`).
    messages_per_second: float = 20
    message_burst: int = 40
    #: Seconds a new connection has to join before it is closed (`join_timeout`).
    join_timeout: float = 10
    #: Bytes of one SDP offer (`sdp_too_large`).
    max_sdp_bytes: int = 32 * 1024
    #: Audio and video media sections of one offer (`too_many_tracks`): the MCU takes
    #: one audio and one video upstream; the rest is room for renegotiation.
    max_tracks_per_peer: int = 4

    def check_offer(self, sdp: str) -> None:
        """Refuse an SDP offer over the size or media-section limits."""
        if len(sdp.encode("utf-8", "surrogatepass")) > self.max_sdp_bytes:
            raise ProtocolError(protocol.SDP_TOO_LARGE, f"The SDP offer is larger than {self.max_sdp_bytes} bytes.")
        tracks = len(_MEDIA_SECTION_RE.findall(sdp))
        if tracks > self.max_tracks_per_peer:
            raise ProtocolError(
                protocol.TOO_MANY_TRACKS,
                f"The offer has {tracks} audio and video sections; at most {self.max_tracks_per_peer} are allowed.",
            )
