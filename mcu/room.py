"""A room: its participants and the media clocks that mix them."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Callable

from compositor.layout import Layout, last_n, parse_layout
from signaling import grants
from signaling.receiver import send_pli, video_losses

from .adaptation import Ladder, Switch
from .audio import AudioPipeline
from .chat import ChatRelay
from .config import DEFAULT_TIER, Config
from .participant import Participant
from .picture import PLI_INTERVAL, SceneSpec, TileSpec
from .recording import Recording
from .sfu import Forwarder
from .video import VideoPipeline

#: How often each receiver's controller looks at its feedback (mcu/adaptation.py).
ADAPT_INTERVAL = 0.1
#: The RTCP feedback counted per receiver (mcu/link.py LinkStats) and summed per room.
FEEDBACK_COUNTS = ("reports", "rembs", "nacks", "nacked_packets", "plis", "absurd_rembs", "foreign_reports")


logger = logging.getLogger(__name__)


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
        self.video = VideoPipeline(
            name,
            config.output_tiers(),
            DEFAULT_TIER,
            scenes=self._scene,
            sinks=lambda: [p.video_out for p in self.participants.values() if grants.SUBSCRIBE in p.grants],
            on_pli=self._ask_keyframe,
            stale_seconds=config.stale_video_seconds,
            encode_per_peer=config.encode_per_peer,
        )
        self.audio = AudioPipeline(name, lambda: list(self.participants.values()), config.audio_talkers)
        self.chat = ChatRelay(name, self.participants)
        #: The recording in progress, if any.
        self.recording: Recording | None = None
        #: What the composite looks like; changed at run time (setLayout, the HTTP API), shown on the next tick.
        self.layout: Layout = parse_layout(config.layout)
        self._started = False
        #: When each publisher was last asked for a keyframe on the picture process's behalf.
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
        #: Video frames lost and keyframes asked for (signaling/jitter.py) by the receivers of publishers gone.
        self._departed_losses = (0, 0)

    def add(self, participant: Participant) -> None:
        self.participants[participant.peer_id] = participant
        if self.forwarder is not None:
            self.forwarder.add(participant)  # type: ignore[arg-type]
        if not self._started and self.mode == "mcu":
            # Only an MCU room composes and mixes: sfu and mesh rooms start no codec.
            self._started = True
            self.video.start()
            self.audio.start()
            if self.ladder is not None:
                self._adapting = asyncio.ensure_future(self._adapt_forever())

    def remove(self, peer_id: str) -> Participant | None:
        leaving = self.participants.get(peer_id)
        if leaving is not None and leaving.video_receiver is not None:
            lost, asked = video_losses(leaving.video_receiver)
            self._departed_losses = (self._departed_losses[0] + lost, self._departed_losses[1] + asked)
        if self.mode == "mcu":
            self.video.forget(peer_id)
            self._plis.pop(peer_id, None)
        self.chat.remove(peer_id)
        if self.forwarder is not None:
            self.forwarder.remove(peer_id)
        participant = self.participants.pop(peer_id, None)
        if participant is not None:
            for name in FEEDBACK_COUNTS:
                self._departed_feedback[name] += getattr(participant.link.stats, name)
        return participant

    def feedback(self) -> dict[str, int]:
        """RTCP feedback received from this room's receivers since it opened, by kind."""
        totals = dict(self._departed_feedback)
        for participant in self.participants.values():
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
            for participant in list(self.participants.values()):
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
        """Each receiver's tier and link, as its RTCP reports it (mcu/link.py, mcu/adaptation.py)."""
        links = {}
        for peer_id, participant in self.participants.items():
            controller = participant.controller
            links[peer_id] = {
                "tier": participant.tier,
                "ceiling": participant.ceiling,
                "estimate": None if controller is None or controller.estimate is None else round(controller.estimate),
                "switches": 0 if controller is None else controller.switches,
                "probes": 0 if controller is None else controller.probes,
                "probesFailed": 0 if controller is None else controller.probes_failed,
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

    async def close(self) -> None:
        if self._adapting is not None:
            self._adapting.cancel()
            await asyncio.gather(self._adapting, return_exceptions=True)
        await asyncio.gather(self.video.stop(), self.audio.stop())
        await self.stop_recording()

    def _ask_keyframe(self, peer_id: str) -> None:
        """The picture process cannot decode this publisher (an error, a frame dropped on the way): PLI.

        At most every PLI_INTERVAL per publisher: a stalled picture process drops every
        frame it is sent, and each drop asks for a keyframe.
        """
        participant = self.participants.get(peer_id)
        now = time.monotonic()
        if participant is None or participant.video_receiver is None:
            return
        if now - self._plis.get(peer_id, float("-inf")) < PLI_INTERVAL:
            return
        self._plis[peer_id] = now
        send_pli(participant.video_receiver)

    def _scene(self, leave_out: str | None = None) -> SceneSpec:
        """What a canvas shows: every publisher but `leave_out` (hide-self), named, with who speaks.

        The picture process puts each one's latest picture in, or the placeholder
        when it is stale, missing or turned off. When more participants than
        `max_tiles` (or than the layout holds) are left, the most recent
        speakers are shown and one "+N" tile counts the others.
        """
        audio = self.audio
        limit = min(self.config.max_tiles, self.layout.capacity or self.config.max_tiles)
        ids = [i for i, p in self.participants.items() if i != leave_out and grants.PUBLISH in p.grants]
        shown, hidden = last_n(ids, audio.speaker_order, limit)
        tiles = [
            TileSpec(p.peer_id, p.name, p.peer_id in audio.speaking, p.sending_video)
            for p in (self.participants[peer_id] for peer_id in shown)
        ]
        if hidden:
            tiles.append(TileSpec(None, f"+{hidden}"))
        speaker = shown.index(audio.active_speaker) if audio.active_speaker in shown else None
        return SceneSpec(tuple(tiles), self.layout, speaker)
