"""A room: its participants and the media clocks that mix them."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from pathlib import Path
from typing import Callable

from compositor.layout import PRESENTATION, Layout, last_n, parse_layout
from mcu.config import DEFAULT_TIER, Config
from mcu.media.aac import MixAac
from mcu.media.audio_pipeline import AudioPipeline
from mcu.media.encoders import Output, Tier
from mcu.media.video_pipeline import VideoPipeline
from mcu.media.video_process import PLI_INTERVAL, SCREEN_SUFFIX, SceneSpec, TileSpec, screen_key
from mcu.rooms.adaptation import Ladder, Switch
from mcu.rooms.broadcast import Broadcast
from mcu.rooms.chat_relay import ChatRelay
from mcu.rooms.hls import HlsTier, remove_room, write_master
from mcu.rooms.participant import Participant
from mcu.rooms.recording import Recording
from mcu.rooms.sfu import Forwarder
from mcu.rooms.streams import Stream, check_url
from mcu.rtc.receiver import send_pli, video_losses
from signaling import grants

#: How often each receiver's controller looks at its feedback (mcu/rooms/adaptation.py).
ADAPT_INTERVAL = 0.1
#: How often a room writing HLS looks whether every tier's media playlist is there yet (its master's cue).
MASTER_POLL = 0.25
#: The RTCP feedback counted per receiver (mcu/rtc/link.py LinkStats) and summed per room.
FEEDBACK_COUNTS = ("reports", "rembs", "nacks", "nacked_packets", "plis", "absurd_rembs", "foreign_reports")


logger = logging.getLogger(__name__)


def _ignore(broadcast: Broadcast) -> None:
    """HLS changes of state are logged, not announced: players see the playlist."""


class Room:
    """Participants in join order (the grid order) and one video and one audio pipeline."""

    def __init__(self, name: str, config: Config, mode: str = "mcu") -> None:
        self.name = name
        self.config = config
        #: How the room carries media (protocol.MODES), fixed when its first join creates it.
        self.mode = mode
        #: An sfu room forwards instead of composing and mixing.
        self.forwarder = Forwarder() if mode == "sfu" else None
        #: When the room opened (time.monotonic()), for rates since then.
        self.created = time.monotonic()
        self.participants: dict[str, Participant] = {}
        #: WHEP viewers (mcu/server/whep.py): receivers of the composite and the whole mix, kept apart from
        #: the participants: no tile, no voice, in no participant list; they end with the room.
        self.viewers: dict[str, Participant] = {}
        self.video = VideoPipeline(
            name,
            config.output_tiers(),
            DEFAULT_TIER,
            scenes=self._scene,
            sinks=lambda: [p.video_out for p in self.receivers()],
            on_pli=self._ask_keyframe,
            stale_seconds=config.stale_video_seconds,
            encode_per_peer=config.encode_per_peer,
            on_sync=self._watch_visibility,
        )
        self.audio = AudioPipeline(
            name, lambda: [*self.participants.values(), *self.viewers.values()], config.audio_talkers
        )
        self.chat = ChatRelay(name, self.participants)
        #: The recording in progress, if any.
        self.recording: Recording | None = None
        #: The RTMP streams of its composite, by id, and its HLS writer's tiers (mcu/rooms/streams.py, hls.py).
        self.streams: dict[str, Stream] = {}
        self.hls: list[HlsTier] = []
        self._hls_master: asyncio.Task[None] | None = None
        #: Told when a stream's state changes (the conference tells the room).
        self.on_stream: Callable[[Stream], None] | None = None
        #: The one AAC encode of the mix that streams and HLS share, while any runs.
        self._aac: MixAac | None = None
        #: What the composite looks like; changed at run time (setLayout, the HTTP API), shown on the next tick.
        self.layout: Layout = parse_layout(config.layout)
        #: Whether a moderator chose `layout` (setLayout, the HTTP API): a shared screen then keeps it.
        self.layout_chosen = False
        #: Who shares a screen, in the order they started (at most `config.max_shares`).
        self.sharing: list[str] = []
        self._started = False
        #: When each publisher was last asked for a keyframe on the video process's behalf.
        self._plis: dict[str, float] = {}
        #: The tiers a receiver moves between, its link permitting (None: each keeps the tier it chose).
        self.ladder = None if config.encode_per_peer or not config.adapt else Ladder(config.output_tiers())
        #: Told when a receiver moves to another tier (the conference tells the peer).
        self.on_tier: Callable[[Participant, Switch], None] | None = None
        self._adapting: asyncio.Task[None] | None = None
        #: Tier switches of this room's receivers, down and up.
        self.switches = {"down": 0, "up": 0}
        #: The RTCP feedback counts of receivers that left (the room's totals go on without them).
        self._departed_feedback: dict[str, int] = dict.fromkeys(FEEDBACK_COUNTS, 0)
        #: Video frames lost and keyframes asked for (mcu/rtc/jitter.py) by the receivers of publishers gone.
        self._departed_losses = (0, 0)
        #: Told when a publisher's `visibility` changed (the conference tells the peer; mcu/rooms/visibility.py).
        self.on_visibility: Callable[[Participant], None] | None = None
        #: The publishers shown when visibility was last worked out, and when a hold runs out next.
        self._shown: frozenset[str] | None = None
        self._hold_ends = math.inf
        #: Video frames of publishers gone that were not decoded (not shown, camera off).
        self._departed_ignored = 0

    def add(self, participant: Participant) -> None:
        self.participants[participant.peer_id] = participant
        self._shown = None  # the newcomer is told whether it is shown at the next look
        if self.forwarder is not None:
            self.forwarder.add(participant)  # type: ignore[arg-type]
        if not self._started and self.mode == "mcu":
            # Only an MCU room composes and mixes: sfu and mesh rooms start no codec.
            self._started = True
            self.video.start()
            self.audio.start()
            if self.ladder is not None:
                self._adapting = asyncio.ensure_future(self._adapt_forever())
            if self.config.hls_dir is not None and not self.config.encode_per_peer:
                self._start_hls(Path(self.config.hls_dir))

    def receivers(self) -> list[Participant]:
        """Everyone the room's outputs go to: its subscribing participants, then its viewers."""
        subscribers = [p for p in self.participants.values() if grants.SUBSCRIBE in p.grants]
        return [*subscribers, *self.viewers.values()]

    def add_viewer(self, viewer: Participant) -> None:
        """A WHEP viewer of a running room: one more sink of its shared encoders."""
        self.viewers[viewer.peer_id] = viewer

    def remove_viewer(self, peer_id: str) -> Participant | None:
        viewer = self.viewers.pop(peer_id, None)
        if viewer is not None:
            self._depart(viewer)
        return viewer

    def _depart(self, receiver: Participant) -> None:
        """Keep the room's feedback totals whole when `receiver` leaves."""
        for name in FEEDBACK_COUNTS:
            self._departed_feedback[name] += getattr(receiver.link.stats, name)

    def remove(self, peer_id: str) -> Participant | None:
        leaving = self.participants.get(peer_id)
        if leaving is not None and leaving.video_receiver is not None:
            lost, asked = video_losses(leaving.video_receiver)
            self._departed_losses = (self._departed_losses[0] + lost, self._departed_losses[1] + asked)
        if self.mode == "mcu":
            self.unshare(peer_id)
            self.video.forget(peer_id)
            self._plis.pop(peer_id, None)
        self.chat.remove(peer_id)
        if self.forwarder is not None:
            self.forwarder.remove(peer_id)
        participant = self.participants.pop(peer_id, None)
        if participant is not None:
            self._departed_ignored += participant.visibility.frames_ignored
            self._depart(participant)
        return participant

    def share(self, peer_id: str) -> None:
        """Show `peer_id`'s screen from its next keyframe (asked for now), and the presentation layout with it."""
        if peer_id not in self.sharing:
            self.sharing.append(peer_id)
        key = screen_key(peer_id)
        self._plis.pop(key, None)
        self._ask_keyframe(key)

    def unshare(self, peer_id: str) -> bool:
        """Stop showing `peer_id`'s screen (its decoder goes); False if it shared none."""
        if peer_id not in self.sharing:
            return False
        self.sharing.remove(peer_id)
        key = screen_key(peer_id)
        self.video.forget(key)
        self._plis.pop(key, None)
        return True

    @property
    def shown_layout(self) -> Layout:
        """What the canvases use: `presentation` while a screen is shared, unless a layout was chosen."""
        return PRESENTATION if self.sharing and not self.layout_chosen else self.layout

    def feedback(self) -> dict[str, int]:
        """RTCP feedback received from this room's receivers since it opened, by kind."""
        totals = dict(self._departed_feedback)
        for participant in [*self.participants.values(), *self.viewers.values()]:
            for name in FEEDBACK_COUNTS:
                totals[name] += getattr(participant.link.stats, name)
        return totals

    @property
    def empty(self) -> bool:
        return not self.participants

    async def _adapt_forever(self) -> None:
        while True:
            await asyncio.sleep(ADAPT_INTERVAL)
            now = time.monotonic()
            for participant in [*self.participants.values(), *self.viewers.values()]:
                switch = participant.adapt(now)
                if switch is None:
                    continue
                self.switches["up" if switch.reason == "probe" else "down"] += 1
                controller, stats = participant.controller, participant.link.stats
                logger.info(
                    "room %s: peer %s to tier %s (%s; estimate %s, REMB %s, loss %.3f, queue %s, sent %s)",
                    self.name, participant.peer_id, switch.tier, switch.reason, switch.estimate, stats.remb,
                    stats.fraction_lost, controller and controller.queue, stats.sent_bitrate,
                )  # fmt: skip
                if self.on_tier is not None:
                    self.on_tier(participant, switch)

    def links(self) -> dict[str, dict]:
        """Each receiver's tier and link, as its RTCP reports it (mcu/rtc/link.py, mcu/rooms/adaptation.py)."""
        links = {}
        for participant in [*self.participants.values(), *self.viewers.values()]:
            controller = participant.controller
            links[participant.peer_id] = {
                "tier": participant.tier,
                "ceiling": participant.ceiling,
                "estimate": None if controller is None or controller.estimate is None else round(controller.estimate),
                "switches": 0 if controller is None else controller.switches,
                "probes": 0 if controller is None else controller.probes,
                "probesFailed": 0 if controller is None else controller.probes_failed,
                # Congestion on the lowest video tier that its estimate said it carried (not sent to audio only).
                "holds": 0 if controller is None else controller.holds,
                # Its keyframe requests while a keyframe was on its way to it (mcu/media/tracks.py KEYFRAME_GRACE).
                "plisIgnored": participant.video_out.plis_ignored,
                **participant.link.stats.describe(),
            }
        return links

    def stats(self) -> dict:
        """Counters since the room started: what the media clocks achieved and what they cost."""
        video, audio, chat = self.video.stats, self.audio.stats, self.chat.stats
        receivers = [p.video_receiver for p in self.participants.values() if p.video_receiver is not None]
        losses = [self._departed_losses, *(video_losses(receiver) for receiver in receivers)]
        return {
            "peers": len(self.participants),
            "viewers": len(self.viewers),
            # Its RTMP streams by state (starting, live, retrying), and the HLS tiers it writes.
            "streams": dict(Counter(stream.state for stream in self.streams.values())),
            "hlsTiers": len(self.hls),
            "links": self.links(),
            "tierSwitches": dict(self.switches),
            "keyframesGated": video.keyframes_gated,
            "videoFrames": video.frames,
            "videoTicksSkipped": video.skipped,
            "composeSeconds": round(video.compose_seconds, 3),
            "encodeSeconds": round(video.encode_seconds, 3),
            "keyframes": video.keyframes,
            "videoDecodes": video.decodes,
            "videoDecodeSeconds": round(video.decode_seconds, 3),
            "videoDecodeErrors": video.decode_errors,
            "videoUpstreamDropped": video.upstream_dropped,
            "senderControl": self.config.sender_control,
            # Publishers' video frames not decoded: on no canvas (sender control) or camera off.
            "videoFramesIgnored": self._departed_ignored
            + sum(p.visibility.frames_ignored for p in self.participants.values()),
            "publishersPaused": sum(not p.visibility.send_video for p in self.participants.values()),
            "publishers": {
                peer_id: p.visibility.describe()
                for peer_id, p in self.participants.items()
                if grants.PUBLISH in p.grants
            },
            # Frames lost on publishers' uplinks and given up, keyframes asked for then.
            "videoFramesLost": sum(lost for lost, _ in losses),
            "videoKeyframesAsked": sum(asked for _, asked in losses),
            "pictureRestarts": video.restarts,
            "videoEncoders": sorted(str(output) for output in self.video.encoders),
            "tierFrames": dict(video.tier_frames),
            "audioTicks": audio.ticks,
            "audioMixes": audio.mixes,
            "audioEncodes": audio.encodes,
            "audioCpuSeconds": round(audio.cpu_seconds, 3),
            "audioDecodes": audio.decodes,
            "audioTicksDropped": self.audio.dropped_ticks,
            "audioUnderruns": self.audio.underruns,
            "audioConcealed": audio.playout.concealed,
            "audioFecRecovered": audio.playout.recovered,
            "audioLateDrops": audio.playout.late,
            "audioPlayoutDrops": audio.playout.dropped,
            "chatRelayed": chat.relayed,
            "chatRefused": chat.refused,
            "chatDropped": chat.dropped,
            "mode": self.mode,
            # Who shares a screen, and the frames of shared screens received (mcu/rooms/participant.py).
            "screens": list(self.sharing),
            "screenFrames": sum(p.screen_frames for p in self.participants.values()),
            **(self.forwarder.describe() if self.forwarder is not None else {}),
        }

    def start_recording(
        self,
        directory: Path,
        on_started: Callable[[Recording], None],
        on_failed: Callable[[Recording, str], None],
    ) -> Recording:
        """Mux the shared encoders' packets into a new file (RecordingError if it cannot start)."""
        recording = Recording(
            self.name, directory, self.config.width, self.config.height, self.video.epoch, on_started, on_failed
        )
        self.recording = recording
        self.video.add_sink(recording.video)
        self.audio.add_sink(recording.audio)
        # The file opens on a picture: the recording drops everything before this keyframe.
        self.video.request_keyframe()
        return recording

    async def stop_recording(self) -> Recording | None:
        """Finish the file (duration and index); None if the room was not recording."""
        recording, self.recording = self.recording, None
        if recording is None:
            return None
        self.video.remove_sink(recording.video)
        self.audio.remove_sink(recording.audio)
        await recording.stop()
        return recording

    def _attach(self, broadcast: Broadcast, output: Output) -> None:
        """Feed `broadcast` the packets of `output` (its encoder kept in use) and the mix's AAC."""
        assert self._aac is not None  # _mix_aac made it
        self.video.add_sink(broadcast.video, output)
        self._aac.add_sink(broadcast.audio)
        broadcast.start()

    def _mix_aac(self) -> MixAac:
        if self._aac is None:
            self._aac = MixAac(self.name)
            self.audio.add_pcm_sink(self._aac.take)
        return self._aac

    async def _detach(self, broadcast: Broadcast) -> None:
        """Stop feeding and finish `broadcast`; the AAC encode ends with its last consumer."""
        self.video.remove_sink(broadcast.video)
        aac = self._aac
        if aac is not None:
            aac.remove_sink(broadcast.audio)
            if not aac.sinks:
                self._aac = None
                self.audio.remove_pcm_sink(aac.take)
                await asyncio.to_thread(aac.stop)
        await broadcast.stop()

    def _output_keyframe(self, output: Output) -> Callable[[], None]:
        return lambda: self.video.request_output_keyframe(output)

    def start_stream(self, url: str, tier: str) -> Stream:
        """Push the composite of `tier` (H.264) and the mix (AAC) to `url` (StreamUrlError if it is not RTMP)."""
        spec = self.video.tiers[tier]
        output = Output("h264", tier)
        stream = Stream(
            self.name,
            check_url(url),
            tier,
            spec.width,
            spec.height,
            spec.fps,
            self._mix_aac().extradata,
            self._output_keyframe(output),
            self._stream_changed,
        )
        self.streams[stream.id] = stream
        self._attach(stream, output)
        return stream

    def _stream_changed(self, broadcast: Broadcast) -> None:
        if self.on_stream is not None and isinstance(broadcast, Stream) and broadcast.id in self.streams:
            self.on_stream(broadcast)

    async def stop_stream(self, stream_id: str) -> Stream | None:
        """End a stream (None if the room has no such stream)."""
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            await self._detach(stream)
            logger.info("room %s: %s stopped", self.name, stream.label)
        return stream

    def _start_hls(self, directory: Path) -> None:
        """Write the room's HLS ladder: its tiers (`--hls-tiers`), by default the default tier's alone."""
        tiers = {name: self.video.tiers[name] for name in self.config.hls_tiers or (DEFAULT_TIER,)}
        try:
            remove_room(directory, self.name)  # what a server that crashed left of a room of that name
            for name, tier in tiers.items():
                output = Output("h264", name)
                writer = HlsTier(
                    self.name,
                    directory,
                    name,
                    tier,
                    self._mix_aac().extradata,
                    self._output_keyframe(output),
                    _ignore,
                    self.config.hls_segment_seconds,
                )
                self.hls.append(writer)
                self._attach(writer, output)
        except OSError as exc:
            logger.error("room %s: no HLS: %s", self.name, exc)
            return
        self._hls_master = asyncio.ensure_future(self._publish_master(directory / self.name, tiers))

    async def _publish_master(self, directory: Path, tiers: dict[str, Tier]) -> None:
        """Write the master playlist once every tier's media playlist can be played (mcu/rooms/hls.py
        START_SEGMENTS): a player that reads it sooner finds its variants missing or too short, and
        Chromium then gives up for good (DEMUXER_ERROR_COULD_NOT_PARSE)."""
        while not all(await asyncio.gather(*(asyncio.to_thread(writer.playable) for writer in self.hls))):
            await asyncio.sleep(MASTER_POLL)
        try:
            await asyncio.to_thread(write_master, directory, tiers)
        except OSError as exc:
            logger.error("room %s: no HLS master playlist: %s", self.name, exc)

    async def close(self) -> None:
        if self._adapting is not None:
            self._adapting.cancel()
            await asyncio.gather(self._adapting, return_exceptions=True)
        await asyncio.gather(self.video.stop(), self.audio.stop())
        await self.stop_recording()
        # Together: each may wait STOP_WAIT on a far end that holds a write.
        await asyncio.gather(*(self.stop_stream(stream_id) for stream_id in list(self.streams)))
        if self._hls_master is not None:
            self._hls_master.cancel()
            await asyncio.gather(self._hls_master, return_exceptions=True)
        hls, self.hls = self.hls, []
        await asyncio.gather(*(self._detach(writer) for writer in hls))
        if hls and self.config.hls_dir is not None:
            await asyncio.to_thread(remove_room, Path(self.config.hls_dir), self.name)

    def _ask_keyframe(self, peer_id: str) -> None:
        """The video process cannot decode this publisher (an error, a frame dropped on the way): PLI.

        At most every PLI_INTERVAL per publisher: a stalled video process drops every
        frame it is sent, and each drop asks for a keyframe.
        """
        screen = peer_id.endswith(SCREEN_SUFFIX)
        participant = self.participants.get(peer_id.removesuffix(SCREEN_SUFFIX))
        now = time.monotonic()
        if participant is None:
            return
        receiver = participant.screen_receiver if screen else participant.video_receiver
        if receiver is None or now - self._plis.get(peer_id, float("-inf")) < PLI_INTERVAL:
            return
        self._plis[peer_id] = now
        if send_pli(receiver) and not screen:
            participant.visibility.keyframes_asked += 1

    def upstream(self, peer_id: str, codec_name: str, data: bytes, timestamp: int) -> None:
        """A publisher's encoded video frame: to the video process if its video is wanted, from a keyframe on."""
        participant = self.participants.get(peer_id)
        if participant is None:
            return
        visibility = participant.visibility
        control = self.config.sender_control
        wanted = not control or (visibility.send_video and participant.sending_video)
        if visibility.admit(codec_name, data, wanted):
            self.video.upstream(peer_id, codec_name, data, timestamp)
        elif wanted:
            self._ask_keyframe(peer_id)  # still waiting for the keyframe asked for on resuming: again, paced

    def screen_upstream(self, peer_id: str, codec_name: str, data: bytes, timestamp: int) -> None:
        """An encoded frame of a publisher's shared screen: always decoded while it shares (it is always shown)."""
        if peer_id in self.sharing:
            self.video.upstream(screen_key(peer_id), codec_name, data, timestamp)

    def _watch_visibility(self) -> None:
        """After each look at the canvases: who is shown, who is paused once its hold ran out, who resumes.

        Cheap when nothing changed: the loop over publishers runs when the set shown
        changes, a peer joins, or a hold runs out.
        """
        shown = self.video.shown()
        now = time.monotonic()
        if shown is None or (shown == self._shown and now < self._hold_ends):
            return
        self._shown = shown
        self._hold_ends = math.inf
        control = self.config.sender_control
        for participant in list(self.participants.values()):
            if grants.PUBLISH not in participant.grants:
                continue
            visibility = participant.visibility
            changed, resumed = visibility.update(participant.peer_id in shown, now, control)
            if control and visibility.hold_ends is not None:
                self._hold_ends = min(self._hold_ends, visibility.hold_ends)
            if resumed:
                # Shown again: its first frame must be a keyframe, asked for now (not after PLI_INTERVAL).
                self._plis.pop(participant.peer_id, None)
                self._ask_keyframe(participant.peer_id)
            if changed and self.on_visibility is not None:
                self.on_visibility(participant)

    def _scene(self, leave_out: str | None = None) -> SceneSpec:
        """What a canvas shows: every publisher but `leave_out` (hide-self), named, with who speaks.

        The video process puts each one's latest picture in, or the placeholder
        when it is stale, missing or turned off. When more participants than
        `max_tiles` (or than the layout holds) are left, the most recent
        speakers are shown, then those who send video (a participant without a
        camera, or with it off, does not take a camera's tile unless it spoke),
        and one "+N" tile counts the others. Shared screens come first, each a tile
        of its own; in the presentation layout the first screen is the large one.
        """
        audio = self.audio
        layout = self.shown_layout
        screens = [
            TileSpec(screen_key(peer_id), f"{self.participants[peer_id].name} (screen)", screen=True)
            for peer_id in self.sharing
        ]
        limit = min(self.config.max_tiles, layout.capacity or self.config.max_tiles) - len(screens)
        ids = [i for i, p in self.participants.items() if i != leave_out and grants.PUBLISH in p.grants]
        if len(ids) > limit:
            cameras = [i for i in ids if self.participants[i].sending_video and self.participants[i].visibility.frames]
            shown, hidden = last_n(ids, list(dict.fromkeys([*audio.speaker_order, *cameras])), limit)
        else:
            shown, hidden = ids, 0
        tiles = [
            TileSpec(p.peer_id, p.name, p.peer_id in audio.speaking, p.sending_video)
            for p in (self.participants[peer_id] for peer_id in shown)
        ]
        if hidden:
            tiles.append(TileSpec(None, f"+{hidden}"))
        speaker = shown.index(audio.active_speaker) + len(screens) if audio.active_speaker in shown else None
        if screens and layout is PRESENTATION:
            speaker = 0
        return SceneSpec((*screens, *tiles), layout, speaker)
