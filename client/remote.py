"""What a client receives from each other publisher in sfu and mesh rooms.

There every remote peer arrives as tracks of its own (N-1 videos and N-1 audios)
instead of one composite, so the counters and last pictures that `Peer` keeps
for the composite are kept here per publisher, in `Peer.remote[peerId]`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import cast

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCRtpReceiver
from aiortc.mediastreams import MediaStreamError

from mcu.rtc.jitter import DOWNLINK_MAX_WAIT, DOWNLINK_NACK_RETRY, DOWNLINK_NACK_TRIES
from mcu.rtc.receiver import install_encoded_receiver, install_video_jitter_buffer

from .counters import ReceiveCounters, count_encoded

#: Received audio kept per publisher for analysis (mono samples at 48 kHz).
AUDIO_KEEP_SECONDS = 10


@dataclass
class RemotePublisher(ReceiveCounters):
    """One remote peer's media as received: counters, its latest picture and its audio."""

    peer_id: str
    #: The latest decoded picture (None when not decoding).
    video_frame: av.VideoFrame | None = None
    #: Its tracks have ended: the publisher left (or the server stopped forwarding it).
    ended: bool = False
    _audio: deque[np.ndarray] = field(default_factory=lambda: deque(maxlen=AUDIO_KEEP_SECONDS * 50), repr=False)
    _tasks: dict[MediaStreamTrack, asyncio.Task[None]] = field(default_factory=dict, repr=False)

    def audio(self, seconds: float) -> np.ndarray:
        """The last `seconds` of this publisher's audio, mono int16 at 48 kHz."""
        if not self._audio:
            return np.zeros(0, np.int16)
        return np.concatenate(list(self._audio))[-int(seconds * 48000) :]

    def receive(self, track: MediaStreamTrack, receiver: RTCRtpReceiver, decode: bool) -> None:
        """Consume one of its tracks; call from the peer connection's "track" event."""
        if not decode:
            install_encoded_receiver(receiver)
        elif track.kind == "video":
            # A frame lost for good is given up, as a browser does.
            install_video_jitter_buffer(receiver, DOWNLINK_MAX_WAIT, DOWNLINK_NACK_TRIES, DOWNLINK_NACK_RETRY)
        if not decode:
            self._tasks[track] = asyncio.ensure_future(count_encoded(track, self))
        else:
            consume = self._video if track.kind == "video" else self._sound
            self._tasks[track] = asyncio.ensure_future(consume(track))

    def end(self, track: MediaStreamTrack | None = None) -> None:
        """Stop consuming `track` (None: all of them); with none left the publisher has ended."""
        for each in [track] if track is not None else list(self._tasks):
            task = self._tasks.pop(each, None)
            if task is not None:
                task.cancel()
        self.ended = not self._tasks

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self.end()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _video(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                self.video_frame = cast(av.VideoFrame, await track.recv())
                self.count_picture()
        except MediaStreamError:
            pass

    async def _sound(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = cast(av.AudioFrame, await track.recv())
                samples = frame.to_ndarray().reshape(-1, len(frame.layout.channels))
                self._audio.append(samples.mean(axis=1).astype(np.int16))
                self.audio_frames += 1
        except MediaStreamError:
            pass
