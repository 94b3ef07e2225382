"""Sender control: a publisher whose video is in no canvas is asked to stop sending it.

In a room larger than its tiles (`compositor.layout.last_n`) most publishers are
not shown, yet each would encode and upload its camera and the room's picture
process would decode it. The room tells each publisher whether it is on screen
(`visibility` in docs/protocol.md); once it has been on no canvas for
HIDE_HOLD, its video is no longer wanted: a client that honours the message
pauses its upload, and whatever still comes is not decoded. When it is shown
again, it is wanted at once; the room asks it for a keyframe, and its frames
are decoded from that keyframe on (until then its tile shows its last picture,
or its placeholder once that is stale).
"""

from __future__ import annotations

import builtins  # the field `bytes` hides the type inside the class
from dataclasses import dataclass

from mcu.media.keyframes import is_keyframe

#: How long a publisher stays wanted after it left every canvas: a floor that goes back and forth
#: between two speakers does not pause and resume them each time.
HIDE_HOLD = 2.0


@dataclass
class Visibility:
    """One publisher: whether it is on screen, whether its video is wanted, what came and what was not decoded."""

    #: Whether its video is a tile of some canvas (None until the room's first scene is known).
    on_screen: bool | None = None
    #: Whether it is asked to send video: False once it has been on no canvas for HIDE_HOLD.
    send_video: bool = True
    #: When it left the last canvas (time.monotonic()); None while it is shown.
    hidden_since: float | None = None
    #: Frames handed on are decoded only from a keyframe on, after a pause.
    waiting_keyframe: bool = False
    #: Encoded video frames and bytes received, and those not handed to the video process.
    frames: int = 0
    bytes: int = 0
    frames_ignored: int = 0
    bytes_ignored: int = 0
    #: Times its video was no longer wanted, and wanted again.
    pauses: int = 0
    resumes: int = 0
    #: Keyframes (PLIs) asked of it for the room's picture: on decode errors, on resuming, and paced
    #: while the keyframe after a resume is awaited.
    keyframes_asked: int = 0
    #: Times it turned its camera on or off (`setMedia`): a storm of them costs a counter, not a stall.
    camera_toggles: int = 0

    def update(self, shown: bool, now: float, control: bool) -> tuple[bool, bool]:
        """Take whether it is shown now: (whether `on_screen` or `send_video` changed, whether it resumed)."""
        before = (self.on_screen, self.send_video)
        if shown:
            self.hidden_since = None
            self.send_video = True
        else:
            if self.hidden_since is None:
                self.hidden_since = now
            if not control:
                self.send_video = True
            elif now - self.hidden_since >= HIDE_HOLD:
                self.send_video = False
        self.on_screen = shown
        resumed = self.send_video and not before[1]
        self.resumes += resumed
        self.pauses += before[1] and not self.send_video
        return (self.on_screen, self.send_video) != before, resumed

    @property
    def hold_ends(self) -> float | None:
        """When its hold runs out and it is paused, if it is hidden and still wanted."""
        if self.hidden_since is None or not self.send_video:
            return None
        return self.hidden_since + HIDE_HOLD

    def admit(self, codec_name: str, data: builtins.bytes, wanted: bool) -> bool:
        """Whether a frame received goes on to the decoder: `wanted` (on screen, camera on), and from a keyframe on."""
        self.frames += 1
        self.bytes += len(data)
        if not wanted:
            self.waiting_keyframe = True
        elif self.waiting_keyframe and is_keyframe(codec_name, data):
            self.waiting_keyframe = False
        if self.waiting_keyframe:
            self.frames_ignored += 1
            self.bytes_ignored += len(data)
            return False
        return True

    def describe(self) -> dict:
        return {
            "onScreen": self.on_screen,
            "sendVideo": self.send_video,
            "videoFrames": self.frames,
            "videoBytes": self.bytes,
            "videoFramesIgnored": self.frames_ignored,
            "videoBytesIgnored": self.bytes_ignored,
            "waitingKeyframe": self.waiting_keyframe,
            "pauses": self.pauses,
            "resumes": self.resumes,
            "keyframesAsked": self.keyframes_asked,
            "cameraToggles": self.camera_toggles,
        }
