"""A WHEP player in Python: plain HTTP and aiortc, no signaling WebSocket (`mcu-client watch`).

What any WHEP player does: POST a receive-only offer to the endpoint, apply the
answer, and DELETE the resource it was given to stop. It keeps what it received as
`Peer` does (the latest picture, the mix played on its own clock), so that tests
can check the colours and tones a viewer gets.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import cast

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from compositor.playout import PlayoutCounts
from mcu.rtc.header_extensions import install_tolerant_extensions
from mcu.rtc.jitter import DOWNLINK_MAX_WAIT, DOWNLINK_NACK_RETRY, DOWNLINK_NACK_TRIES
from mcu.rtc.receiver import install_encoded_receiver, install_video_jitter_buffer

from .counters import ReceiveCounters, count_encoded
from .playback import AudioPlayback
from .sdp_resource import SDP, SdpRefused, SdpResource

install_tolerant_extensions()

__all__ = ["SDP", "WhepError", "WhepViewer"]

#: Audio played kept for analysis (mono samples at 48 kHz).
AUDIO_KEEP_SECONDS = 10
#: What a refused offer raises: the endpoint's status and body.
WhepError = SdpRefused


class WhepViewer(ReceiveCounters):
    """One WHEP session: `start()` to watch the endpoint, `close()` to end it (DELETE).

    Its counters (frames, and bytes when not decoding) are a remote publisher's (client/counters.py).
    """

    # A session is itself, not the counts the dataclass it takes them from would compare.
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __init__(
        self,
        endpoint: str,
        token: str | None = None,
        kinds: tuple[str, ...] = ("audio", "video"),
        decode: bool = True,
    ) -> None:
        #: The session at the WHEP endpoint, e.g. http://host:8080/whep/room1 (add ?tier=low to ask for a tier).
        self.http = SdpResource(endpoint, token)
        #: What to receive: the mix ("audio"), the composite ("video") or both.
        self.kinds = kinds
        #: False: count frames and bytes without decoding them, as a load peer does (many viewers in one process).
        self.decode = decode
        self.pc: RTCPeerConnection | None = None
        super().__init__()
        #: The latest decoded picture, as `client.peer.Peer` keeps it.
        self.video_frame: av.VideoFrame | None = None
        self.playout = PlayoutCounts()
        self._audio: deque[np.ndarray] = deque(maxlen=AUDIO_KEEP_SECONDS * 50)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def resource(self) -> str | None:
        return self.http.resource

    @property
    def etag(self) -> str | None:
        return self.http.etag

    @property
    def links(self) -> list[str]:
        return self.http.links

    async def start(self) -> None:
        """Offer to receive `kinds`, and apply the answer (WhepError if refused)."""
        pc = self.pc = RTCPeerConnection()
        for kind in self.kinds:
            pc.addTransceiver(kind, direction="recvonly")
        pc.on("track", lambda track: self._on_track(pc, track))
        await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers every candidate first
        try:
            answer = await self.http.create(pc.localDescription.sdp)
        except SdpRefused:
            await self.close()
            raise
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    def _on_track(self, pc: RTCPeerConnection, track: MediaStreamTrack) -> None:
        receiver = next(t.receiver for t in pc.getTransceivers() if t.receiver.track is track)
        if not self.decode:
            install_encoded_receiver(receiver)
            self._tasks.append(asyncio.ensure_future(count_encoded(track, self)))
        elif track.kind == "audio":
            playback = AudioPlayback(self._play_audio, self.playout)
            install_encoded_receiver(receiver, playback.take, audio_in_order=False)
            self._tasks.append(asyncio.ensure_future(playback.play(track)))
        else:
            install_video_jitter_buffer(receiver, DOWNLINK_MAX_WAIT, DOWNLINK_NACK_TRIES, DOWNLINK_NACK_RETRY)
            self._tasks.append(asyncio.ensure_future(self._consume_video(track)))

    async def _consume_video(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                self.video_frame = cast(av.VideoFrame, await track.recv())
                self.count_picture()
        except MediaStreamError:
            pass

    def _play_audio(self, samples: np.ndarray, pts: int) -> None:
        self._audio.append(samples)
        self.audio_frames += 1

    def audio(self, seconds: float) -> np.ndarray:
        """The last `seconds` of the mix played, mono int16 at 48 kHz."""
        if not self._audio:
            return np.zeros(0, np.int16)
        return np.concatenate(list(self._audio))[-int(seconds * 48000) :]

    async def delete(self) -> int:
        """DELETE the session's resource; the HTTP status (200 once, 404 after)."""
        return await self.http.delete()

    async def close(self) -> None:
        """End the session on the server (DELETE) and here."""
        await self.http.close()
        if self.pc is not None:
            await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
