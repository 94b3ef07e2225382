"""Receive counters: what a client counts of the media it receives, and a peer's totals at one moment.

Each remote publisher's tracks count as they arrive (client/remote.py); the load
scripts (scripts/loadgen.py, scripts/bench_workers.py, scripts/bench_room.py)
read a peer's totals at two moments and divide by the time between, whatever
the room's mode.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from aiortc import MediaStreamTrack
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError

if TYPE_CHECKING:
    from typing import Self

    from .peer import Peer
    from .whep import WhepViewer


@dataclass(kw_only=True)
class ReceiveCounters:
    """Frames received on a set of tracks; bytes and keyframes too where they are not decoded."""

    video_frames: int = 0
    audio_frames: int = 0
    #: Encoded bytes and VP8 keyframes, counted only when not decoding (load peers).
    video_bytes: int = 0
    audio_bytes: int = 0
    keyframes: int = 0
    #: When the first picture arrived (time.monotonic()).
    first_frame_time: float | None = None

    def count_picture(self) -> None:
        if self.first_frame_time is None:
            self.first_frame_time = time.monotonic()
        self.video_frames += 1

    def count_encoded(self, kind: str, data: bytes) -> None:
        """One frame received without decoding it: `data` is its encoded payload."""
        if kind == "video":
            self.count_picture()
            self.video_bytes += len(data)
            # VP8's inverse key frame flag (RFC 6386 9.1); sfu rooms carry VP8 only.
            self.keyframes += not data[0] & 0x01 if data else 0
        else:
            self.audio_frames += 1
            self.audio_bytes += len(data)


async def count_encoded(track: MediaStreamTrack, counters: ReceiveCounters) -> None:
    """Count a track's frames as they come, undecoded, until it ends: a load peer's or load viewer's receiving
    (mcu.rtc.receiver.install_encoded_receiver made the track yield its encoded frames)."""
    try:
        while True:
            frame = cast(JitterFrame, await track.recv())
            counters.count_encoded(track.kind, frame.data)
    except MediaStreamError:
        pass


@dataclass
class Received:
    """A peer's receive totals at `at` (time.monotonic()), in any room mode."""

    at: float
    video_frames: int = 0
    audio_frames: int = 0
    #: Encoded payload bytes, audio and video (counted only when not decoding: load peers).
    payload_bytes: int = 0
    #: Remote video streams that have delivered a frame (1 in an mcu room: the composite).
    streams: int = 0

    @classmethod
    def of(cls, peer: Peer | WhepViewer) -> Self:
        """The totals now: the composite's in an mcu room (and a WHEP viewer's), the sum over its remote publishers
        in sfu and mesh."""
        now = cls(time.monotonic())
        if remote := list(getattr(peer, "remote", {}).values()):  # a WhepViewer has no `remote`
            now.video_frames = sum(r.video_frames for r in remote)
            now.audio_frames = sum(r.audio_frames for r in remote)
            now.payload_bytes = sum(r.video_bytes + r.audio_bytes for r in remote)
            now.streams = sum(1 for r in remote if r.video_frames and not r.ended)
        else:
            now.video_frames, now.audio_frames = peer.video_frames, peer.audio_frames
            now.payload_bytes = peer.video_bytes + peer.audio_bytes
            now.streams = int(peer.video_frames > 0)
        return now

    def fps(self, since: Received) -> float:
        """Video frames a second received from `since` to these totals."""
        return (self.video_frames - since.video_frames) / self._seconds(since)

    def audio_rate(self, since: Received) -> float:
        """Audio packets a second received from `since` to these totals."""
        return (self.audio_frames - since.audio_frames) / self._seconds(since)

    def payload_kbps(self, since: Received) -> float:
        """Encoded payload received from `since` to these totals, in kbit/s."""
        return (self.payload_bytes - since.payload_bytes) * 8 / self._seconds(since) / 1000

    def _seconds(self, since: Received) -> float:
        return max(self.at - since.at, 1e-6)
