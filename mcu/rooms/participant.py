"""One participant: its peer connection, its latest inputs and its outbound tracks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Callable, Coroutine

from aiortc import (
    MediaStreamTrack,
    RTCDataChannel,
    RTCPeerConnection,
    RTCRtpCodecCapability,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.codecs import CODECS
from aiortc.exceptions import InvalidAccessError, InvalidStateError, OperationError
from aiortc.jitterbuffer import JitterFrame
from aiortc.sdp import SessionDescription

from mcu.config import DEFAULT_TIER
from mcu.media.audio_pipeline import OpusPacket
from mcu.media.encoders import Output
from mcu.media.tracks import KEYFRAME_GRACE, PacketTrack
from mcu.rooms.adaptation import AUDIO_ONLY, Controller, Ladder, Probe, Switch
from mcu.rooms.visibility import Visibility
from mcu.rtc.dtls import answer_as_dtls_server
from mcu.rtc.header_extensions import install_tolerant_extensions
from mcu.rtc.intake import receive_directly
from mcu.rtc.link import LinkMonitor
from mcu.rtc.receiver import install_encoded_receiver
from mcu.rtc.sender import DirectSender, send_directly
from signaling import chat
from signaling.grants import ALL_GRANTS
from signaling.ice import rtc_configuration

logger = logging.getLogger(__name__)
install_tolerant_extensions()


def _ask_for_opus_fec() -> None:
    """Make this process's SDP say `useinbandfec=1` for Opus: a browser puts in-band FEC in what it
    sends only when the other end asks for it, and the room's playout rebuilds lost frames with it
    (compositor/playout.py). aiortc's codec table gives Opus no parameters, and its answers copy that table."""
    for codec in CODECS["audio"]:
        if codec.mimeType.lower() == "audio/opus":
            codec.parameters["useinbandfec"] = 1


_ask_for_opus_fec()

#: A peer whose latest audio packet is older than this is not counted as a voice of the room.
VOICE_SECONDS = 2.0
#: Opus payloads kept between two audio ticks; more means the mix has stalled.
AUDIO_BACKLOG = 25


#: The H.264 profiles answered: constrained baseline (what the encoder makes) first,
#: then baseline, whose decoders also decode constrained baseline.
H264_PROFILES = ("42e01f", "42001f")


def _shared_codecs(kind: str) -> list[RTCRtpCodecCapability]:
    """The codecs that the room's shared encoders produce, preferred first: VP8, H.264 (with RTX); Opus.

    The answer keeps this order among what the offer has, so a client that
    offers both gets VP8 and one that offers only H.264 gets H.264.
    """
    codecs = RTCRtpSender.getCapabilities(kind).codecs
    if kind == "audio":
        return [c for c in codecs if c.mimeType.lower() == "audio/opus"]
    vp8 = [c for c in codecs if c.mimeType.lower() == "video/vp8"]
    h264 = [
        c
        for profile in H264_PROFILES
        for c in codecs
        if c.mimeType.lower() == "video/h264"
        and c.parameters.get("profile-level-id") == profile
        and c.parameters.get("packetization-mode") == "1"
    ]
    return vp8 + h264 + [c for c in codecs if c.mimeType.lower() == "video/rtx"]


def negotiated_video_codec(sdp: str) -> str | None:
    """The video codec an answer settled on ("vp8", "h264"): the first of its video section."""
    for media in SessionDescription.parse(sdp).media:
        if media.kind == "video" and media.rtp.codecs:
            return media.rtp.codecs[0].mimeType.split("/")[1].lower()
    return None


class NegotiationError(Exception):
    """The offer cannot be answered (no usable codec, unparsable SDP...)."""


class Participant:
    """A peer in a room: it sends one upstream and receives the room's downstream."""

    def __init__(
        self,
        peer_id: str,
        name: str,
        request_keyframe: Callable[[PacketTrack, str], None],
        on_video: Callable[[str, str, bytes, int], None],
        on_failed: Callable[[Participant], None],
        on_chat: Callable[[Participant, str | bytes], None],
        tier: str = DEFAULT_TIER,
        hide_self: bool = False,
        ladder: Ladder | None = None,
        now: float = 0.0,
        kinds: tuple[str, ...] = ("audio", "video"),
        on_screen: Callable[[str, str, bytes, int], None] | None = None,
        dtls_server: bool = False,
    ) -> None:
        self.peer_id = peer_id
        self.name = name
        #: The output tier chosen at join: the most it receives (its ceiling). Whether the peer's
        #: own tile is left out of its picture (a personal canvas: one more composite and encode).
        self.ceiling = tier
        self.hide_self = hide_self
        #: What this peer may do (signaling/grants.py); its join token narrows it.
        self.grants: frozenset[str] = ALL_GRANTS
        self.pc: RTCPeerConnection | None = None
        self.video_out = PacketTrack("video", keyframe_grace=KEYFRAME_GRACE)
        self.video_out.keyframe_requested = lambda reason: request_keyframe(self.video_out, reason)
        #: Its downstream link as its RTCP says (mcu/rtc/link.py), and, with a ladder, what moves it
        #: between tiers (mcu/rooms/adaptation.py); without one it keeps its ceiling.
        self.controller = None if ladder is None else Controller(ladder, tier, now)
        controller = self.controller
        self.link = LinkMonitor(
            None if controller is None else controller.on_remb,
            None if controller is None else controller.on_report,
            None if controller is None else lambda rtt, now: controller.on_echo(rtt, self.link.base_rtt, now),
        )
        self._video_codec: str | None = None
        #: What the peer says it sends (`setMedia`): off shows the placeholder / leaves the mix.
        self.sending_video = True
        self.sending_audio = True
        #: Whether its video is on screen and wanted, and what it sent that was not decoded (mcu/rooms/visibility.py).
        self.visibility = Visibility()
        #: Set by a moderator: a muted peer leaves every mix; volume scales its voice (0..2).
        self.moderator_muted = False
        self.volume = 1.0
        self.audio_out = PacketTrack("audio")
        #: When the peer's latest Opus packet came (time.monotonic()); None until one does.
        self.audio_received_at: float | None = None
        #: Opus packets received since the last audio tick, as they came (lost, late or out of
        #: order: the room's playout buffer sorts them), decoded by the room, each with its RFC 6464
        #: level in dBov when the peer sends that header (browsers do).
        self._audio_payloads: deque[tuple[OpusPacket, int | None]] = deque(maxlen=AUDIO_BACKLOG)
        #: Where the peer's encoded video frames go (the room's video process decodes them).
        self._on_video = on_video
        #: The receiver of the peer's video, to ask it for keyframes.
        self.video_receiver: RTCRtpReceiver | None = None
        #: Encoded video frames received from the peer (and handed to the video process).
        self.video_frames = 0
        #: The mid of the section its shared screen comes on (`share`), None while it shares nothing; the
        #: receivers of its other video sections by mid (what it may share), and where a screen's frames go.
        self.screen_mid: str | None = None
        self._extra_video: dict[str, RTCRtpReceiver] = {}
        self._on_screen = on_screen
        #: Encoded frames of its shared screen received (and handed to the room).
        self.screen_frames = 0
        self._on_failed = on_failed
        #: The peer's "chat" data channel, once it has opened one.
        self.chat_channel: RTCDataChannel | None = None
        self._on_chat = on_chat
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        #: The media its offers carry: both for a participant; a viewer may offer audio or video alone,
        #: and aiortc cannot answer an offer that lacks a transceiver's kind.
        self._kinds = kinds
        #: Whether its answers take the DTLS server's role when the offer lets them (mcu/rtc/dtls.py): a WHIP
        #: encoder may be GStreamer, whose RSA certificate aiortc as a DTLS client cannot agree a cipher with.
        self._dtls_server = dtls_server

    async def answer(self, offer_sdp: str, ice_servers: list[dict]) -> str:
        """Apply the peer's offer (first or renegotiation) and return the SDP answer."""
        pc = self.pc or self._create_peer_connection(ice_servers)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            if self._dtls_server:
                answer_as_dtls_server(pc)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            if pc is not self.pc:
                await pc.close()  # a first offer that failed leaves nothing behind, whatever aiortc raised
            if isinstance(exc, (ValueError, OperationError, InvalidStateError, InvalidAccessError)):
                raise NegotiationError(f"The SDP offer could not be answered: {exc}") from exc
            raise
        self.pc = pc
        self._use_codec(negotiated_video_codec(pc.localDescription.sdp))
        return pc.localDescription.sdp

    @property
    def tier(self) -> str:
        """The tier it receives now: its ceiling, or lower while its link cannot carry that."""
        return self.ceiling if self.controller is None else self.controller.tier

    def _output(self) -> Output | None:
        """The encoder output of its codec and tier (personal with hide-self); None for audio only."""
        if self._video_codec is None or self.tier == AUDIO_ONLY:
            return None
        return Output(self._video_codec, self.tier, self.peer_id if self.hide_self else None)

    def _use_codec(self, codec: str | None) -> None:
        """Attach the video track to the encoder of its codec and tier."""
        self._video_codec = codec
        output = self._output()
        if output != self.video_out.output:
            changed = self.video_out.output is not None
            self.video_out.output = output
            self.video_out.pending = None
            if changed:
                self.video_out.restart()  # another encoder's stream: start on its keyframe

    def adapt(self, now: float) -> Switch | None:
        """Let the controller act on the feedback so far: a switch (returned, to announce) or a probe."""
        if self.controller is None or self.pc is None or self.video_out.readyState != "live":
            return None
        decision = self.controller.tick(now)
        if isinstance(decision, Probe):
            direct = self.video_out.direct
            padding = decision.bitrate - self.controller.ladder[self.tier].bitrate
            if not (isinstance(direct, DirectSender) and direct.probe(padding, decision.seconds, self.link)):
                self.controller.trial(now)  # no RTX to pad with: try the tier itself
            return None
        if isinstance(decision, Switch):
            self.video_out.switch(self._output(), resync=decision.reason == "congestion")
        return decision

    def _create_peer_connection(self, ice_servers: list[dict]) -> RTCPeerConnection:
        pc = RTCPeerConnection(rtc_configuration(ice_servers))

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            transceivers = pc.getTransceivers()
            transceiver = next(t for t in transceivers if t.receiver.track is track)
            # Ours, made before the first offer; none for a participant of audio alone (a WHIP publisher, a viewer).
            camera = next((t for t in transceivers if t.kind == "video"), None)
            if transceiver.kind == "video" and camera is not None and transceiver is not camera:
                self._on_extra_video(transceiver.mid, transceiver.receiver)  # a section the peer added
            else:
                self._on_track(track, transceiver.receiver)

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if channel.label != chat.LABEL:
                return  # not ours to serve
            # A peer that opens another chat channel is answered on the newest.
            self.chat_channel = channel
            channel.on("message", lambda data: self._on_chat(self, data))

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState == "connected":
                receive_directly(pc)
                self._connected()
            elif pc.connectionState in ("failed", "closed") and pc is self.pc and not self._closed:
                # Failed ICE/DTLS, or the peer closed its side: it is gone.
                self._on_failed(self)

        self._add_transceivers(pc)
        return pc

    def _add_transceivers(self, pc: RTCPeerConnection) -> None:
        # Our transceivers exist before the offer so that the codec preferences
        # apply to it: the answer then carries only what the shared encoders make.
        for track in (self.audio_out, self.video_out):
            if track.kind not in self._kinds:
                continue
            transceiver = pc.addTransceiver(track, direction="sendrecv")
            transceiver.setCodecPreferences(_shared_codecs(track.kind))
            send_directly(transceiver.sender, track, self.link if track is self.video_out else None)

    def _on_track(self, track: MediaStreamTrack, receiver: RTCRtpReceiver) -> None:
        """The peer's upstream `track` arrived (the peer connection's "track" event)."""
        # The room decodes audio on its own thread and video in its video process: no decoder here.
        install_encoded_receiver(
            receiver, self._take_video if track.kind == "video" else self._take_audio, audio_in_order=False
        )
        if track.kind == "video":
            self.video_receiver = receiver

    def _on_extra_video(self, mid: str | None, receiver: RTCRtpReceiver) -> None:
        """A video section beyond the camera's (a renegotiation added it): a screen, once `share` names its mid."""
        if mid is None:
            return
        self._extra_video[mid] = receiver
        install_encoded_receiver(receiver, lambda frame: self._take_screen(mid, frame), audio_in_order=False)

    @property
    def screen_receiver(self) -> RTCRtpReceiver | None:
        """The receiver of its shared screen, to ask it for keyframes (None: not sharing, or not offered yet)."""
        return None if self.screen_mid is None else self._extra_video.get(self.screen_mid)

    def _take_screen(self, mid: str, frame: JitterFrame) -> None:
        """An encoded frame of an added video section: on to the room if it is the screen shared now."""
        if mid != self.screen_mid or self._on_screen is None:
            return
        self.screen_frames += 1
        self._on_screen(self.peer_id, frame.codec_name, frame.data, frame.timestamp)  # type: ignore[attr-defined]

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run `coroutine` as a task of this participant, cancelled when it closes."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _connected(self) -> None:
        """ICE and DTLS are up: a new or reconnected peer starts on a fresh keyframe."""
        self.video_out.restart()

    def _take_video(self, frame: JitterFrame) -> None:
        """An encoded video frame of the peer's, as its receiver lets it go: on to the room's video process."""
        self.video_frames += 1
        self._on_video(self.peer_id, frame.codec_name, frame.data, frame.timestamp)  # type: ignore[attr-defined]

    def _take_audio(self, frame: JitterFrame) -> None:
        """An Opus packet of the peer's, as it came: kept for the next audio tick."""
        level: int | None = frame.audio_level  # type: ignore[attr-defined]
        self._audio_payloads.append((OpusPacket(frame.data, frame.timestamp), level))
        self.audio_received_at = time.monotonic()

    @property
    def audio_gain(self) -> float:
        """What the room multiplies this peer's voice by: 0 when muted by itself or a moderator."""
        return 0.0 if self.moderator_muted or not self.sending_audio else self.volume

    @property
    def sends_audio(self) -> bool:
        """Whether the peer is a voice of the room: not muted, and its audio is coming.

        By packets, not by the SDP: a client without a microphone may still offer to send
        audio. Within VOICE_SECONDS, so that Opus DTX (a packet every 400 ms in silence) counts.
        """
        received = self.audio_received_at
        return received is not None and time.monotonic() - received < VOICE_SECONDS and self.audio_gain > 0

    def take_audio(self) -> list[tuple[OpusPacket, int | None]]:
        """The Opus packets (and their levels) received since the last call.

        Called on the room's audio thread while the event loop appends: each
        `popleft` is atomic, so a payload that comes meanwhile waits for the next tick.
        """
        queued = self._audio_payloads
        return [queued.popleft() for _ in range(len(queued))]

    async def close(self) -> None:
        """Stop every track and task; safe to call more than once."""
        self._closed = True
        self.video_out.stop()
        self.audio_out.stop()
        if self.pc is not None:
            await self.pc.close()
        for task in list(self._tasks):
            task.cancel()
        self.video_receiver = None
        self._extra_video.clear()
