"""A WHEP player in Python: plain HTTP and aiortc, no signaling WebSocket (`mcu-client watch`).

What any WHEP player does: POST a receive-only offer to the endpoint, apply the
answer, and DELETE the resource it was given to stop. It keeps what it received as
`Peer` does (the latest picture, the mix played on its own clock), so that tests
can check the colours and tones a viewer gets.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import cast
from urllib.parse import urljoin, urlparse

import aiohttp
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError

from compositor.playout import PlayoutCounts
from mcu.rtc.header_extensions import install_tolerant_extensions
from mcu.rtc.jitter import DOWNLINK_MAX_WAIT, DOWNLINK_NACK_RETRY, DOWNLINK_NACK_TRIES
from mcu.rtc.receiver import install_encoded_receiver, install_video_jitter_buffer
from signaling.ice import is_loopback_host, use_host_addresses

from .playback import AudioPlayback

install_tolerant_extensions()

SDP = "application/sdp"
#: Audio played kept for analysis (mono samples at 48 kHz).
AUDIO_KEEP_SECONDS = 10


class WhepError(Exception):
    """The endpoint refused the offer: its HTTP status and its body."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status
        self.body = body


class WhepViewer:
    """One WHEP session: `start()` to watch the endpoint, `close()` to end it (DELETE)."""

    def __init__(
        self,
        endpoint: str,
        token: str | None = None,
        kinds: tuple[str, ...] = ("audio", "video"),
        decode: bool = True,
    ) -> None:
        #: The WHEP endpoint, e.g. http://host:8080/whep/room1 (add ?tier=low to ask for a tier).
        self.endpoint = endpoint
        self.token = token
        #: What to receive: the mix ("audio"), the composite ("video") or both.
        self.kinds = kinds
        #: False: count frames and bytes without decoding them, as a load peer does (many viewers in one process).
        self.decode = decode
        #: The session's resource, once created (absolute URL), and the headers that came with it.
        self.resource: str | None = None
        self.etag: str | None = None
        self.links: list[str] = []
        self.pc: RTCPeerConnection | None = None
        #: The latest decoded picture and counters, as `client.peer.Peer` keeps them.
        self.video_frame: av.VideoFrame | None = None
        self.video_frames = 0
        self.first_frame_time: float | None = None
        self.audio_frames = 0
        #: Encoded bytes received, counted only when not decoding.
        self.video_bytes = 0
        self.audio_bytes = 0
        self.playout = PlayoutCounts()
        self._audio: deque[np.ndarray] = deque(maxlen=AUDIO_KEEP_SECONDS * 50)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        return headers

    async def start(self) -> None:
        """Offer to receive `kinds`, and apply the answer (WhepError if refused)."""
        if is_loopback_host(urlparse(self.endpoint).hostname or ""):
            use_host_addresses(["127.0.0.1"])  # as `Peer`: a server on this machine is reached on loopback
        self._session = aiohttp.ClientSession()
        pc = self.pc = RTCPeerConnection()
        for kind in self.kinds:
            pc.addTransceiver(kind, direction="recvonly")
        pc.on("track", lambda track: self._on_track(pc, track))
        await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers every candidate first
        async with self._session.post(
            self.endpoint, data=pc.localDescription.sdp, headers=self._headers(SDP)
        ) as response:
            status, body = response.status, await response.text()
            if status == 201:
                self.resource = urljoin(self.endpoint, response.headers["Location"])
                self.etag = response.headers.get("ETag")
                self.links = response.headers.getall("Link", [])
        if status != 201:
            await self.close()
            raise WhepError(status, body)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))

    def _on_track(self, pc: RTCPeerConnection, track: MediaStreamTrack) -> None:
        receiver = next(t.receiver for t in pc.getTransceivers() if t.receiver.track is track)
        if not self.decode:
            install_encoded_receiver(receiver)
            self._tasks.append(asyncio.ensure_future(self._count_encoded(track)))
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
                frame = cast(av.VideoFrame, await track.recv())
                if self.first_frame_time is None:
                    self.first_frame_time = time.monotonic()
                self.video_frame = frame
                self.video_frames += 1
        except MediaStreamError:
            pass

    async def _count_encoded(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                # install_encoded_receiver() made the track yield its frames undecoded.
                frame = cast(JitterFrame, await track.recv())
                if track.kind == "video":
                    if self.first_frame_time is None:
                        self.first_frame_time = time.monotonic()
                    self.video_frames += 1
                    self.video_bytes += len(frame.data)
                else:
                    self.audio_frames += 1
                    self.audio_bytes += len(frame.data)
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
        assert self._session is not None and self.resource is not None
        async with self._session.delete(self.resource, headers=self._headers()) as response:
            return response.status

    async def close(self) -> None:
        """End the session on the server (DELETE) and here."""
        if self._session is not None and self.resource is not None:
            try:
                await self.delete()
            except aiohttp.ClientError:
                pass  # the server is gone: nothing left to end there
        if self.pc is not None:
            await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
