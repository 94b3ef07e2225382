"""Logging as text or JSON lines, each record tagged with the room and peer it concerns.

The ids live in context variables: the conference binds them in the signaling
task of a peer when it joins, and asyncio copies the context into every task
started from there (aiortc's transports, our media consumers), so their
records carry the ids without passing them around.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import datetime, timezone

_room: contextvars.ContextVar[str | None] = contextvars.ContextVar("room", default=None)
_peer: contextvars.ContextVar[str | None] = contextvars.ContextVar("peer", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(ids)s: %(message)s"


def bind(room: str | None, peer: str | None) -> None:
    """Tag the records of the current task, and of the tasks it starts from now on."""
    _room.set(room)
    _peer.set(peer)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        room, peer = _room.get(), _peer.get()
        record.room, record.peer = room, peer
        record.ids = "".join(f" [{k} {v}]" for k, v in (("room", room), ("peer", peer)) if v)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, room, peer (and the traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "room": getattr(record, "room", None),
            "peer": getattr(record, "peer", None),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, fmt: str = "text") -> None:
    """Log to stderr at `level`, as "text" or "json" lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
