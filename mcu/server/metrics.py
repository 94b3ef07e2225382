"""Prometheus metrics at /metrics (prometheus-client), read from the conference when scraped.

Room counters live in the rooms themselves (`Room.stats()`); a custom collector
turns them into metric families at scrape time, so the media path pays nothing
for being observed. Event-loop lag is sampled by a small task: it is the first
sign of an overloaded process (every peer's packets wait on that loop).
"""

from __future__ import annotations

import asyncio
import time
from typing import Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from mcu.rooms.conference import Conference

#: How often the loop-lag probe wakes up.
LAG_PROBE_SECONDS = 0.1

#: Room counters exported as `mcu_<name>_total{room}`: (stats key, metric name, help).
_ROOM_COUNTERS = (
    ("videoFrames", "composite_frames", "Composite frames produced"),
    (
        "videoTicksSkipped",
        "composite_ticks_skipped",
        "Video clock ticks skipped (dropped frames): compose and encode had overrun",
    ),
    ("composeSeconds", "compose_seconds", "Seconds spent composing"),
    ("encodeSeconds", "encode_seconds", "Seconds spent encoding video"),
    ("videoDecodeSeconds", "video_decode_seconds", "Seconds spent decoding participants' video"),
    ("videoDecodeErrors", "video_decode_errors", "Participants' video frames that could not be decoded"),
    ("videoFramesLost", "video_frames_lost", "Publishers' video frames lost on the way in and given up"),
    ("videoKeyframesAsked", "video_keyframes_asked", "Keyframes asked of publishers after a lost frame"),
    (
        "videoUpstreamDropped",
        "video_upstream_dropped",
        "Participants' video frames dropped before decoding: the video process had fallen behind",
    ),
    (
        "videoFramesIgnored",
        "video_frames_ignored",
        "Publishers' video frames not decoded: on no canvas (sender control), camera off, or before a keyframe",
    ),
    ("pictureRestarts", "picture_restarts", "Times the room's video process died and was started again"),
    ("audioTicks", "audio_ticks", "Audio clock ticks"),
    ("audioTicksDropped", "audio_ticks_dropped", "Audio ticks dropped: the audio thread was overloaded"),
    ("audioUnderruns", "audio_underruns", "Participant audio frames filled with silence: nothing had arrived in time"),
    ("audioConcealed", "audio_concealed", "Participant audio frames concealed (Opus PLC): lost or late, no FEC"),
    ("audioFecRecovered", "audio_fec_recovered", "Lost participant audio frames rebuilt from the next packet's FEC"),
    ("audioLateDrops", "audio_late_drops", "Participant audio packets dropped: they came after their time"),
    ("audioPlayoutDrops", "audio_playout_drops", "Participant audio packets dropped to keep the playout delay down"),
    ("audioEncodes", "audio_encodes", "Opus encodes"),
)


class ConferenceCollector(Collector):
    """Rooms, peers, bytes and per-room media counters, read at scrape time."""

    def __init__(self, conference: Conference) -> None:
        self._conference = conference
        #: Per room: (frames, time) at the previous scrape, for the fps gauge.
        self._last: dict[str, tuple[int, float]] = {}

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        conference = self._conference
        rooms = dict(conference.rooms)
        yield GaugeMetricFamily("mcu_rooms", "Rooms open", value=len(rooms))
        yield GaugeMetricFamily(
            "mcu_peers", "Participants in all rooms", value=sum(len(r.participants) for r in rooms.values())
        )
        kicks = conference.kicks
        yield CounterMetricFamily("mcu_kicks", "Participants removed by a moderator (kick, HTTP DELETE)", value=kicks)
        bans = len(conference.bans)
        yield GaugeMetricFamily("mcu_bans", "Removed participants' tokens kept out of their room now", value=bans)
        yield GaugeMetricFamily(
            "mcu_viewers",
            "WHEP viewers in all rooms (not participants)",
            value=sum(len(r.viewers) for r in rooms.values()),
        )
        # By state only: a stream's URL carries its key, and never becomes a label.
        streams = GaugeMetricFamily("mcu_streams", "RTMP streams of all rooms, by state", labels=["state"])
        for state in ("starting", "live", "retrying"):
            count = sum(1 for r in rooms.values() for stream in r.streams.values() if stream.state == state)
            streams.add_metric([state], count)
        yield streams
        sent, received = conference.media_bytes()
        yield CounterMetricFamily(
            "mcu_media_bytes_sent", "Media bytes sent to peers (RTP and data channels, encrypted)", value=sent
        )
        yield CounterMetricFamily(
            "mcu_media_bytes_received",
            "Media bytes received from peers (RTP and data channels, encrypted)",
            value=received,
        )
        stats = {name: room.stats() for name, room in rooms.items()}
        counters = {
            key: CounterMetricFamily(f"mcu_{name}", help, labels=["room"]) for key, name, help in _ROOM_COUNTERS
        }
        peers = GaugeMetricFamily("mcu_room_peers", "Participants in the room", labels=["room"])
        viewers = GaugeMetricFamily("mcu_room_viewers", "WHEP viewers of the room", labels=["room"])
        paused = GaugeMetricFamily(
            "mcu_publishers_paused", "Publishers asked to pause their video: on no canvas (sender control)",
            labels=["room"],
        )  # fmt: skip
        fps = GaugeMetricFamily(
            "mcu_composite_fps", "Composite frames per second since the previous scrape", labels=["room"]
        )
        now = time.monotonic()
        for name, room_stats in stats.items():
            peers.add_metric([name], room_stats["peers"])
            viewers.add_metric([name], room_stats["viewers"])
            paused.add_metric([name], room_stats["publishersPaused"])
            for key, counter in counters.items():
                counter.add_metric([name], room_stats.get(key, 0))
            frames = room_stats["videoFrames"]
            last_frames, last_time = self._last.get(name, (0, rooms[name].created))
            if now > last_time:
                fps.add_metric([name], (frames - last_frames) / (now - last_time))
            self._last[name] = (frames, now)
        for gone in self._last.keys() - stats.keys():
            del self._last[gone]
        yield peers
        yield viewers
        yield paused
        yield fps
        yield from counters.values()
        yield from self._links(rooms)

    def _links(self, rooms: dict) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Receivers' tiers and links, per room: labels are rooms, tiers and kinds, never peers."""
        tiers = GaugeMetricFamily(
            "mcu_receivers_by_tier", "Receivers on each tier now (audio: audio only)", labels=["room", "tier"]
        )
        switches = CounterMetricFamily(
            "mcu_tier_switches", "Receivers moved to another tier, down (congestion) or up (a probe passed)",
            labels=["room", "direction"],
        )  # fmt: skip
        feedback = CounterMetricFamily(
            "mcu_rtcp_feedback", "RTCP feedback from receivers: reports, rembs, nacks, nacked_packets, plis, "
            "absurd_rembs and foreign_reports (the last two ignored)", labels=["room", "kind"],
        )  # fmt: skip
        gated = CounterMetricFamily(
            "mcu_keyframes_gated",
            "Keyframe requests (PLI, tier switch) not passed to an encoder other peers share",
            labels=["room"],
        )
        loss = GaugeMetricFamily(
            "mcu_receiver_loss_max", "The highest loss fraction receivers last reported", labels=["room"]
        )
        rtt = GaugeMetricFamily(
            "mcu_receiver_rtt_max_seconds", "The longest round-trip time to a receiver", labels=["room"]
        )
        for name, room in rooms.items():
            counts: dict[str, int] = {}
            for participant in [*room.participants.values(), *room.viewers.values()]:
                counts[participant.tier] = counts.get(participant.tier, 0) + 1
            for tier, count in counts.items():
                tiers.add_metric([name, tier], count)
            for direction, count in room.switches.items():
                switches.add_metric([name, direction], count)
            for kind, count in room.feedback().items():
                feedback.add_metric([name, kind], count)
            gated.add_metric([name], room.video.stats.keyframes_gated)
            stats = [p.link.stats for p in [*room.participants.values(), *room.viewers.values()]]
            loss.add_metric([name], max((s.fraction_lost for s in stats), default=0.0))
            rtt.add_metric([name], max((s.rtt for s in stats if s.rtt is not None), default=0.0))
        yield from (tiers, switches, feedback, gated, loss, rtt)


class LoopLagProbe:
    """Samples how late the event loop wakes a sleeping task: time every peer's packets wait."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.histogram = Histogram(
            "mcu_event_loop_lag_seconds",
            "How late the event loop ran a task that asked to wake up",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=registry,
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + LAG_PROBE_SECONDS
            await asyncio.sleep(LAG_PROBE_SECONDS)
            self.histogram.observe(max(0.0, loop.time() - due))


def add_metrics(app: web.Application, conference: Conference) -> None:
    """Serve /metrics for `conference`, with a registry of this app's own (no process globals)."""
    registry = CollectorRegistry()
    registry.register(ConferenceCollector(conference))
    # Read at scrape time on the loop thread: a count that keeps growing while peers come and go is a leak.
    tasks = Gauge("mcu_asyncio_tasks", "Asyncio tasks alive in the server's event loop", registry=registry)
    tasks.set_function(lambda: len(asyncio.all_tasks()))
    probe = LoopLagProbe(registry)

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(app: web.Application) -> None:
        probe.start()

    async def stop(app: web.Application) -> None:
        await probe.stop()

    app.router.add_get("/metrics", metrics)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
