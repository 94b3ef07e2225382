"""The room's audio clock: every 20 ms, decode, mix-minus, encode Opus once per distinct mix.

All of a room's audio codec work runs on one thread of its own, off the video
encoder's: the peers' Opus packets arrive undecoded (no decoder thread per peer,
no hop back to the event loop per frame) and are decoded at the tick, those
that may be heard only: a peer that sends the RFC 6464 level header (browsers
do) and is too quiet to become a talker soon is not decoded at all. The mix
is the sum of the talkers, the K loudest (or everyone, when K is not set): a
talker hears that sum minus their own voice, with an Opus encode of their own;
every other listener hears the sum itself, and they all share one encode. So a
room runs K + 1 Opus encodes per tick, whatever its size. The codec is libopus
called with the GIL held (compositor/opus.py), so that the thread does not hand the GIL
to the event loop and wait for it back at every codec call. The thread keeps
the time itself (mcu/media/audio_clock.py): the event loop is woken once a tick, to send
what it made.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Protocol, Sequence

import av
import numpy as np

from compositor.audio import FRAME_SAMPLES, SAMPLE_RATE, Limiter, SampleBuffer, mix_sums
from compositor.opus import OpusDecoder
from compositor.playout import Playout, PlayoutCounts
from compositor.speakers import SILENCE_DB, SpeakerDetector, SpeakerEvents, TalkerSelector, levels
from mcu.media.audio_clock import AudioClock
from mcu.media.encoders import AudioEncoder
from mcu.media.tracks import PacketSink
from mcu.rtc.sender import pack_opus

logger = logging.getLogger(__name__)

FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE
#: A consumer of the shared mix's samples: one frame of int16 samples and its pts (samples of the room clock).
PcmSink = Callable[[np.ndarray, int], None]
#: Ticks mixed but not yet delivered by the event loop before ticks are dropped (the loop is stalled).
MAX_PENDING = 5
#: Ticks the audio thread may run late, back to back, after a stall; older ones are dropped.
MAX_BEHIND = 5
#: Audio waiting in a participant's buffer is capped: under clock drift or a
#: burst the oldest samples go, so the mix never lags by more than this.
BUFFER_SECONDS = 0.12


class OpusPacket(NamedTuple):
    """A peer's Opus packet as it came, and its RTP timestamp (48 kHz, modulo 2**32): where it
    belongs in the peer's audio, so that the mixer sees what is missing or late."""

    data: bytes
    timestamp: int


class Voice(Protocol):
    """What the audio clock reads of a participant (mcu/rooms/participant.py) at each tick."""

    @property
    def peer_id(self) -> str: ...

    @property
    def audio_out(self) -> PacketSink: ...

    @property
    def audio_gain(self) -> float: ...

    @property
    def sends_audio(self) -> bool: ...

    def take_audio(self) -> list[tuple[OpusPacket, int | None]]: ...


@dataclass
class AudioStats:
    ticks: int = 0
    #: Ticks mixed on the audio thread, and the Opus encodes they ran.
    mixes: int = 0
    encodes: int = 0
    dropped_ticks: int = 0
    #: Packets that failed to decode (corrupt payloads): skipped, the mix goes on.
    decode_errors: int = 0
    #: CPU time the audio thread spent on the ticks (decode, mix, encode), in seconds.
    cpu_seconds: float = 0.0
    #: Participants decoded, summed over the ticks: a peer that cannot become a talker
    #: soon (its RFC 6464 level says so) is not decoded.
    decodes: int = 0
    #: What the peers' playout buffers did about lost, late and early packets (compositor/playout.py).
    playout: PlayoutCounts = field(default_factory=PlayoutCounts)


class _Channel:
    """One participant's audio codec state; used only on the audio thread."""

    def __init__(self, counts: PlayoutCounts | None = None) -> None:
        self.decoder = OpusDecoder()
        self.buffer = SampleBuffer(max_samples=int(SAMPLE_RATE * BUFFER_SECONDS))
        self.playout = Playout(self.decoder, self.buffer, PlayoutCounts() if counts is None else counts)
        #: The personal mix's encoder and limiter, used while this participant is a talker.
        self.encoder = AudioEncoder()
        self.limiter = Limiter()
        #: The latest RFC 6464 level the peer sent (dBov), NaN until it sends one.
        self.sent_level = np.nan

    def skip(self, payloads: list[tuple[OpusPacket, int | None]]) -> None:
        """Decode nothing this tick: the peer is not heard. Its playout keeps time, so that its decoder
        resumes on the packet due then (tests/test_audio_decoding.py: the voice enters clean)."""
        self.playout.tick((packet for packet, _ in payloads), decode=False)

    def decode(self, payloads: list[tuple[OpusPacket, int | None]]) -> int:
        """Put this tick's frame in the buffer (compositor/playout.py); returns the number of corrupt packets."""
        return self.playout.tick((packet for packet, _ in payloads), decode=True)


class AudioPipeline:
    """Each listener hears the sum of everyone minus their own contribution."""

    def __init__(self, name: str, participants: Callable[[], Sequence[Voice]], talkers: int | None) -> None:
        self._clock = AudioClock(f"audio-{name}", FRAME_SECONDS, self._tick, max_behind=MAX_BEHIND)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stats = AudioStats()
        #: None: everyone is a talker (a personal mix and encode for each listener).
        self._selector = None if talkers is None else TalkerSelector(talkers)
        self._shared_encoder = AudioEncoder()
        self._shared_limiter = Limiter()
        self._participants = participants
        self._channels: dict[str, _Channel] = {}
        self._departed_underruns = 0
        #: Ticks mixed (counted on the audio thread) and delivered (counted on the event loop).
        self._scheduled = 0
        self._delivered = 0
        #: Consumers of the whole room's mix that are not peers (a recording), fed on the audio thread.
        self._sinks: list[PacketSink] = []
        #: Consumers of the whole room's mix as samples (the AAC encode of mcu/media/aac.py), on the audio thread.
        self._pcm_sinks: list[PcmSink] = []
        self._detector = SpeakerDetector()
        #: Who holds the floor, who is speaking and who spoke last (most recent
        #: first). Updated on the event loop when a tick's results are delivered.
        self.active_speaker: str | None = None
        self.speaking: frozenset[str] = frozenset()
        self.speaker_order: list[str] = []
        #: Called on the event loop when speaking starts/stops or the floor changes.
        self.on_speakers: Callable[[SpeakerEvents], None] | None = None

    @property
    def talkers(self) -> set[str] | None:
        """The peers that currently get a personal mix (None: every listener does)."""
        return None if self._selector is None else self._selector.talkers  # type: ignore[return-value]

    @property
    def on_overtime(self) -> set[str]:
        """Talkers whose place a louder voice took while they spoke: mixed until they pause."""
        return set() if self._selector is None else self._selector.on_overtime  # type: ignore[return-value]

    def add_sink(self, sink: PacketSink) -> None:
        """Also push the shared mix's packets (everyone's voices) to `sink`; called on the audio thread."""
        self._sinks = [*self._sinks, sink]

    def remove_sink(self, sink: PacketSink) -> None:
        self._sinks = [s for s in self._sinks if s is not sink]

    def add_pcm_sink(self, sink: PcmSink) -> None:
        """Also hand the shared mix's samples (everyone's voices, limited) to `sink`, with their pts."""
        self._pcm_sinks = [*self._pcm_sinks, sink]

    def remove_pcm_sink(self, sink: PcmSink) -> None:
        self._pcm_sinks = [s for s in self._pcm_sinks if s is not sink]

    def _forget_departed(self, present: list[str]) -> None:
        """Drop the codec state of peers that have left (the channels belong to the audio thread)."""
        for peer_id in self._channels.keys() - set(present):
            self._departed_underruns += self._channels.pop(peer_id).buffer.underruns

    @property
    def dropped_ticks(self) -> int:
        """Ticks not mixed: the event loop was stalled, or the audio thread fell too far behind."""
        return self.stats.dropped_ticks + self._clock.dropped

    @property
    def underruns(self) -> int:
        """Voice frames mixed as silence because none of their audio had arrived."""
        return self._departed_underruns + sum(c.buffer.underruns for c in list(self._channels.values()))

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._clock.start()

    async def stop(self) -> None:
        await self._clock.stop()

    @property
    def running(self) -> bool:
        """Whether the room's audio clock ticks (an MCU room's does; an sfu or mesh room starts none)."""
        return self._clock.running

    def _tick(self, index: int) -> None:
        """One 20 ms frame of the room, on the audio thread; the packets are delivered on the event loop."""
        self.stats.ticks += 1
        participants = list(self._participants())
        ids = [p.peer_id for p in participants]
        self._forget_departed(ids)
        if not participants:
            return
        if self._scheduled - self._delivered >= MAX_PENDING:
            # The event loop has not delivered the last ticks' packets: it is stalled, do not pile up more.
            self.stats.dropped_ticks += 1
            return
        channels = [self._channel(peer_id) for peer_id in ids]
        payloads = [p.take_audio() for p in participants]
        gains = np.array([p.audio_gain for p in participants])
        sending = np.array([p.sends_audio for p in participants], bool)
        packets, events = self._mix_encode(ids, channels, payloads, gains, sending, index * FRAME_SAMPLES)
        self._scheduled += 1
        assert self._loop is not None  # start() sets it before the clock ticks
        try:
            self._loop.call_soon_threadsafe(self._deliver, participants, packets, events)
        except RuntimeError:
            pass  # the loop is closed: the server is going down

    def _channel(self, peer_id: str) -> _Channel:
        channel = self._channels.get(peer_id)
        if channel is None:
            channel = self._channels[peer_id] = _Channel(self.stats.playout)
        return channel

    def _mix_encode(
        self,
        ids: list[str],
        channels: list[_Channel],
        payloads: list[list[tuple[OpusPacket, int | None]]],
        gains: np.ndarray,
        sending: np.ndarray,
        pts: int,
    ) -> tuple[list[list[av.Packet]], SpeakerEvents]:
        started = time.thread_time()
        # The sender's own measure (RFC 6464) where it sends one: what it captured, before coding.
        for channel, pending in zip(channels, payloads):
            channel.sent_level = max((level for _, level in pending if level is not None), default=channel.sent_level)
        sent = np.array([channel.sent_level for channel in channels])
        with np.errstate(divide="ignore"):
            gain_db = 20 * np.log10(gains)
        decoding = self._must_decode(ids, sent + gain_db) & sending
        for channel, pending, decode in zip(channels, payloads, decoding):
            if decode:
                self.stats.decode_errors += channel.decode(pending)
            else:
                channel.skip(pending)
        self.stats.decodes += int(np.count_nonzero(decoding))
        # A skipped peer is silent here (not an underrun: it is not late, it is not heard).
        frames = np.zeros((len(channels), FRAME_SAMPLES), np.int16)
        for decoded in np.flatnonzero(decoding):
            frames[decoded] = channels[decoded].buffer.pull(FRAME_SAMPLES)
        frame_levels = np.where(np.isnan(sent), levels(frames), sent)
        if np.any(gains != 1.0):
            # Moderator volume and mutes.
            frames = np.clip(np.rint(frames * gains[:, None]), -32768, 32767).astype(np.int16)
            frame_levels = np.maximum(frame_levels + gain_db, SILENCE_DB)
        events = self._detector.update(ids, frame_levels)
        if self._selector is None:
            talking = list(range(len(ids)))
        else:
            # Only who sends audio is a voice: a listener without a microphone (or muted) is not
            # counted, so a room of K + 1 voices and any number of listeners mixes every voice.
            voices = np.flatnonzero(sending)
            chosen = self._selector.update([ids[i] for i in voices], frame_levels[voices])
            talking = [int(i) for i in voices if ids[i] in chosen]
        total, minus = mix_sums(frames[talking])
        packets: list[list[av.Packet] | None] = [None] * len(ids)
        for row, i in enumerate(talking):
            packets[i] = pack_opus(channels[i].encoder.encode(channels[i].limiter.process(minus[row]), pts))
        self.stats.mixes += 1
        self.stats.encodes += len(talking)
        sinks, pcm_sinks = self._sinks, self._pcm_sinks
        if len(talking) < len(ids) or sinks or pcm_sinks:
            limited = self._shared_limiter.process(total)
            for pcm_sink in pcm_sinks:
                pcm_sink(limited, pts)
        if len(talking) < len(ids) or sinks:
            # Everyone else hears the talkers' sum: one encode, the same packets.
            shared = pack_opus(self._shared_encoder.encode(limited, pts))
            self.stats.encodes += 1
            packets = [shared if p is None else p for p in packets]
            for sink in sinks:
                for packet in shared:
                    sink.push(packet)
        self.stats.cpu_seconds += time.thread_time() - started
        return packets, events  # type: ignore[return-value]

    def _must_decode(self, ids: list[str], sent_levels: np.ndarray) -> np.ndarray:
        """Which peers to decode this tick: the talkers, those who may become one, and
        those whose level is unknown (no RFC 6464 header). Nobody else is mixed."""
        if self._selector is None:
            return np.ones(len(ids), bool)
        talkers = self._selector.talkers
        return np.array(
            [
                np.isnan(level) or key in talkers or self._selector.may_talk(float(level))
                for key, level in zip(ids, sent_levels)
            ],
            bool,
        )

    def _deliver(
        self, participants: list[Voice], packets_per_peer: list[list[av.Packet]], events: SpeakerEvents
    ) -> None:
        self._delivered += 1
        for participant, packets in zip(participants, packets_per_peer):
            for packet in packets:
                participant.audio_out.push(packet)
        if events:
            self.active_speaker = events.active  # type: ignore[assignment]
            self.speaking = events.speaking
            self.speaker_order = list(events.order)
            if self.on_speakers is not None:
                self.on_speakers(events)
