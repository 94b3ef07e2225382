"""The Python client in a mesh room: one peer connection to every other participant.

The server relays signaling only (``to`` / ``from``, docs/protocol.md "Room modes"). The
newcomer offers to everyone listed in ``joined`` and the others answer, so two peers never
offer to each other at once. Each local source feeds every connection through one
MediaRelay, so a source is read once however many peers receive it (aiortc still
encodes once per connection, as a browser in a mesh does).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpTransceiver, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.sdp import candidate_from_sdp

from signaling.ice import rtc_configuration
from signaling.protocol import Answer, Candidate, Offer, Relayed

logger = logging.getLogger(__name__)

#: Sends one signaling message to the server.
Send = Callable[[dict[str, Any]], Awaitable[None]]
#: Called with (peerId, track, transceiver) for each track a remote peer sends.
OnTrack = Callable[[str, MediaStreamTrack, RTCRtpTransceiver], None]


class MeshLinks:
    """The peer connections of one participant of a mesh room, by remote peerId."""

    def __init__(
        self,
        send: Send,
        ice_servers: list[dict],
        sources: list[MediaStreamTrack],
        on_track: OnTrack,
        ice_transport_policy: str = "all",
        gathered: Callable[[RTCPeerConnection], None] | None = None,
    ) -> None:
        self._send = send
        #: Called with each connection once it has gathered its sockets (Peer's impairment).
        self._gathered = gathered
        self._ice_servers = ice_servers
        self._policy = ice_transport_policy
        self._sources = sources
        self._on_track = on_track
        self._relay = MediaRelay()
        self.pcs: dict[str, RTCPeerConnection] = {}
        #: When each connection became connected (time.monotonic()).
        self.connected_time: dict[str, float] = {}
        #: The peers whose answer to our offer has arrived.
        self.answered: set[str] = set()

    async def handle(self, relayed: Relayed) -> None:
        """Another peer's ``offer``, ``answer`` or ``candidate``, relayed by the server."""
        sender, message = relayed.sender, relayed.message
        try:
            match message:
                case Offer():
                    await self.on_offer(sender, message.sdp)
                case Answer():
                    await self.on_answer(sender, message.sdp)
                case Candidate():
                    await self.on_candidate(sender, message)
        except Exception:
            # Another peer's SDP or candidate that aiortc refuses costs that link, not our session.
            kind = type(message).__name__.lower()
            logger.warning("mesh: %s from %s could not be applied", kind, sender, exc_info=True)

    async def offer_to(self, peer_id: str) -> None:
        """Open a connection to `peer_id` (we are the newcomer): offer our media."""
        pc = self._create(peer_id)
        for source in self._sources:
            pc.addTransceiver(self._feed(source), direction="sendrecv")
        for kind in {"audio", "video"} - {source.kind for source in self._sources}:
            pc.addTransceiver(kind, direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        if self._gathered is not None:
            self._gathered(pc)
        await self._send(Offer(pc.localDescription.sdp, to=peer_id).to_message())

    async def on_offer(self, peer_id: str, sdp: str) -> None:
        """A newcomer (or a renegotiating peer) offers: answer with our media."""
        pc = self.pcs.get(peer_id) or self._create(peer_id)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        sending = {t.sender.track.kind for t in pc.getTransceivers() if t.sender.track is not None}
        for source in self._sources:
            if source.kind not in sending:
                pc.addTrack(self._feed(source))
        await pc.setLocalDescription(await pc.createAnswer())
        if self._gathered is not None:
            self._gathered(pc)
        await self._send(Answer(pc.localDescription.sdp, to=peer_id).to_message())

    async def on_answer(self, peer_id: str, sdp: str) -> None:
        pc = self.pcs.get(peer_id)
        if pc is not None and pc.signalingState == "have-local-offer":
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
            self.answered.add(peer_id)

    async def on_candidate(self, peer_id: str, trickled: Candidate) -> None:
        """A trickled candidate of `peer_id` (browsers trickle; aiortc puts all in its SDP)."""
        pc = self.pcs.get(peer_id)
        if pc is None or pc.remoteDescription is None:
            return
        if not trickled.candidate:
            await pc.addIceCandidate(None)
            return
        candidate = candidate_from_sdp(trickled.candidate.removeprefix("candidate:"))
        candidate.sdpMid = trickled.sdp_mid
        candidate.sdpMLineIndex = trickled.sdp_mline_index
        await pc.addIceCandidate(candidate)

    async def drop(self, peer_id: str) -> None:
        """`peer_id` left the room: close our connection to it (its tracks end)."""
        pc = self.pcs.pop(peer_id, None)
        self.answered.discard(peer_id)
        if pc is not None:
            await pc.close()

    async def close(self) -> None:
        await asyncio.gather(*(self.drop(peer_id) for peer_id in list(self.pcs)))

    def _feed(self, source: MediaStreamTrack) -> MediaStreamTrack:
        # Video: the latest frame only (a late connection starts now, not with a backlog);
        # audio: every frame, so that nobody hears gaps.
        return self._relay.subscribe(source, buffered=source.kind == "audio")

    def _create(self, peer_id: str) -> RTCPeerConnection:
        pc = RTCPeerConnection(rtc_configuration(self._ice_servers, self._policy))
        self.pcs[peer_id] = pc

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            transceiver = next(t for t in pc.getTransceivers() if t.receiver.track is track)
            self._on_track(peer_id, track, transceiver)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState == "connected":
                self.connected_time[peer_id] = time.monotonic()

        return pc
