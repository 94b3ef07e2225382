"""The Python client: joins a room, sends one upstream, receives the composite.

`Peer` is both what `mcu-client` runs and the library the tests drive: it keeps
what it received (the latest picture, keyframe arrivals, the audio as samples)
so a caller can check the composite's colours and the mix's tones. The mix is
played on a 20 ms clock of its own (client/playback.py), so its samples are a
real-time timeline: a loss or a late packet shows in them as it would be heard.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from typing import Any, cast
from urllib.parse import urlparse

import aiohttp
import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCDataChannel,
    RTCPeerConnection,
    RTCRtpCodecCapability,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError

from compositor.playout import PlayoutCounts
from mcu.rtc.header_extensions import install_tolerant_extensions
from mcu.rtc.jitter import DOWNLINK_MAX_WAIT, DOWNLINK_NACK_RETRY, DOWNLINK_NACK_TRIES
from mcu.rtc.receiver import install_encoded_receiver, install_video_jitter_buffer
from signaling import chat, protocol
from signaling.chat import ChatMessage
from signaling.ice import is_loopback_host, is_turn_url, rtc_configuration, use_host_addresses

from .impaired_ice import ImpairedIce, impair_ice
from .impairment import Impairments
from .mesh import MeshLinks
from .pausable import PausableVideoTrack
from .playback import AudioPlayback, audio_frame
from .recorder import Recorder
from .remote import RemotePublisher

logger = logging.getLogger(__name__)
install_tolerant_extensions()

#: Audio played kept for analysis (mono samples at 48 kHz).
AUDIO_KEEP_SECONDS = 10
#: After a `reconnect` error, how long the peer keeps trying to join the room again.
REJOIN_SECONDS = 30


def codecs_of(name: str) -> list[RTCRtpCodecCapability]:
    """Our video capabilities for one codec ("vp8", "h264"), with RTX: what a client limited to it offers."""
    codecs = RTCRtpSender.getCapabilities("video").codecs
    chosen = [c for c in codecs if c.mimeType.lower() in (f"video/{name.lower()}", "video/rtx")]
    if len(chosen) == len([c for c in codecs if c.mimeType.lower() == "video/rtx"]):
        raise ValueError(f"unknown video codec {name!r}")
    return chosen


class PeerError(Exception):
    """The server refused or dropped this peer."""


class Peer:
    """One participant driven from Python."""

    def __init__(
        self,
        url: str,
        room: str,
        name: str,
        video: MediaStreamTrack | None = None,
        audio: MediaStreamTrack | None = None,
        record: str | None = None,
        decode: bool = True,
        ice_transport_policy: str = "all",
        chat: bool = True,
        token: str | None = None,
        tier: str | None = None,
        hide_self: bool = False,
        video_codec: str | None = None,
        mode: str | None = None,
        impairment: Impairments | None = None,
        honour_visibility: bool = True,
    ) -> None:
        self.url = url
        #: Loss, delay, jitter... put on every datagram our peer connections send and receive
        #: (client/impairment.py), and the links doing it, with their counters, once joined.
        self.impairment = impairment
        self.impaired: ImpairedIce | None = None
        #: The room mode asked for at join ("mcu", "sfu", "mesh"; None: the server's default).
        self.mode = mode
        #: sfu and mesh rooms: what each other publisher sends, by peerId (client/remote.py).
        self.remote: dict[str, RemotePublisher] = {}
        #: mesh rooms: our peer connection to each other participant (client/mesh.py).
        self.mesh: MeshLinks | None = None
        #: The output tier to receive (None: the server's default), whether to leave our own
        #: tile out of it, and the only video codec to offer ("vp8", "h264"; None: all).
        self.tier = tier
        self.hide_self = hide_self
        self.video_codec = video_codec
        #: The join token a server with a secret asks for (`mcu token`).
        self.token = token
        self._chat = chat
        self.room = room
        self.name = name
        self.peer_id: str | None = None
        self.participants: dict[str, str] = {}
        #: The room's layout as the server last announced it (`joined`, `layoutChanged`).
        self.layout: str | dict[str, Any] | None = None
        #: The tier the server last said it sends us (`tier`; None: the one asked for at join).
        self.received_tier: str | None = None
        #: Every message from the server as it came, those it does not act on too (`speaking`...),
        #: and the `error` ones among them as read.
        self.events: list[dict[str, Any]] = []
        self.errors: list[protocol.Error] = []
        #: The server's last `joined` (its ICE servers and the participants to offer to in a mesh room).
        self._joined_message: protocol.Joined | None = None
        self.pc: RTCPeerConnection | None = None
        #: The "chat" data channel, the chat messages received (own ones included,
        #: as the server echoes them) and the errors it sent back on the channel.
        self.chat_channel: RTCDataChannel | None = None
        self.chat_messages: list[ChatMessage] = []
        self.chat_errors: list[protocol.Error] = []
        #: The latest decoded composite picture and counters about it.
        self.video_frame: av.VideoFrame | None = None
        self.video_frames = 0
        self.first_frame_time: float | None = None
        self.connected_time: float | None = None
        #: Decoding: 20 ms frames of the mix played by the audio clock (silence included, from the first
        #: packet on), and what its playout buffer did about lost and late packets. Not decoding: Opus
        #: packets received.
        self.audio_frames = 0
        self.playout = PlayoutCounts()
        #: Encoded bytes and VP8 keyframes received, counted only when not decoding (load peers).
        self.video_bytes = 0
        self.video_keyframes = 0
        self.audio_bytes = 0
        self._decode = decode
        #: "relay" uses TURN relay candidates only (a browser's iceTransportPolicy).
        self._ice_transport_policy = ice_transport_policy
        self._audio: deque[np.ndarray] = deque(maxlen=AUDIO_KEEP_SECONDS * 50)
        #: The server's last `visibility` message (mcu rooms: whether our video is on screen, and wanted).
        #: Honouring it (the default) pauses our video upload while it is not wanted; the camera stays live.
        self.visibility: protocol.Visibility | None = None
        self.outgoing_video = PausableVideoTrack(video) if video is not None and honour_visibility else None
        self._video_source = self.outgoing_video if self.outgoing_video is not None else video
        self._audio_source = audio
        self._recorder = Recorder(record) if record else None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._joined = asyncio.Event()
        self._answered = asyncio.Event()
        self._chat_open = asyncio.Event()
        #: The mode of the room joined (`joined`), and in sfu rooms the server's last map of
        #: mid -> publisher and kind, with the tracks received on those mids.
        self.room_mode: str | None = None
        self._sfu_tracks: dict[str, protocol.ForwardedTrack] = {}
        self._sfu_received: dict[str, tuple[str | None, MediaStreamTrack]] = {}
        #: Times this peer joined its room again after a `reconnect` error (its media server went away).
        self.reconnects = 0
        #: Who shares a screen in the room (`joined`, `screenShare`), and the section our own screen is sent on.
        self.screens: list[str] = []
        self._screen: RTCRtpTransceiver | None = None

    async def join(self, timeout: float = 10) -> None:
        """Join the room and start media; returns once the server has answered."""
        if is_loopback_host(urlparse(self.url).hostname or ""):
            use_host_addresses(["127.0.0.1"])
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(self.url)
        self._tasks.append(asyncio.ensure_future(self._read()))
        join = protocol.Join(
            self.room,
            self.name,
            token=self.token or None,
            tier=self.tier or None,
            hide_self=self.hide_self,
            mode=self.mode or None,
        )
        await self.send(join.to_message())
        await self._wait(self._joined, timeout, "join")
        joined = self._joined_message
        assert joined is not None
        turn = [url for server in joined.ice_servers for url in server["urls"] if is_turn_url(url)]
        if self._ice_transport_policy == "relay" and not turn:
            raise PeerError("relay only: the server offers no TURN server")
        if self.mesh is not None:
            await self._offer_to_everyone([p.peer_id for p in joined.participants], timeout)
            return
        # A new peer connection (a first join, or one again after `reconnect`): mids start afresh.
        self._sfu_tracks.clear()
        self._sfu_received.clear()
        self.pc = self._create_peer_connection(joined.ice_servers)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self._impair(self.pc)
        await self.send(protocol.Offer(self.pc.localDescription.sdp).to_message())
        await self._wait(self._answered, timeout, "answer")

    def _impair(self, pc: RTCPeerConnection) -> None:
        """Put `pc`'s sockets behind our impaired links, once it has gathered them."""
        if self.impairment is None:
            return
        if self.impaired is None:
            self.impaired = ImpairedIce(self.impairment)
        impair_ice(pc, self.impaired)

    async def _offer_to_everyone(self, others: list[str], timeout: float) -> None:
        """Mesh: the newcomer offers to each participant already there; returns once all have answered."""
        assert self.mesh is not None
        mesh = self.mesh
        for peer_id in others:
            await mesh.offer_to(peer_id)
        try:
            # One that left meanwhile is no longer waited for.
            await self.wait_for(lambda: set(others) & set(mesh.pcs) <= mesh.answered, timeout)
        except TimeoutError:
            raise PeerError(f"no answer from {sorted(set(others) - mesh.answered)}") from None

    def _on_remote_track(self, peer_id: str, track: MediaStreamTrack, transceiver: RTCRtpTransceiver) -> None:
        publisher = self.remote.setdefault(peer_id, RemotePublisher(peer_id))
        publisher.receive(track, transceiver.receiver, self._decode)

    async def send(self, message: dict[str, Any]) -> None:
        """Send one message (a ``to_message()`` of signaling.protocol; tests also send malformed ones)."""
        assert self._ws is not None
        await self._ws.send_str(json.dumps(message))

    async def set_media(self, video: bool, audio: bool) -> None:
        """Tell the room what this peer sends: a camera off shows its placeholder."""
        await self.send(protocol.SetMedia(video=video, audio=audio).to_message())

    async def set_layout(self, layout: str | dict[str, Any]) -> None:
        """Change the room's layout: "grid", "speaker", "pip" or {"regions": [...]} (needs the layout grant)."""
        await self.send(protocol.SetLayout(layout).to_message())

    async def kick(self, peer_id: str, reason: str | None = None) -> None:
        """Remove another participant from the room (needs the moderate grant); its token is kept out a while."""
        await self.send(protocol.Kick(peer_id, reason).to_message())

    async def share(self, track: MediaStreamTrack, timeout: float = 10) -> None:
        """Share `track` as our screen (mcu rooms), and return once the room shows it.

        As a browser does with getDisplayMedia: the first time, a second video section
        (sendonly) is added and offered on the same peer connection, and `share` names
        its mid; later shares put the new track on that section, with no renegotiation.
        :raises PeerError: the server refused (`share_limit`, `forbidden`...): nothing is sent.
        """
        assert self.pc is not None and self.peer_id is not None
        if self._screen is None:
            self._screen = self.pc.addTransceiver(track, direction="sendonly")
            self._answered.clear()
            await self.pc.setLocalDescription(await self.pc.createOffer())
            await self.send(protocol.Offer(self.pc.localDescription.sdp).to_message())
            await self._wait(self._answered, timeout, "answer")
        else:
            self._screen.sender.replaceTrack(track)
        assert self._screen.mid is not None
        errors = len(self.errors)
        await self.send(protocol.Share(self._screen.mid).to_message())
        peer_id = self.peer_id
        try:
            await self.wait_for(lambda: peer_id in self.screens or len(self.errors) > errors, timeout)
        except TimeoutError:
            raise PeerError("the server did not show our screen") from None
        if peer_id not in self.screens:
            self._screen.sender.replaceTrack(None)
            error = self.errors[-1]
            raise PeerError(f"{error.code}: {error.message}")

    async def stop_share(self) -> None:
        """Stop sharing our screen: its section stops sending (kept for the next share) and the room is told."""
        if self._screen is not None:
            self._screen.sender.replaceTrack(None)
        await self.send(protocol.StopShare().to_message())

    async def chat(self, text: str, timeout: float = 10) -> None:
        """Send a chat message to the room, once the chat channel is open."""
        await self._wait(self._chat_open, timeout, "chat channel")
        assert self.chat_channel is not None
        self.chat_channel.send(chat.say(text))

    async def wait_for(self, predicate, timeout: float) -> None:
        """Poll `predicate()` until true, or raise TimeoutError after `timeout` s."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("condition not met in time")
            await asyncio.sleep(0.05)

    def audio(self, seconds: float) -> np.ndarray:
        """The last `seconds` of the audio played, mono int16 at 48 kHz (in mcu rooms a timeline: 50
        frames a second, whatever came in time; sfu and mesh rooms: `remote`)."""
        if not self._audio:
            return np.zeros(0, np.int16)
        samples = np.concatenate(list(self._audio))
        return samples[-int(seconds * 48000) :]

    async def close(self) -> None:
        if self._ws is not None and not self._ws.closed:
            try:
                await self.send(protocol.Leave().to_message())
            except ConnectionError:
                pass
            await self._ws.close()
        if self.pc is not None:
            await self.pc.close()
        if self.mesh is not None:
            await self.mesh.close()
        if self.impaired is not None:
            self.impaired.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._recorder is not None:
            # After the tasks: the audio clock writes no frame to a finished file.
            await asyncio.get_running_loop().run_in_executor(None, self._recorder.close)
        if self._session is not None:
            await self._session.close()

    async def _wait(self, event: asyncio.Event, timeout: float, what: str) -> None:
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            detail = f": {self.errors[-1].message}" if self.errors else ""
            raise PeerError(f"no {what} from the server{detail}") from None
        if self.errors and what == "join" and not self.peer_id:
            raise PeerError(self.errors[-1].message)

    def _create_peer_connection(self, ice_servers: list[dict]) -> RTCPeerConnection:
        pc = RTCPeerConnection(rtc_configuration(ice_servers, self._ice_transport_policy))
        for kind, source in (("audio", self._audio_source), ("video", self._video_source)):
            transceiver = pc.addTransceiver(source if source is not None else kind, direction="sendrecv")
            attach_sender = getattr(source, "attach_sender", None)
            if attach_sender is not None:
                attach_sender(transceiver.sender)  # a pre-encoded track that sends its levels
            if kind == "video" and self.video_codec:
                transceiver.setCodecPreferences(codecs_of(self.video_codec))
        # Created before the offer, so that the offer carries the data channel section.
        if self._chat:
            self.chat_channel = pc.createDataChannel(chat.LABEL)
            self.chat_channel.on("open", self._chat_open.set)
            self.chat_channel.on("message", self._on_chat)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if self.room_mode == "sfu":
                self._on_forwarded_track(pc, track)
                return
            receiver = next(t.receiver for t in pc.getTransceivers() if t.receiver.track is track)
            if not self._decode:
                install_encoded_receiver(receiver)
                self._tasks.append(asyncio.ensure_future(self._consume_encoded(track)))
            elif track.kind == "audio":
                # The mix's packets as they come, into a playout buffer played on our own clock.
                playback = AudioPlayback(self._play_audio, self.playout)
                install_encoded_receiver(receiver, playback.take, audio_in_order=False)
                self._tasks.append(asyncio.ensure_future(playback.play(track)))
            else:
                # As a browser does: a frame lost for good is given up and a keyframe asked for.
                install_video_jitter_buffer(receiver, DOWNLINK_MAX_WAIT, DOWNLINK_NACK_TRIES, DOWNLINK_NACK_RETRY)
                self._tasks.append(asyncio.ensure_future(self._consume_video(track)))

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState == "connected":
                self.connected_time = time.monotonic()

        return pc

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            message = json.loads(msg.data)
            self.events.append(message)
            try:
                typed = protocol.read_server_message(message)
            except protocol.ProtocolError as exc:
                # A server of another version: what we cannot read costs that message, not the session.
                logger.warning("server message not understood (%s): %.200s", exc.message, msg.data)
                continue
            if typed is not None:
                await self._on_message(typed)

    async def _on_message(self, message: protocol.ServerMessage) -> None:
        """Act on one message of the server."""
        match message:
            case protocol.Relayed() if self.mesh is not None:
                await self.mesh.handle(message)  # relayed by the server from another peer
            case protocol.Joined():
                self._joined_message = message
                self.peer_id = message.peer_id
                self.participants = {p.peer_id: p.name for p in message.participants}
                self.layout = message.layout
                self.room_mode = message.mode
                self.screens = list(message.screens)
                self.visibility = None
                if self.outgoing_video is not None:
                    self.outgoing_video.resume()  # a room joined (again) wants our video until it says otherwise
                if self.mesh is not None:
                    await self.mesh.close()  # joined again (reconnect): the old links are gone
                    self.mesh = None
                if message.mode == "mesh":
                    # Made here, not in join(): a later newcomer's offer may come next.
                    sources = [s for s in (self._audio_source, self._video_source) if s is not None]
                    self.mesh = MeshLinks(
                        self.send,
                        message.ice_servers,
                        sources,
                        self._on_remote_track,
                        self._ice_transport_policy,
                        gathered=self._impair,
                    )
                self._joined.set()
            case protocol.ServerAnswer() if self.pc is not None:
                await self.pc.setRemoteDescription(RTCSessionDescription(sdp=message.sdp, type="answer"))
                self._answered.set()
            case protocol.ServerOffer() if self.pc is not None:
                await self._answer_server(message)
            case protocol.ParticipantJoined():
                self.participants[message.peer_id] = message.name
            case protocol.ParticipantLeft():
                self.participants.pop(message.peer_id, None)
                if self.mesh is not None:
                    await self.mesh.drop(message.peer_id)
                    if (publisher := self.remote.get(message.peer_id)) is not None:
                        publisher.end()
            case protocol.LayoutChanged():
                self.layout = message.layout
            case protocol.ScreenShare():
                if message.sharing and message.peer_id not in self.screens:
                    self.screens.append(message.peer_id)
                elif not message.sharing and message.peer_id in self.screens:
                    self.screens.remove(message.peer_id)
            case protocol.Tier():
                self.received_tier = message.tier
            case protocol.Visibility():
                self.visibility = message
                if self.outgoing_video is not None:
                    if message.send_video:
                        self.outgoing_video.resume()
                    else:
                        self.outgoing_video.pause()
            case protocol.Error():
                logger.warning("server error %s: %s", message.code, message.message)
                self.errors.append(message)
                if not self._joined.is_set():
                    self._joined.set()
                if message.code == protocol.RECONNECT and self.peer_id is not None:
                    self._tasks.append(asyncio.ensure_future(self._rejoin()))

    async def _rejoin(self) -> None:
        """The room's media server went away: join the same room again (new socket, new offer) until it works."""
        deadline = time.monotonic() + REJOIN_SECONDS
        while True:
            self.peer_id = None
            for closing in (self.pc, self._ws, self._session):
                if closing is not None:
                    await closing.close()
            self.pc = None
            self._screen = None
            for event in (self._joined, self._answered, self._chat_open):
                event.clear()
            try:
                await self.join()
                self.reconnects += 1
                logger.info("joined %s again after reconnect", self.room)
                return
            except (PeerError, aiohttp.ClientError, OSError) as exc:
                if time.monotonic() > deadline:
                    logger.error("could not join %s again: %s", self.room, exc)
                    return
                await asyncio.sleep(0.5)

    def _on_forwarded_track(self, pc: RTCPeerConnection, track: MediaStreamTrack) -> None:
        """sfu: a track the server forwards, attributed to its publisher by the server's map of mids."""
        transceiver = next(t for t in pc.getTransceivers() if t.receiver.track is track)
        entry = self._sfu_tracks.get(transceiver.mid or "")
        if entry is None:
            logger.warning("sfu: a track on mid %s that the server did not announce", transceiver.mid)
            return
        self._sfu_received[transceiver.mid] = (entry.peer_id, track)  # type: ignore[index]
        publisher = self.remote.setdefault(entry.peer_id, RemotePublisher(entry.peer_id))
        publisher.receive(track, transceiver.receiver, self._decode)

    async def _answer_server(self, message: protocol.ServerOffer) -> None:
        """sfu: the server's offer changes whose tracks we receive (new mids arrive as "track" events).

        A mid left out of its map has ended; a mid that went inactive before may come
        back carrying another publisher (the server reuses sections): same track, new owner.
        """
        assert self.pc is not None
        self._sfu_tracks = {entry.mid: entry for entry in message.tracks}
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=message.sdp, type="offer"))
        receivers = {t.mid: t.receiver for t in self.pc.getTransceivers()}
        for mid, (peer_id, track) in list(self._sfu_received.items()):
            owner = self._sfu_tracks[mid].peer_id if mid in self._sfu_tracks else None
            if owner == peer_id:
                continue
            if peer_id is not None and (publisher := self.remote.get(peer_id)) is not None:
                publisher.end(track)
            self._sfu_received[mid] = (owner, track)
            if owner is not None:
                self.remote.setdefault(owner, RemotePublisher(owner)).receive(track, receivers[mid], self._decode)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        await self.send(protocol.Answer(self.pc.localDescription.sdp).to_message())

    def _on_chat(self, data: str | bytes) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            logger.warning("chat: a message that is not JSON")
            return
        try:
            typed = chat.read_chat(message)
        except protocol.ProtocolError as exc:
            logger.warning("chat: a message not understood (%s)", exc.message)
            return
        if isinstance(typed, ChatMessage):
            self.chat_messages.append(typed)
        elif isinstance(typed, protocol.Error):
            logger.warning("chat error %s: %s", typed.code, typed.message)
            self.chat_errors.append(typed)

    async def _consume_video(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = cast(av.VideoFrame, await track.recv())
                now = time.monotonic()
                if self.first_frame_time is None:
                    self.first_frame_time = now
                self.video_frame = frame
                self.video_frames += 1
                if self._recorder is not None:
                    self._recorder.video(frame)
        except MediaStreamError:
            pass

    async def _consume_encoded(self, track: MediaStreamTrack) -> None:
        """Count encoded frames and bytes: a load peer's receiving costs no decode."""
        try:
            while True:
                # install_encoded_receiver() made the track yield its frames undecoded.
                frame = cast(JitterFrame, await track.recv())
                if track.kind == "video":
                    if self.first_frame_time is None:
                        self.first_frame_time = time.monotonic()
                    self.video_frames += 1
                    self.video_bytes += len(frame.data)
                    self.video_keyframes += bool(frame.data) and not frame.data[0] & 0x01  # VP8's P bit
                else:
                    self.audio_frames += 1
                    self.audio_bytes += len(frame.data)
        except MediaStreamError:
            pass

    def _play_audio(self, samples: np.ndarray, pts: int) -> None:
        """A frame of the mix, as our audio clock plays it (client/playback.py)."""
        self._audio.append(samples)
        self.audio_frames += 1
        if self._recorder is not None:
            self._recorder.audio(audio_frame(samples, pts))
