"""What a participant may do in its room.

A join token (issued with ``mcu token``) carries a subset of these; without a
server secret every participant holds all of them. The conference checks the
grant an action needs and answers ``forbidden`` when it is missing.
"""

from __future__ import annotations

PUBLISH = "publish"
SUBSCRIBE = "subscribe"
CHAT = "chat"
RECORD = "record"
MODERATE = "moderate"
LAYOUT = "layout"

ALL_GRANTS: frozenset[str] = frozenset({PUBLISH, SUBSCRIBE, CHAT, RECORD, MODERATE, LAYOUT})
