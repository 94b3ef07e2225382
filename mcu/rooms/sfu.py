"""The forwarding room (sfu mode): each publisher's encoded frames go to every other peer as they came.

No decode, no encode. A publisher's receivers hand out encoded frames
(`mcu.rtc.receiver.install_encoded_receiver`); each frame becomes one `av.Packet`
pushed to a `PacketTrack` per subscriber, which aiortc only packetizes. So every peer
of an sfu room sends and receives VP8 and Opus: a forwarder cannot transcode.

A subscriber's keyframe request (PLI/FIR, or its track falling behind) reaches the
publisher as a PLI, at most one per `KEYFRAME_INTERVAL`. When the set of tracks a peer
should receive changes, the server renegotiates with an offer of its own: one in
flight per peer, later changes folded into the next.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
from collections.abc import Callable
from dataclasses import dataclass

import av
from aiortc import (
    MediaStreamTrack,
    RTCPeerConnection,
    RTCRtpCodecCapability,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.exceptions import InvalidAccessError, InvalidStateError, OperationError
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError

from mcu.media.keyframes import is_vp8_keyframe
from mcu.media.tracks import PacketTrack
from mcu.rooms.participant import NegotiationError, Participant
from mcu.rtc.numbering import renegotiation_offer
from mcu.rtc.receiver import install_encoded_receiver, send_pli
from mcu.rtc.sender import send_directly
from signaling import grants, protocol
from signaling.protocol import ProtocolError

logger = logging.getLogger(__name__)

#: At most one PLI per publisher this often (seconds), whatever its subscribers ask.
KEYFRAME_INTERVAL = 0.3
#: RTP clock rates: frame timestamps become packet pts in these units.
TIME_BASES = {"video": fractions.Fraction(1, 90000), "audio": fractions.Fraction(1, 48000)}


def forwarded_codecs(kind: str) -> list[RTCRtpCodecCapability]:
    """What an sfu room carries: VP8 (with RTX) and Opus, the one codec of each kind every peer must speak."""
    wanted = ("audio/opus",) if kind == "audio" else ("video/vp8", "video/rtx")
    return [c for c in RTCRtpSender.getCapabilities(kind).codecs if c.mimeType.lower() in wanted]


@dataclass
class ForwardStats:
    """What a forwarding room did since it opened."""

    #: Frames received from publishers, and packets pushed to subscribers (one per subscriber).
    frames_in: int = 0
    packets_out: int = 0
    #: Keyframes asked for by subscribers, and PLIs sent upstream after rate limiting.
    keyframe_requests: int = 0
    plis: int = 0
    #: Offers the server sent to change what a peer receives.
    offers: int = 0


class Publication:
    """One upstream track of a publisher, fanned out to a PacketTrack per subscriber."""

    def __init__(self, peer_id: str, kind: str, receiver: RTCRtpReceiver, stats: ForwardStats) -> None:
        self.peer_id = peer_id
        self.kind = kind
        self.receiver = receiver
        self.sinks: dict[str, PacketTrack] = {}
        self._stats = stats
        self._last_pli = float("-inf")
        self._pli_timer: asyncio.TimerHandle | None = None

    def forward(self, frame: JitterFrame) -> None:
        """Push one encoded frame to every subscriber, as it came."""
        packet = av.Packet(frame.data)
        packet.pts = frame.timestamp
        packet.time_base = TIME_BASES[self.kind]
        if self.kind == "video":
            packet.is_keyframe = is_vp8_keyframe(frame.data)
        self._stats.frames_in += 1
        for sink in self.sinks.values():
            sink.push(packet)
        self._stats.packets_out += len(self.sinks)

    def subscribe(self, subscriber: str, track: PacketTrack) -> None:
        """Push to `track` for `subscriber` from now on; video restarts on a keyframe of this publisher."""
        track.keyframe_requested = self.request_keyframe
        track.restart()
        self.sinks[subscriber] = track

    def unsubscribe(self, subscriber: str) -> None:
        """Stop pushing to `subscriber`'s track; the track stays the subscriber's (its section may be reused)."""
        track = self.sinks.pop(subscriber, None)
        if track is not None:
            track.keyframe_requested = None

    def request_keyframe(self, reason: str = "pli") -> None:
        """A subscriber needs a keyframe (whatever the `reason`): a PLI now, or once `KEYFRAME_INTERVAL`
        has passed since the last."""
        if self.kind != "video":
            return
        self._stats.keyframe_requests += 1
        if self._pli_timer is not None:
            return  # one is due already: this request is folded into it
        loop = asyncio.get_running_loop()
        wait = self._last_pli + KEYFRAME_INTERVAL - loop.time()
        if wait > 0:
            self._pli_timer = loop.call_later(wait, self._pli)
        else:
            self._pli()

    def _pli(self) -> None:
        self._pli_timer = None
        self._last_pli = asyncio.get_running_loop().time()
        if send_pli(self.receiver):
            self._stats.plis += 1

    def close(self) -> None:
        if self._pli_timer is not None:
            self._pli_timer.cancel()
        for subscriber in list(self.sinks):
            self.unsubscribe(subscriber)


class Forwarder:
    """The peers of one sfu room and what each publishes: every peer receives every other's tracks."""

    def __init__(self) -> None:
        self.peers: dict[str, SfuParticipant] = {}
        self.publications: list[Publication] = []
        self.stats = ForwardStats()

    def add(self, peer: SfuParticipant) -> None:
        self.peers[peer.peer_id] = peer
        for publication in self.publications:
            peer.subscribe(publication)

    def remove(self, peer_id: str) -> None:
        peer = self.peers.pop(peer_id, None)
        for publication in [p for p in self.publications if p.peer_id == peer_id]:
            self.unpublish(publication)
        if peer is not None:
            for publication in self.publications:
                publication.unsubscribe(peer_id)

    def publish(self, publication: Publication) -> None:
        self.publications.append(publication)
        for peer in self.peers.values():
            peer.subscribe(publication)

    def unpublish(self, publication: Publication) -> None:
        if publication not in self.publications:
            return
        self.publications.remove(publication)
        publication.close()
        for peer in self.peers.values():
            peer.unsubscribe(publication)

    def describe(self) -> dict:
        """Counters for the room's stats (HTTP API)."""
        stats = self.stats
        return {
            "forwardedFrames": stats.frames_in,
            "forwardedPackets": stats.packets_out,
            "keyframeRequests": stats.keyframe_requests,
            "plisSent": stats.plis,
            "serverOffers": stats.offers,
            # Frames a subscriber lost: its backlog when it fell behind, deltas while it awaited a keyframe.
            "droppedPackets": sum(track.dropped for peer in self.peers.values() for track in peer.tracks()),
        }


class SfuParticipant(Participant):
    """A peer of an sfu room: its upstream is published as it comes, and it receives the others' tracks.

    Its own offer is answered with no downstream track; from then on the server
    offers whenever what it should receive changes, and the peer answers. A section
    whose publisher left goes inactive and carries the next publisher of its kind,
    so a peer's SDP grows with the room's size, not with its churn.
    """

    def __init__(
        self,
        peer_id: str,
        name: str,
        forwarder: Forwarder,
        send: Callable[[dict], None],
        on_failed: Callable[[Participant], None],
        on_chat: Callable[[Participant, str | bytes], None],
    ) -> None:
        super().__init__(peer_id, name, lambda track, reason: None, lambda *frame: None, on_failed, on_chat)
        self.forwarder = forwarder
        #: Sends a message to this peer's signaling session (the server's offers).
        self._send = send
        #: The publications it should receive, and those it receives: their transceiver and track.
        self._wanted: dict[Publication, None] = {}
        self._sending: dict[Publication, tuple[RTCRtpTransceiver, PacketTrack]] = {}
        #: Sections made inactive by an offer already sent, and their tracks: reused first.
        self._idle: list[tuple[RTCRtpTransceiver, PacketTrack]] = []
        self._answered = False
        self._offer_pending = False
        self._negotiating = False

    def subscribe(self, publication: Publication) -> None:
        if publication.peer_id != self.peer_id and grants.SUBSCRIBE in self.grants:
            self._wanted[publication] = None
            self.negotiate()

    def unsubscribe(self, publication: Publication) -> None:
        wanted = self._wanted.pop(publication, False) is None
        if wanted or publication in self._sending:
            self.negotiate()

    def tracks(self) -> list[PacketTrack]:
        """Every track it receives on, idle sections' included."""
        return [track for _, track in (*self._sending.values(), *self._idle)]

    def track_map(self) -> list[dict]:
        """What the server's offer announces: each sending mid and whose track it carries."""
        return [
            {"mid": transceiver.mid, "peerId": publication.peer_id, "kind": publication.kind}
            for publication, (transceiver, _) in self._sending.items()
        ]

    async def answer(self, offer_sdp: str, ice_servers: list[dict]) -> str:
        sdp = await super().answer(offer_sdp, ice_servers)
        # The caller sends this answer before the task below runs: the server's
        # own offer, with the tracks of the room, follows it.
        self._answered = True
        self.negotiate()
        return sdp

    def negotiate(self) -> None:
        """Offer the peer what changed, unless an offer of ours is in flight (its answer calls this again)."""
        if self._answered and not self._offer_pending and not self._negotiating and not self._closed:
            # Changes made until the offer is out wait for its answer.
            self._negotiating = True
            self._spawn(self._offer())

    async def _offer(self) -> None:
        try:
            pc = self.pc
            if pc is None or not self._apply_changes(pc):
                return
            # In the peer's numbering: a browser refuses an offer that renumbers (mcu/rtc/numbering.py).
            offer = await renegotiation_offer(pc)
            self._offer_pending = True
            self.forwarder.stats.offers += 1
            self._send(protocol.server_offer(offer, self.track_map()))
        except (InvalidStateError, OperationError) as exc:
            logger.warning("%s: could not renegotiate: %s", self.peer_id, exc)
        finally:
            self._negotiating = False

    def _apply_changes(self, pc: RTCPeerConnection) -> bool:
        """Make the transceivers match what the peer should receive; True if anything changed.

        A new publication takes an idle section of its kind, else a new one. A section
        goes idle (inactive) in this offer and may be reused from the next: a client
        then always sees it end before it carries someone else.
        """
        gone = [p for p in self._sending if p not in self._wanted]
        new = [p for p in self._wanted if p not in self._sending]
        for publication in new:
            slot = next((s for s in self._idle if s[1].kind == publication.kind), None)
            if slot is not None:
                self._idle.remove(slot)
                transceiver, track = slot
                transceiver.direction = "sendonly"
            else:
                # The track lives as long as its section: aiortc's sender stops for good with its track.
                track = PacketTrack(publication.kind)
                transceiver = pc.addTransceiver(track, direction="sendonly")
                transceiver.setCodecPreferences(forwarded_codecs(publication.kind))
                send_directly(transceiver.sender, track)  # PLI/FIR too: they reach the publisher
            publication.subscribe(self.peer_id, track)
            self._sending[publication] = (transceiver, track)
        for publication in gone:
            transceiver, track = self._sending.pop(publication)
            transceiver.direction = "inactive"
            publication.unsubscribe(self.peer_id)
            track.restart()  # drop what the publisher left queued
            self._idle.append((transceiver, track))
        return bool(gone or new)

    async def accept(self, answer_sdp: str) -> None:
        """The peer's answer to our offer; then the changes made meanwhile are offered."""
        if not self._offer_pending or self.pc is None:
            raise ProtocolError(protocol.UNEXPECTED_ANSWER, "There is no offer of the server to answer.")
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))
        except (ValueError, OperationError, InvalidStateError, InvalidAccessError) as exc:
            raise NegotiationError(f"The SDP answer could not be applied: {exc}") from exc
        self._offer_pending = False
        self._restart_video()
        self.negotiate()

    def _restart_video(self) -> None:
        """Every video track it receives starts afresh on a keyframe (asked of its publisher)."""
        for publication, (_, track) in self._sending.items():
            if publication.kind == "video":
                track.restart()

    # Participant's hooks: no composite and no mix, forwarding instead.

    def _add_transceivers(self, pc: RTCPeerConnection) -> None:
        # Before the offer, so that the answer keeps only what forwarding can carry.
        for kind in ("audio", "video"):
            pc.addTransceiver(kind, direction="recvonly").setCodecPreferences(forwarded_codecs(kind))

    def _use_codec(self, codec: str | None) -> None:
        pass  # nothing is encoded for it

    def _on_track(self, track: MediaStreamTrack, receiver: RTCRtpReceiver) -> None:
        publication = Publication(self.peer_id, track.kind, receiver, self.forwarder.stats)
        published = grants.PUBLISH in self.grants

        def forward(frame: JitterFrame) -> None:
            # Muted by a moderator (or volume 0): unheard by all. Other volumes need a decode: ignored.
            if published and (publication.kind == "video" or self.audio_gain > 0):
                publication.forward(frame)

        install_encoded_receiver(receiver, forward)
        if published:
            self.forwarder.publish(publication)
        self._spawn(self._unpublish_at_end(track, publication))

    async def _unpublish_at_end(self, track: MediaStreamTrack, publication: Publication) -> None:
        """The frames go to `forward` as they come; the track itself only ends, and its publication with it."""
        try:
            while True:
                await track.recv()
        except MediaStreamError:
            self.forwarder.unpublish(publication)

    def _connected(self) -> None:
        self._restart_video()

    async def close(self) -> None:
        await super().close()
        for publication, (_, track) in list(self._sending.items()):
            publication.unsubscribe(self.peer_id)
            track.stop()
        for _, track in self._idle:
            track.stop()
