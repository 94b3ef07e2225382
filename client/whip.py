"""A WHIP publisher in Python: plain HTTP and aiortc, no signaling WebSocket.

What any WHIP encoder (OBS Studio, GStreamer) does: POST a send-only offer of its
camera and microphone to the endpoint, apply the answer, and DELETE the resource it
was given to stop. Tests publish known colours and tones through it.
"""

from __future__ import annotations

from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

from mcu.rtc.header_extensions import install_tolerant_extensions

from .peer import codecs_of
from .sdp_resource import SdpRefused, SdpResource

install_tolerant_extensions()

__all__ = ["SdpRefused", "WhipPublisher"]


class WhipPublisher:
    """One WHIP session: `start()` to publish `video` and `audio` at the endpoint, `close()` to end it (DELETE)."""

    def __init__(
        self,
        endpoint: str,
        token: str | None = None,
        video: MediaStreamTrack | None = None,
        audio: MediaStreamTrack | None = None,
        video_codec: str | None = None,
    ) -> None:
        #: The session at the WHIP endpoint, e.g. http://host:8080/whip/room1 (?name=... for its tile).
        self.http = SdpResource(endpoint, token)
        self.video = video
        self.audio = audio
        #: The only video codec offered ("vp8", "h264"); None offers every one aiortc has.
        self.video_codec = video_codec
        self.pc: RTCPeerConnection | None = None

    @property
    def resource(self) -> str | None:
        return self.http.resource

    async def start(self) -> None:
        """Offer to send the tracks, and apply the answer (SdpRefused if refused)."""
        pc = self.pc = RTCPeerConnection()
        for track in (self.audio, self.video):
            if track is None:
                continue
            transceiver = pc.addTransceiver(track, direction="sendonly")
            if track.kind == "video" and self.video_codec is not None:
                transceiver.setCodecPreferences(codecs_of(self.video_codec))
        await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers every candidate first
        try:
            answer = await self.http.create(pc.localDescription.sdp)
        except SdpRefused:
            await self.close()
            raise
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    async def delete(self) -> int:
        """DELETE the session's resource; the HTTP status (200 once, 404 after)."""
        return await self.http.delete()

    async def close(self) -> None:
        """End the session on the server (DELETE) and here."""
        await self.http.close()
        if self.pc is not None:
            await self.pc.close()
