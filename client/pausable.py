"""A video source that can be paused without closing it: what a publisher does when the room does not show it.

The MCU tells each publisher whether its video is wanted (`visibility`,
docs/protocol.md). While it is not, this track keeps reading its source and
drops what it reads, so that the camera (or clip) stays live and resuming is
instant; the sender gets nothing, so nothing is encoded or sent. On resuming,
the first frame must be one a decoder can start on: aiortc's encoder makes a
keyframe when the server's PLI comes (the server sends one as it resumes us),
and a pre-encoded clip (client/encoded.py) starts again at its lap's keyframe.
"""

from __future__ import annotations

from aiortc import MediaStreamTrack
from av.frame import Frame
from av.packet import Packet


class PausableVideoTrack(MediaStreamTrack):
    """Hands on `source`'s frames or packets, except while paused."""

    kind = "video"

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self.source = source
        self.paused = False
        #: Frames read from the source and dropped while paused, and times it paused.
        self.frames_dropped = 0
        self.pauses = 0

    def pause(self) -> None:
        if not self.paused:
            self.paused = True
            self.pauses += 1

    def resume(self) -> None:
        if not self.paused:
            return
        self.paused = False
        restart_lap = getattr(self.source, "restart_lap", None)
        if restart_lap is not None:
            restart_lap()  # the next packet the source hands out is its clip's keyframe

    async def recv(self) -> Frame | Packet:
        while True:
            frame = await self.source.recv()
            if not self.paused:
                return frame
            self.frames_dropped += 1

    def stop(self) -> None:
        super().stop()
        self.source.stop()
