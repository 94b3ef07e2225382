"""The MCU side of signaling: rooms created on first join, removed with their last peer."""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Callable

from aiortc.sdp import candidate_from_sdp

from compositor.layout import BUILT_IN, LayoutError, parse_layout
from compositor.speakers import SpeakerEvents
from mcu import logs
from mcu.config import DEFAULT_TIER, Config
from mcu.rooms.adaptation import Switch
from mcu.rooms.bans import Bans, ban_key
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
#: The name a viewer goes by in logs (it has no tile to show one).
VIEWER_NAME = "viewer"
#: RTMP streams one room may push at once (each keeps a thread, a connection and its tier's encoder).
MAX_STREAMS = 4
#: The name of a WHIP publisher's tile when it gives none (no `?name=`, no token).
PUBLISHER_NAME = "WHIP"


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
        #: Those a moderator removed, kept out for config.kick_ban_seconds; what each peer would be banned by.
        self.bans = Bans(config.kick_ban_seconds)
        self._ban_keys: dict[str, Hashable] = {}
        #: Participants removed by a moderator since the server started (/metrics).
        self.kicks = 0
        #: Told when each viewer ends without being asked to (its media failed, its room closed), by peerId.
        self._viewer_ended: dict[str, Callable[[], None]] = {}
        #: WHIP publishers (participants without a signaling session), by peerId: their room's name and what
        #: to tell when one ends (its media failed, a moderator removed it, the server shuts down).
        self._publishers: dict[str, tuple[str, Callable[[], None]]] = {}
        #: Rooms a WHIP publisher's offer is being answered for, and how many: they stay open meanwhile.
        self._arriving: dict[str, int] = {}

    async def join(self, session: Session, message: Join) -> None:
        granted, claims = self._admit(message)
        banned_by = ban_key(message.room, claims)
        if banned_by is not None and (left := self.bans.remaining(banned_by)) > 0:
            raise ProtocolError(
                protocol.BANNED, f"A moderator removed you from this room; you may join again in {math.ceil(left)} s."
            )
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
        self._check_space(room)
        if room is None:
            room = self._open_room(message.room, message.mode or self.config.mode)
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
                on_screen=room.screen_upstream,
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
        if banned_by is not None:
            self._ban_keys[peer_id] = banned_by
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
                grants=granted,
                layouts=BUILT_IN,
                screens=list(room.sharing),
            )
        )
        self._broadcast(room, protocol.participant_joined(peer_id, message.name), exclude=peer_id)
        # What the room's clients already know about who speaks, the joiner learns at once.
        for speaker in room.audio.speaking:
            session.send(protocol.speaking(speaker, True))
        if room.audio.active_speaker is not None:
            session.send(protocol.active_speaker(room.audio.active_speaker))
        logger.info("room %s: %s (%s) joined", room.name, peer_id, message.name)

    def _check_space(self, room: Room | None) -> None:
        """Refuse one more participant in `room` (None: a room to open) when it is full or the server is."""
        limits = self.config.limits
        if room is None and len(self.rooms) >= limits.max_rooms:
            raise ProtocolError(protocol.TOO_MANY_ROOMS, f"This server holds its maximum of {limits.max_rooms} rooms.")
        if room is not None and len(room.participants) >= limits.max_peers_per_room:
            raise ProtocolError(protocol.ROOM_FULL, f"This room is full ({limits.max_peers_per_room} participants).")

    def _open_room(self, name: str, mode: str) -> Room:
        """A new room, with its first participant to come: by a join or a WHIP publisher's offer."""
        room = self.rooms[name] = Room(name, self.config, mode)
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
        return room

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

    async def leave(self, session: Session, reason: str = protocol.LEFT) -> None:
        """The session's peer leaves its room; the others are told why (`reason`, as participantLeft says)."""
        if session.peer_id is None or session.room is None:
            return
        room = self.rooms.get(session.room)
        peer_id = session.peer_id
        session.peer_id = session.room = None
        self._sessions.pop(peer_id, None)
        if room is None:
            self._ban_keys.pop(peer_id, None)
            return
        await self._remove(room, peer_id, reason)

    async def _remove(self, room: Room, peer_id: str, reason: str) -> None:
        """Take a participant out of `room`, tell the others why, and close the room if it was the last."""
        self._ban_keys.pop(peer_id, None)
        shared = peer_id in room.sharing
        participant = room.remove(peer_id)
        if participant is not None:
            self._close_later(participant)
            logger.info("room %s: %s left", room.name, peer_id)
        self._broadcast(room, protocol.participant_left(peer_id, reason))
        if shared:
            self._broadcast(room, protocol.screen_share(peer_id, False))
        await self._close_if_empty(room)

    async def _close_if_empty(self, room: Room) -> None:
        """Close `room` once nobody is in it, nor on the way in (a WHIP offer being answered)."""
        if not room.empty or self._arriving.get(room.name) or self.rooms.get(room.name) is not room:
            return
        del self.rooms[room.name]
        for viewer_id in list(room.viewers):
            self._end_viewer(room, viewer_id)
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
        room.layout_chosen = True  # a shared screen no longer switches the room to the presentation layout
        logger.info("room %s: layout %s", room.name, room.layout.name)
        self._broadcast(room, protocol.layout_changed(room.layout.to_json(), by))

    async def share(self, session: Session, message: protocol.Share) -> None:
        """Show the peer's video section `message.mid` as its screen, within the room's limit of shares."""
        participant = self.require(session, grants.PUBLISH)
        room = self.rooms[session.room]  # type: ignore[index]
        if room.mode != "mcu":
            raise ProtocolError(protocol.WRONG_MODE, f"A shared screen is composed: not in a {room.mode} room.")
        sharing = participant.peer_id in room.sharing
        if not sharing and len(room.sharing) >= self.config.max_shares:
            raise ProtocolError(
                protocol.SHARE_LIMIT,
                f"This room shows at most {self.config.max_shares} shared screen(s) at once; one is shared now.",
            )
        participant.screen_mid = message.mid
        room.share(participant.peer_id)
        logger.info("room %s: %s shares mid %s", room.name, participant.peer_id, message.mid)
        if not sharing:
            self._broadcast(room, protocol.screen_share(participant.peer_id, True))

    async def stop_share(self, session: Session, message: protocol.StopShare) -> None:
        participant = self._participant(session)
        room = self.rooms[session.room]  # type: ignore[index]
        participant.screen_mid = None
        if not room.unshare(participant.peer_id):
            raise ProtocolError(protocol.NOT_SHARING, "You are not sharing a screen.")
        logger.info("room %s: %s stopped sharing", room.name, participant.peer_id)
        self._broadcast(room, protocol.screen_share(participant.peer_id, False))

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
        for peer_id in list(self._publishers):
            try:
                await self.end_publisher(peer_id)
            except Exception:
                logger.exception("closing WHIP publisher %s at shutdown failed", peer_id)
        if self._closing:
            await asyncio.wait(self._closing, timeout=SHUTDOWN_SECONDS)

    async def watch(
        self,
        room_name: str,
        offer_sdp: str,
        kinds: tuple[str, ...],
        tier: str | None,
        on_ended: Callable[[], None],
    ) -> tuple[Participant, str]:
        """A viewer of a running mcu room: answer its receive-only offer of `kinds` ("audio", "video");
        return it and the SDP answer.

        A viewer is the subscribe-only participant of a token without `publish` (no tile, no voice,
        its downstream fed by its tier's shared encoder and adapted like anyone's), kept in
        `room.viewers` instead of the participant list. `on_ended` is called if it ends on its own.

        :raises ProtocolError: ``room_not_found``, ``wrong_mode``, ``unknown_tier``, ``room_full``, ``invalid_sdp``.
        """
        room = self.rooms.get(room_name)
        if room is None:
            raise ProtocolError(protocol.ROOM_NOT_FOUND, "There is no such room: a viewer watches a room that runs.")
        if room.mode != "mcu":
            raise ProtocolError(protocol.WRONG_MODE, f"This room is a {room.mode} room: it has no composite to watch.")
        tiers = self.config.output_tiers()
        if tier is not None and tier not in tiers:
            raise ProtocolError(
                protocol.UNKNOWN_TIER, f"The tier must be one of {', '.join(sorted(tiers))}, not {tier[:32]!r}."
            )
        limit = self.config.limits.max_viewers_per_room
        if len(room.viewers) >= limit:
            raise ProtocolError(protocol.ROOM_FULL, f"This room has its maximum of {limit} viewers.")
        viewer = Participant(
            secrets.token_hex(6),
            VIEWER_NAME,
            room.video.request_keyframe,
            room.upstream,
            lambda viewer: self._end_viewer(room, viewer.peer_id),
            lambda viewer, data: None,  # a viewer does not chat
            tier=tier or DEFAULT_TIER,
            ladder=room.ladder,
            now=time.monotonic(),
            kinds=kinds,
        )
        viewer.grants = frozenset({grants.SUBSCRIBE})
        viewer.sending_video = viewer.sending_audio = False
        try:
            answer = await viewer.answer(offer_sdp, self.config.ice_servers.for_user(SERVER_TURN_USER))
        except NegotiationError as exc:
            raise ProtocolError(protocol.INVALID_SDP, str(exc)) from exc
        # Looked at again: the room may have closed, or other viewers come, while the offer was answered.
        closed = self.rooms.get(room_name) is not room
        if closed or len(room.viewers) >= limit:
            await viewer.close()
            if closed:
                raise ProtocolError(protocol.ROOM_NOT_FOUND, "The room closed while the offer was answered.")
            raise ProtocolError(protocol.ROOM_FULL, f"This room has its maximum of {limit} viewers.")
        room.add_viewer(viewer)
        self._viewer_ended[viewer.peer_id] = on_ended
        logger.info("room %s: viewer %s (tier %s) watches", room.name, viewer.peer_id, viewer.ceiling)
        return viewer, answer

    def unwatch(self, room_name: str, viewer_id: str) -> bool:
        """End a viewer because it asked to (WHEP DELETE); False when it had already ended."""
        room = self.rooms.get(room_name)
        if room is None or viewer_id not in room.viewers:
            return False
        self._viewer_ended.pop(viewer_id, None)
        self._end_viewer(room, viewer_id)
        return True

    def _end_viewer(self, room: Room, viewer_id: str) -> None:
        """Take the viewer out of the room's outputs and close its connection; tell whoever waits on it."""
        viewer = room.remove_viewer(viewer_id)
        if viewer is None:
            return
        self._close_later(viewer)
        logger.info("room %s: viewer %s left", room.name, viewer_id)
        ended = self._viewer_ended.pop(viewer_id, None)
        if ended is not None:
            ended()

    async def publish(
        self,
        room_name: str,
        name: str,
        claims: tokens.Claims | None,
        offer_sdp: str,
        kinds: tuple[str, ...],
        on_ended: Callable[[], None],
    ) -> tuple[Participant, str]:
        """A WHIP publisher: a participant of an mcu room (opened if need be) made by its send-only offer of
        `kinds`; return it and the SDP answer.

        It is the participant of a token with `publish` alone: a tile and a voice, nothing sent back,
        no signaling session (so nothing to tell it: a visibility change just stops its decoding). The
        others see it join once its offer is answered. `on_ended` is called if it ends on its own.

        :raises ProtocolError: ``banned``, ``wrong_mode``, ``too_many_rooms``, ``room_full``, ``invalid_sdp``.
        """
        banned_by = ban_key(room_name, claims)
        if banned_by is not None and (left := self.bans.remaining(banned_by)) > 0:
            raise ProtocolError(
                protocol.BANNED, f"A moderator removed you from this room; publish again in {math.ceil(left)} s."
            )
        room = self.rooms.get(room_name)
        mode = self.config.mode if room is None else room.mode
        if mode != "mcu":
            raise ProtocolError(protocol.WRONG_MODE, f"This room is a {mode} room: a WHIP publisher joins mcu rooms.")
        self._check_space(room)
        if room is None:
            room = self._open_room(room_name, mode)
        publisher = Participant(
            secrets.token_hex(6),
            name,
            room.video.request_keyframe,
            room.upstream,
            self._media_failed,
            lambda publisher, data: None,  # no chat without signaling
            kinds=kinds,
            dtls_server=True,
        )
        publisher.grants = frozenset({grants.PUBLISH})
        publisher.sending_video, publisher.sending_audio = "video" in kinds, "audio" in kinds
        # Nothing flows back to it: its outbound tracks end, and no encoder is kept for it.
        publisher.video_out.stop()
        publisher.audio_out.stop()
        self._arriving[room_name] = self._arriving.get(room_name, 0) + 1
        try:
            answer = await publisher.answer(offer_sdp, self.config.ice_servers.for_user(SERVER_TURN_USER))
            self._check_space(room)  # again: others may have filled it while the offer was answered
        except BaseException as exc:  # cancelled too: the room must not stay held open
            self._arrived(room_name)
            await publisher.close()
            await self._close_if_empty(room)
            if isinstance(exc, NegotiationError):
                raise ProtocolError(protocol.INVALID_SDP, str(exc)) from exc
            raise
        self._arrived(room_name)
        room.add(publisher)
        self._publishers[publisher.peer_id] = (room_name, on_ended)
        if banned_by is not None:
            self._ban_keys[publisher.peer_id] = banned_by
        self._broadcast(room, protocol.participant_joined(publisher.peer_id, name), exclude=publisher.peer_id)
        if not (publisher.sending_video and publisher.sending_audio):
            media = protocol.participant_media(publisher.peer_id, publisher.sending_video, publisher.sending_audio)
            self._broadcast(room, media, exclude=publisher.peer_id)
        logger.info("room %s: %s (%s) publishes over WHIP", room.name, publisher.peer_id, name)
        return publisher, answer

    def _arrived(self, room_name: str) -> None:
        """A WHIP offer for `room_name` was answered or refused: it no longer holds the room open."""
        self._arriving[room_name] -= 1
        if not self._arriving[room_name]:
            del self._arriving[room_name]

    async def end_publisher(self, peer_id: str, reason: str = protocol.LEFT) -> bool:
        """A WHIP publisher leaves its room (the others are told `reason`); False when it had already ended."""
        entry = self._publishers.pop(peer_id, None)
        if entry is None:
            return False
        room_name, ended = entry
        ended()
        room = self.rooms.get(room_name)
        if room is not None:
            await self._remove(room, peer_id, reason)
        return True

    def _admit(self, message: Join) -> tuple[frozenset[str], tokens.Claims | None]:
        """The grants a join gets and the token's claims: all and None without a secret, else its valid token's."""
        if self.config.secret is None:
            return ALL_GRANTS, None
        if not message.token:
            raise ProtocolError(protocol.UNAUTHORIZED, "This server needs a join token.")
        try:
            claims = tokens.verify(self.config.secret, message.token, message.room)
        except tokens.TokenError as exc:
            raise ProtocolError(protocol.UNAUTHORIZED, str(exc)) from None
        return claims.grants, claims

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
            if participant.peer_id in self._publishers:
                task = asyncio.ensure_future(self.end_publisher(participant.peer_id, protocol.DISCONNECTED))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            return
        session.send_error(protocol.MEDIA_FAILED, "The media connection failed; join again to retry.")
        asyncio.ensure_future(self.leave(session, protocol.DISCONNECTED))

    def media_bytes(self) -> tuple[int, int]:
        """(sent, received) bytes of every peer connection since the server started."""
        receivers = (p for room in self.rooms.values() for p in [*room.participants.values(), *room.viewers.values()])
        return self.traffic.totals(p.pc for p in receivers if p.pc)

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

    async def kick(self, session: Session, message: protocol.Kick) -> None:
        moderator = self.require(session, grants.MODERATE)
        room = self.rooms[session.room]  # type: ignore[index]
        target = room.participants.get(message.peer_id)
        if target is None:
            raise ProtocolError(protocol.UNKNOWN_PEER, "There is no such participant in this room.")
        if target is moderator:
            raise ProtocolError(protocol.INVALID_MESSAGE, "A moderator cannot remove itself: send leave.")
        await self.remove_participant(room, target, message.reason, moderator.peer_id)

    async def remove_participant(
        self, room: Room, target: Participant, reason: str | None, by: str | None = None
    ) -> float:
        """Tell `target` why, take it out of the room (the others hear "kicked") and keep its token out a while;
        returns the seconds of its ban (0: none).

        It leaves as a vanished peer does: its peer connection closes now, its WebSocket once the
        error has been flushed to it.
        """
        self.kicks += 1
        key = self._ban_keys.get(target.peer_id)
        banned = 0.0
        if key is not None and self.bans.seconds > 0:
            self.bans.ban(key)
            banned = self.bans.seconds
        logger.info("room %s: %s removed by %s (banned %g s)", room.name, target.peer_id, by, banned)
        session = self._sessions.get(target.peer_id)
        if session is None:  # a WHIP publisher: nobody to tell why; its resource ends
            await self.end_publisher(target.peer_id, protocol.KICKED_OUT)
            return banned
        session.send_error(
            protocol.KICKED, "A moderator removed you from this room" + (f": {reason}" if reason else ".")
        )
        await self.leave(session, protocol.KICKED_OUT)
        task = asyncio.ensure_future(self._hang_up(session))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        return banned

    @staticmethod
    async def _hang_up(session: Session) -> None:
        """Flush what a removed peer's session has queued (its `kicked`), then close its socket."""
        await session.close()
        await session.ws.close()

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
