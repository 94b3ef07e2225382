"""RTMP out: a room's composite and mix pushed live to an RTMP or RTMPS server (a broadcast platform's ingest).

PyAV's FLV muxer over libavformat's rtmp/rtmps protocols (mcu/rooms/broadcast.py
does the muxing, the retries and the keyframes). A stream's URL usually holds
its secret key: it is never logged, never sent to the room, never in an error
message; what is shown instead is `redact(url)`.
"""

from __future__ import annotations

import secrets
import urllib.parse
from typing import Any, Callable

import av

from mcu.rooms.broadcast import Broadcast

#: The URL schemes a stream may push to.
SCHEMES = ("rtmp", "rtmps")
#: FLV muxer options: each packet written at once (a live far end, not a file), and no seek back at the end
#: to write the duration (a socket cannot seek).
MUXER_OPTIONS = {"flush_packets": "1", "flvflags": "no_duration_filesize"}


class StreamUrlError(ValueError):
    """Not a URL a stream can push to."""


def check_url(url: str) -> str:
    """`url` if it is an rtmp:// or rtmps:// URL with a host; StreamUrlError (saying nothing of its key) if not."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise StreamUrlError("The stream URL is not a URL.") from None
    if parts.scheme.lower() not in SCHEMES:
        raise StreamUrlError(f"A stream URL starts with rtmp:// or rtmps://, not {parts.scheme[:16]!r}.")
    if not host:
        raise StreamUrlError("The stream URL has no host.")
    if any(ord(c) < 0x21 or c == "\x7f" for c in url):
        raise StreamUrlError("The stream URL has spaces or control characters.")
    return url


def redact(url: str) -> str:
    """The URL as logs and events show it: its path's last segment (the key), query and credentials as `***`."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = ("***@" if "@" in parts.netloc else "") + host + (f":{parts.port}" if parts.port else "")
    path, _, last = parts.path.rpartition("/")
    path = f"{path}/***" if last else path
    return urllib.parse.urlunsplit((parts.scheme, netloc, path, "***" if parts.query else "", ""))


class Stream(Broadcast):
    """One RTMP push of a room's composite (one tier, H.264) and mix (AAC), retried until stopped."""

    def __init__(
        self,
        room: str,
        url: str,
        tier: str,
        width: int,
        height: int,
        fps: int,
        audio_extradata: bytes,
        request_keyframe: Callable[[], None],
        on_change: Callable[[Broadcast], None],
    ) -> None:
        super().__init__(room, width, height, fps, audio_extradata, request_keyframe, on_change)
        self.id = secrets.token_hex(4)
        self.url = check_url(url)
        self.tier = tier
        self.shown_url = redact(url)
        self.label = f"stream {self.id} to {self.shown_url}"

    def _open(self) -> Any:
        return av.open(self.url, "w", format="flv", options=MUXER_OPTIONS)

    def _failed(self, message: str) -> None:
        # libavformat's messages name the URL they failed on: its key must not reach the logs or the room.
        super()._failed(message.replace(self.url, self.shown_url))

    def describe(self) -> dict:
        """What `streamStarted`/`streamFailed` and the HTTP API say of it (the URL redacted)."""
        return {"id": self.id, "url": self.shown_url, "tier": self.tier, **super().describe()}
