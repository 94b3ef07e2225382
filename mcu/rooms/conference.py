"""The MCU side of signaling: rooms created on first join, removed with their last peer."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from pathlib import Path

from aiortc.sdp import candidate_from_sdp

from compositor.layout import LayoutError, parse_layout
from compositor.speakers import SpeakerEvents
from mcu import logs
from mcu.config import DEFAULT_TIER, Config
from mcu.rooms.adaptation import Switch
from mcu.rooms.mesh_relay import MESH, MeshRelay, addressed_to_peer
from mcu.rooms.participant import NegotiationError, Participant
from mcu.rooms.recording import Recording, RecordingError
from mcu.rooms.room import Room
from mcu.rooms.sfu import SfuParticipant
from mcu.rooms.streams import Stream, StreamUrlError
from mcu.rtc.traffic import Traffic
from signaling import grants, protocol, tokens
from signaling.grants import ALL_GRANTS
from signaling.protocol import (
    Answer,
    Candidate,
    Join,
    Offer,
    ProtocolError,
    SetLayout,
    SetMedia,
    StartRecording,
    StartStream,
    StopRecording,
    StopStream,
)
from signaling.websocket import Session

logger = logging.getLogger(__name__)

#: The user the server's own TURN credentials are issued to (clients get their peerId).
SERVER_TURN_USER = "mcu"
#: How long shutdown waits for peer connections to close (their decoder threads to join).
SHUTDOWN_SECONDS = 2.5
#: RTMP streams one room may push at once (each keeps a thread, a connection and its tier's encoder).
MAX_STREAMS = 4


class Conference:
    """Every room of this process, driven by signaling sessions."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.rooms: dict[str, Room] = {}
        self._sessions: dict[str, Session] = {}
        self._closing: set[asyncio.Task[object]] = set()
        self.traffic = Traffic()
        #: Mesh rooms: the signaling passed from peer to peer.
        self.mesh = MeshRelay(self._sessions)

    async def join(self, session: Session, message: Join) -> None:
        granted = self._admit(message)
        tiers = self.config.output_tiers()
        if message.tier is not None and message.tier not in tiers:
            raise ProtocolError(
                protocol.UNKNOWN_TIER, f"The tier must be one of {', '.join(sorted(tiers))}, not {message.tier[:32]!r}."
            )
        room = self.rooms.get(message.room)
        if room is not None and message.mode is not None and message.mode != room.mode:
            raise ProtocolError(
                protocol.MODE_MISMATCH, f"This room is a {room.mode} room; join it without a mode or as {room.mode}."
            )
        limits = self.config.limits
        if room is None and len(self.rooms) >= limits.max_rooms:
            raise ProtocolError(protocol.TOO_MANY_ROOMS, f"This server holds its maximum of {limits.max_rooms} rooms.")
        if room is not None and len(room.participants) >= limits.max_peers_per_room:
            raise ProtocolError(protocol.ROOM_FULL, f"This room is full ({limits.max_peers_per_room} participants).")
        if room is None:
            room = self.rooms[message.room] = Room(message.room, self.config, message.mode or self.config.mode)
            room.audio.on_speakers = lambda events, room=room: self._speakers(room, events)
            room.on_tier = self._tier_changed
            room.on_visibility = self._visibility_changed
            room.on_stream = lambda stream, room=room: self._stream_changed(room, stream)
            logger.info("room %s: created", room.name)
            if self.config.auto_record:
                try:
                    self.begin_recording(room)
                except ProtocolError as exc:
                    logger.error("room %s: could not record: %s", room.name, exc.message)
        peer_id = secrets.token_hex(6)
        others = [
            {"peerId": p.peer_id, "name": p.name, "video": p.sending_video, "audio": p.sending_audio}
            for p in room.participants.values()
        ]
        if room.forwarder is not None:
            participant: Participant = SfuParticipant(
                peer_id, message.name, room.forwarder, session.send, self._media_failed, room.chat.receive
            )
        else:
            participant = Participant(
                peer_id,
                message.name,
                room.video.request_keyframe,
                room.upstream,
                self._media_failed,
                room.chat.receive,
                tier=message.tier or DEFAULT_TIER,
                hide_self=message.hide_self,
                ladder=room.ladder if grants.SUBSCRIBE in granted else None,
                now=time.monotonic(),
            )
        participant.grants = granted
        if grants.PUBLISH not in granted:
            # A viewer: no tile, no voice in the mix, whatever it sends.
            participant.sending_video = participant.sending_audio = False
        if grants.SUBSCRIBE not in granted:
            # Nothing flows to it: its outbound tracks end, and no encoder is kept for it.
            participant.video_out.stop()
            participant.audio_out.stop()
        room.add(participant)
        session.peer_id, session.room = peer_id, room.name
        logs.bind(room.name, peer_id)
        self._sessions[peer_id] = session
        recording = room.recording.describe() if room.recording is not None and room.recording.started_at else None
        session.send(
            protocol.joined(
                room.name,
                peer_id,
                others,
                self.config.ice_servers.for_user(peer_id),
                recording,
                layout=room.layout.to_json(),
                mode=room.mode,
            )
        )
        self._broadcast(room, protocol.participant_joined(peer_id, message.name), exclude=peer_id)
        # What the room's clients already know about who speaks, the joiner learns at once.
        for speaker in room.audio.speaking:
            session.send(protocol.speaking(speaker, True))
        if room.audio.active_speaker is not None:
            session.send(protocol.active_speaker(room.audio.active_speaker))
        logger.info("room %s: %s (%s) joined", room.name, peer_id, message.name)

    async def offer(self, session: Session, message: Offer) -> None:
        if self._relayed(session, "offer", message):
            return
        participant = self._participant(session)
        try:
            sdp = await participant.answer(message.sdp, self.config.ice_servers.for_user(SERVER_TURN_USER))
        except NegotiationError as exc:
            raise ProtocolError(protocol.INVALID_SDP, str(exc)) from exc
        session.send(protocol.answer(sdp))

    async def answer(self, session: Session, message: Answer) -> None:
        """The client's answer to a server offer (an sfu room's renegotiation), or a mesh peer's to relay."""
        if self._relayed(session, "answer", message):
            return
        participant = self._participant(session)
        if not isinstance(participant, SfuParticipant):
            raise ProtocolError(protocol.UNEXPECTED_ANSWER, "There is no offer of the server to answer.")
        try:
            await participant.accept(message.sdp)
        except NegotiationError as exc:
            raise ProtocolError(protocol.INVALID_SDP, str(exc)) from exc

    async def candidate(self, session: Session, message: Candidate) -> None:
        if self._relayed(session, "candidate", message):
            return
        pc = self._participant(session).pc
        if pc is None:
            raise ProtocolError(protocol.INVALID_CANDIDATE, "Send the offer before ICE candidates.")
        if not message.candidate:
            await pc.addIceCandidate(None)
            return
        try:
            candidate = candidate_from_sdp(message.candidate.removeprefix("candidate:"))
        except (ValueError, IndexError) as exc:
            raise ProtocolError(protocol.INVALID_CANDIDATE, "The ICE candidate could not be parsed.") from exc
        candidate.sdpMid = message.sdp_mid
        candidate.sdpMLineIndex = message.sdp_mline_index
        if candidate.sdpMid is None and candidate.sdpMLineIndex is None:
            candidate.sdpMLineIndex = 0
        await pc.addIceCandidate(candidate)

    async def set_media(self, session: Session, message: SetMedia) -> None:
        participant = self._participant(session)
        if (message.video or message.audio) and grants.PUBLISH not in participant.grants:
            raise ProtocolError(protocol.FORBIDDEN, "You may watch and listen in this room, not publish.")
        participant.visibility.camera_toggles += participant.sending_video != message.video
        participant.sending_video, participant.sending_audio = message.video, message.audio
        room = self.rooms[session.room]  # type: ignore[index]
        self._broadcast(room, protocol.participant_media(participant.peer_id, message.video, message.audio))

    async def leave(self, session: Session) -> None:
        if session.peer_id is None or session.room is None:
            return
        room = self.rooms.get(session.room)
        peer_id = session.peer_id
        session.peer_id = session.room = None
        self._sessions.pop(peer_id, None)
        if room is None:
            return
        participant = room.remove(peer_id)
        if participant is not None:
            self._close_later(participant)
            logger.info("room %s: %s left", room.name, peer_id)
        self._broadcast(room, protocol.participant_left(peer_id))
        if room.empty:
            del self.rooms[room.name]
            await room.close()
            logger.info("room %s: closed", room.name)

    async def set_layout(self, session: Session, message: SetLayout) -> None:
        participant = self.require(session, grants.LAYOUT)
        self.change_layout(self.rooms[session.room], message.layout, participant.peer_id)  # type: ignore[index]

    def change_layout(self, room: Room, data: object, by: str | None = None) -> None:
        """Give `room` the layout `data` (its wire form) from its next tick on, and tell its peers.

        :raises ProtocolError: ``invalid_layout``, saying what is wrong with it.
        """
        try:
            room.layout = parse_layout(data)
        except LayoutError as exc:
            raise ProtocolError(protocol.INVALID_LAYOUT, str(exc)) from None
        logger.info("room %s: layout %s", room.name, room.layout.name)
        self._broadcast(room, protocol.layout_changed(room.layout.to_json(), by))

    async def start_recording(self, session: Session, message: StartRecording) -> None:
        self.require(session, grants.RECORD)
        self.begin_recording(self.rooms[session.room])  # type: ignore[index]

    async def stop_recording(self, session: Session, message: StopRecording) -> None:
        self.require(session, grants.RECORD)
        await self.end_recording(self.rooms[session.room])  # type: ignore[index]

    def begin_recording(self, room: Room) -> Recording:
        """Start recording `room` (signaling, HTTP or --auto-record); its peers are told at the file's first picture."""
        if room.recording is not None:
            raise ProtocolError(protocol.ALREADY_RECORDING, "This room is already being recorded.")
        if room.mode == MESH:
            raise ProtocolError(protocol.RECORDING_FAILED, "A mesh room's media never reaches the server to record.")
        if room.forwarder is not None:
            raise ProtocolError(protocol.RECORDING_FAILED, "An sfu room forwards: nothing is composed to record.")
        if self.config.record_dir is None:
            raise ProtocolError(protocol.RECORDING_FAILED, "This server does not record (no --record-dir).")
        if self.config.encode_per_peer:
            raise ProtocolError(protocol.RECORDING_FAILED, "The per-peer baseline has no shared stream to record.")
        try:
            recording = room.start_recording(
                Path(self.config.record_dir), self._recording_started, self._recording_failed
            )
        except RecordingError as exc:
            raise ProtocolError(protocol.RECORDING_FAILED, str(exc)) from None
        logger.info("room %s: recording to %s", room.name, recording.path)
        return recording

    def _recording_room(self, recording: Recording) -> Room | None:
        """The room `recording` is still recording (None once it stopped or the room closed)."""
        room = self.rooms.get(recording.room)
        return room if room is not None and room.recording is recording else None

    def _recording_started(self, recording: Recording) -> None:
        """The file has its first picture: tell the room when its time 0 was."""
        room = self._recording_room(recording)
        if room is not None:
            described = recording.describe()
            self._broadcast(room, protocol.recording_started(described["file"], described["startedAt"]))

    async def end_recording(self, room: Room) -> Recording:
        """Stop `room`'s recording, finish its file and tell its peers."""
        recording = await room.stop_recording()
        if recording is None:
            raise ProtocolError(protocol.NOT_RECORDING, "This room is not being recorded.")
        reason = "stopped" if recording.error is None else "failed"
        self._broadcast(room, self._recording_stopped(recording, reason))
        return recording

    def _recording_stopped(self, recording: Recording, reason: str) -> dict:
        described = recording.describe()
        return protocol.recording_stopped(
            described["file"], described["startedAt"], round(recording.duration, 3), reason, recording.error
        )

    async def start_stream(self, session: Session, message: StartStream) -> None:
        self.require(session, grants.RECORD)
        self.begin_stream(self.rooms[session.room], message.url, message.tier)  # type: ignore[index]

    async def stop_stream(self, session: Session, message: StopStream) -> None:
        self.require(session, grants.RECORD)
        await self.end_stream(self.rooms[session.room], message.id)  # type: ignore[index]

    def begin_stream(self, room: Room, url: str, tier: str | None) -> Stream:
        """Push `room`'s composite and mix to an RTMP(S) URL (signaling or HTTP); the room hears when it is live."""
        tiers = self.config.output_tiers()
        if tier is not None and tier not in tiers:
            raise ProtocolError(
                protocol.UNKNOWN_TIER, f"The tier must be one of {', '.join(sorted(tiers))}, not {tier[:32]!r}."
            )
        if room.mode != "mcu":
            raise ProtocolError(protocol.STREAM_FAILED, f"A {room.mode} room composes nothing to stream.")
        if self.config.encode_per_peer:
            raise ProtocolError(protocol.STREAM_FAILED, "The per-peer baseline has no shared stream.")
        if len(room.streams) >= MAX_STREAMS:
            raise ProtocolError(protocol.TOO_MANY_STREAMS, f"A room streams to {MAX_STREAMS} places at most.")
        try:
            stream = room.start_stream(url, tier or DEFAULT_TIER)
        except StreamUrlError as exc:
            raise ProtocolError(protocol.INVALID_STREAM_URL, str(exc)) from None
        logger.info("room %s: %s (%s)", room.name, stream.label, stream.tier)
        return stream

    async def end_stream(self, room: Room, stream_id: str) -> Stream:
        """Stop one of `room`'s streams and tell its peers."""
        stream = await room.stop_stream(stream_id)
        if stream is None:
            raise ProtocolError(protocol.UNKNOWN_STREAM, "This room has no such stream.")
        self._broadcast(room, protocol.stream_stopped(stream.describe(), "stopped"))
        return stream

    def _stream_changed(self, room: Room, stream: Stream) -> None:
        """A stream went live, or an attempt failed (it tries again): tell the room."""
        if self.rooms.get(room.name) is not room:
            return
        if stream.state == "live":
            self._broadcast(room, protocol.stream_started(stream.describe()))
        elif stream.state == "retrying":
            self._broadcast(room, protocol.stream_failed(stream.describe()))

    def _recording_failed(self, recording: Recording, message: str) -> None:
        """A write failed (full disk...): the room goes on without it; what was written stays."""
        room = self._recording_room(recording)
        if room is not None:
            task = asyncio.ensure_future(self.end_recording(room))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Server shutdown: tell every peer, close every room (finishing its recording), hang up.

        Bounded to SHUTDOWN_SECONDS, well inside the 5 s an orchestrator gives
        between SIGTERM and SIGKILL.
        """
        sessions = list(self._sessions.values())
        for session in sessions:
            session.send_error(protocol.SERVER_SHUTDOWN, "The server is shutting down; join again in a moment.")
        for session in sessions:
            peer_id = session.peer_id
            try:
                await self.leave(session)
            except Exception:
                # One peer or room that fails to close must not keep the others (and their recordings) open.
                logger.exception("closing %s at shutdown failed", peer_id)
        # Flush what each session has queued (the shutdown notice), then close its WebSocket.
        for failure in await asyncio.gather(*(session.close() for session in sessions), return_exceptions=True):
            if isinstance(failure, Exception):
                logger.error("a session failed to close at shutdown", exc_info=failure)
        await asyncio.gather(*(session.ws.close() for session in sessions), return_exceptions=True)
        if self._closing:
            await asyncio.wait(self._closing, timeout=SHUTDOWN_SECONDS)

    def _admit(self, message: Join) -> frozenset[str]:
        """The grants a join gets: all without a secret, else those of its valid token."""
        if self.config.secret is None:
            return ALL_GRANTS
        if not message.token:
            raise ProtocolError(protocol.UNAUTHORIZED, "This server needs a join token.")
        try:
            return tokens.verify(self.config.secret, message.token, message.room).grants
        except tokens.TokenError as exc:
            raise ProtocolError(protocol.UNAUTHORIZED, str(exc)) from None

    def require(self, session: Session, grant: str) -> Participant:
        """The session's participant, if it holds `grant` (signaling/grants.py); else `forbidden`."""
        participant = self._participant(session)
        if grant not in participant.grants:
            raise ProtocolError(protocol.FORBIDDEN, f"You are not allowed to do this here (needs {grant!r}).")
        return participant

    def _relayed(self, session: Session, kind: str, message: Offer | Answer | Candidate) -> bool:
        """Mesh rooms: pass a peer's `kind` message on to its `to` (mcu/rooms/mesh_relay.py); False when it is
        for the server."""
        room = self.rooms[session.room]  # type: ignore[index]
        if not addressed_to_peer(room.mode, message.to, kind):
            return False
        self.mesh.relay(session.peer_id, room.participants, message)  # type: ignore[arg-type]
        return True

    def _participant(self, session: Session) -> Participant:
        room = self.rooms[session.room]  # type: ignore[index]
        return room.participants[session.peer_id]  # type: ignore[index]

    def _media_failed(self, participant: Participant) -> None:
        """ICE or DTLS failed: the peer leaves, as if its WebSocket had closed."""
        session = self._sessions.get(participant.peer_id)
        if session is None:
            return
        session.send_error(protocol.MEDIA_FAILED, "The media connection failed; join again to retry.")
        asyncio.ensure_future(self.leave(session))

    def media_bytes(self) -> tuple[int, int]:
        """(sent, received) bytes of every peer connection since the server started."""
        return self.traffic.totals(p.pc for room in self.rooms.values() for p in room.participants.values() if p.pc)

    def _close_later(self, participant: Participant) -> None:
        if participant.pc is not None:
            self.traffic.depart(participant.pc)
        # Closing a peer connection joins its decoder threads: not on the caller's time.
        task = asyncio.ensure_future(participant.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def moderate_audio(self, session: Session, message: protocol.ModerateAudio) -> None:
        moderator = self.require(session, grants.MODERATE)
        room = self.rooms[session.room]  # type: ignore[index]
        target = room.participants.get(message.peer_id)
        if target is None:
            raise ProtocolError(protocol.PARTICIPANT_NOT_FOUND, "There is no such participant in this room.")
        self.set_participant_audio(room, target, message.muted, message.volume, moderator.peer_id)

    def set_participant_audio(
        self, room: Room, target: Participant, muted: bool | None, volume: float | None, by: str | None = None
    ) -> None:
        """Mute/unmute `target` in every mix or scale its voice (from the next audio tick), and tell the room."""
        if muted is not None:
            target.moderator_muted = muted
        if volume is not None:
            target.volume = volume
        logger.info("room %s: %s muted=%s volume=%s by %s", room.name, target.peer_id, muted, volume, by)
        self._broadcast(room, protocol.participant_audio(target.peer_id, target.moderator_muted, target.volume, by))

    def _tier_changed(self, participant: Participant, switch: Switch) -> None:
        """A receiver moved to another tier: tell it which, and why."""
        logger.info(
            "%s: tier %s (%s, estimate %s bit/s)", participant.peer_id, switch.tier, switch.reason, switch.estimate
        )
        session = self._sessions.get(participant.peer_id)
        if session is not None:
            session.send(protocol.tier(switch.tier, switch.reason, participant.ceiling))

    def _visibility_changed(self, participant: Participant) -> None:
        """A publisher went on or off screen, or its video is wanted again or no longer: tell it."""
        session = self._sessions.get(participant.peer_id)
        if session is not None:
            visibility = participant.visibility
            session.send(protocol.visibility(bool(visibility.on_screen), visibility.send_video))

    def _speakers(self, room: Room, events: SpeakerEvents) -> None:
        """Tell the room who started or stopped speaking, and who now holds the floor."""
        for peer_id in events.stopped:
            self._broadcast(room, protocol.speaking(peer_id, False))  # type: ignore[arg-type]
        for peer_id in events.started:
            self._broadcast(room, protocol.speaking(peer_id, True))  # type: ignore[arg-type]
        if events.floor_changed:
            self._broadcast(room, protocol.active_speaker(events.active))  # type: ignore[arg-type]

    def _broadcast(self, room: Room, message: dict, exclude: str | None = None) -> None:
        for peer_id in room.participants:
            if peer_id != exclude and (session := self._sessions.get(peer_id)) is not None:
                session.send(message)
