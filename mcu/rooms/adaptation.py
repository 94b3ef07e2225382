"""Which tier each receiver gets: an estimate of its link from its RTCP, and a ladder with hysteresis.

Pure logic, no asyncio and no clock of its own (every call is given `now`), so
that it is unit-tested with made-up feedback (tests/test_adaptation.py).

What a receiver tells us (aiortc has no transport-wide congestion control, so
this is REMB plus the receiver reports, as GCC's receive-side variant):
- REMB, its delay-based estimate. It only ever says "less": libwebrtc and aiortc
  cap it near 1.5x the incoming rate, so it cannot show room above the tier sent;
  and after an overuse aiortc's grows back by a few kbit/s a second, so a REMB
  under the rate sent means nothing by itself. What counts is a REMB that falls
  (an overuse: queues growing) to under REMB_LOW of the tier's bitrate.
  A falling REMB counts only with a queue behind it: the round-trip time of the
  last two reports over the link's base (the least seen) at QUEUE_HIGH or more. aiortc's
  delay-based detector also fires on a link that is merely jittery (Wi-Fi: up to
  50 ms of jitter each way, nothing queued), and then says 0.85x what arrives,
  which read alone demoted a peer whose link carried its tier down to audio only
  (scripts/bench_network.py, `lossy-wifi`).
- the fraction lost of each receiver report. Losses above LOSS_HIGH with a queue
  behind them (QUEUE_HIGH), or from LOSS_QUEUELESS on, mean a bottleneck: what
  gets through (the rate sent times 1 - loss) is the link's rate. A few percent
  of random loss without a queue (Wi-Fi) is not congestion: retransmission repairs
  it, and a smaller tier would lose as much. Below LOSS_LOW the link is clean.

The estimate of what may be sent is the lower of REMB (which keeps its own
margin: aiortc's is 0.85x the incoming rate after an overuse) and FIT times the
rate that got through the last lossy report. Down is fast: two congested samples
at least CONFIRM_SECONDS apart (or one very lossy report) move the peer to the
highest tier whose bitrate is within the estimate, within about one to two
reports (≈ 1-2 s). Audio only, the step that takes the picture away, needs both
to agree: while either part still carries the lowest video tier (with FIT's
headroom) the peer moves to that tier, or stays on it. Under heavy tail drop the loss part reads low (a
report that lost 93 % of a 2.6 Mbit/s burst of keyframe and retransmissions says
150 kbit/s got through a 300 kbit/s link, REMB 232 kbit/s), and a deep queue of
the old tier's packets takes seconds to drain under the new tier's stream, its
drops read as congestion of the new tier: either sent a peer whose link carried
`small` to audio only for 7 to 18 s (scripts/bench_network.py, `300k` and
`300k-short`). Up is a probe: after CLEAN_SECONDS of a clean link the sender
pads the peer's stream up to the next tier's bitrate for PROBE_SECONDS, then
sends a sender report. On a link that cannot carry that rate the burst builds a
queue at the bottleneck, the report waits in it, and the round-trip time of its
echo (the next receiver report's LSR/DLSR) exceeds the link's base RTT by
PROBE_QUEUE or more. A short burst queues rather than drops, so the probe does
not hurt the peer's video: on the test's link (700 kbit/s, tbf with a 16 kB
bucket and 200 ms of queue), 0.25 s of 1.1 Mbit/s extra over the low tier empties
the bucket and queues ~100 ms. The peer moves up if the echo shows no queue and no
report shows loss. (REMB cannot judge a probe: aiortc's overuse detector, its
threshold raised by the congestion just before, misses such a burst.) A probe that fails, or an up-move
followed by congestion within TRIAL_SECONDS, doubles the wait before the next
probe (BACKOFF_INITIAL up to BACKOFF_MAX): no flapping, and a link that stays
bad costs its peer one short burst every BACKOFF_MAX seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mcu.media.encoders import Tier

#: The last step of every ladder: the video track carries nothing, audio goes on.
AUDIO_ONLY = "audio"

#: Report loss above which the link is congested, and below which it is clean (GCC's thresholds).
LOSS_HIGH = 0.10
LOSS_LOW = 0.02
#: One report losing this much moves the peer down at once.
LOSS_SEVERE = 0.30
#: Loss over LOSS_HIGH is congestion with a queue behind it (a tail-drop bottleneck fills its queue
#: first), or from this much on without one (a policer drops without queueing): random loss of a
#: few percent (Wi-Fi) passes LOSS_HIGH in a report now and then, and retransmission repairs it.
LOSS_QUEUELESS = 0.20
#: A report whose interval carried less than this share of the tier's bitrate (the pause after a
#: switch) says nothing of what the link carries: its loss makes no estimate.
MIN_SENT_SHARE = 0.5
#: The share of what got through a lossy link that the estimate allows (headroom for audio, RTX, bursts).
FIT = 0.85
#: A falling REMB under this share of the current tier's bitrate is congestion (an overuse
#: alone makes aiortc's REMB 0.85x the incoming rate, which is no reason to move).
REMB_LOW = 0.7
#: A REMB under this share of the previous one is falling; under this share of the rate sent, an overuse.
REMB_FALL = 0.97
REMB_OVERUSE = 0.9
#: The round-trip time over the link's base that shows a queue building (s): more than jitter adds.
QUEUE_HIGH = 0.1
#: Congestion must be seen twice, this far apart at least (and within STALE_SECONDS).
CONFIRM_SECONDS = 0.4
STALE_SECONDS = 3.0
#: After a switch, feedback about the old tier's traffic (a queue draining, the new
#: keyframe's burst, a move down's sequence gap counted lost) is ignored this long: the
#: gap comes within ~0.4 s and the report that counts it within 1.5 s more.
SETTLE_SECONDS = 3.0
#: A link clean this long may be probed for the next tier up.
CLEAN_SECONDS = 3.0
#: How long a probe pads: long enough to outlast a shaper's token bucket and build a queue
#: (a burst that the bucket absorbs shows nothing), short enough that the queue does not overflow.
PROBE_SECONDS = 0.25
#: A probe pads up to the next tier's bitrate times this: the tier's stream comes with audio, RTP
#: and SRTP overhead, retransmissions and keyframe bursts. Probed at its bare bitrate, `low`
#: (400 kbit/s) passed on a 500 kbit/s link, then froze 0.5-0.8 s every second or two until
#: congestion moved it down again 9 s later (scripts/bench_network.py, `drop`).
PROBE_MARGIN = 1.2
#: The probe's echo RTT over the base RTT that shows a queue: the link cannot carry the tier.
PROBE_QUEUE = 0.03
#: Feedback right after a probe's verdict is about the probe: ignored this long.
PROBE_SETTLE = 0.3
#: A probe whose echo has not come after this long (lost, or overtaken by another report) says nothing.
PROBE_WATCH = 3.0
#: Waits before the next probe: the first, and the most after failures doubling it. At 16 s, a
#: link that recovered after failed probes waited up to 16 s for the next one, and the two rungs
#: back to high took 21.5 s (scripts/bench_network.py, `drop`); a failed probe costs a 0.25 s burst.
BACKOFF_INITIAL = 4.0
BACKOFF_MAX = 8.0
#: Congestion this soon after an up-move counts as a failed probe.
TRIAL_SECONDS = 8.0


@dataclass(frozen=True)
class Rung:
    """One step of a ladder: a tier's name and bitrate (0 for audio only)."""

    name: str
    bitrate: int


class Ladder:
    """The server's tiers ordered by bitrate, highest first, audio only last."""

    def __init__(self, tiers: dict[str, Tier]) -> None:
        video = sorted((Rung(name, tier.bitrate) for name, tier in tiers.items()), key=lambda r: -r.bitrate)
        self.rungs: tuple[Rung, ...] = (*video, Rung(AUDIO_ONLY, 0))
        self._index = {rung.name: i for i, rung in enumerate(self.rungs)}

    def __getitem__(self, name: str) -> Rung:
        return self.rungs[self._index[name]]

    @property
    def lowest_video(self) -> Rung | None:
        """The last rung with a picture (None: a ladder of audio only)."""
        return self.rungs[-2] if len(self.rungs) > 1 else None

    def above(self, name: str, ceiling: str) -> Rung | None:
        """The next rung up from `name`, if it is not above `ceiling`."""
        index = self._index[name]
        return self.rungs[index - 1] if index > self._index[ceiling] else None

    def fitting(self, estimate: float, ceiling: str, below: str) -> Rung:
        """The highest rung under `below` (and not above `ceiling`) within `estimate`; audio only at worst."""
        start = max(self._index[ceiling], self._index[below] + 1)
        for rung in self.rungs[start:]:
            if rung.bitrate <= estimate:
                return rung
        return self.rungs[-1]


@dataclass(frozen=True)
class Switch:
    """Move the peer to `tier`, and why ("congestion", "probe"), with the link estimate then (bit/s)."""

    tier: str
    reason: str
    estimate: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Probe:
    """Pad the peer's stream up to `bitrate` for `seconds`, to see whether `tier` would fit."""

    tier: str
    bitrate: int
    seconds: float


class Controller:
    """One receiver's tier: down on congestion, up after a probe that passed. Feed it, then `tick`."""

    def __init__(self, ladder: Ladder, ceiling: str, now: float) -> None:
        self.ladder = ladder
        #: The peer's own choice at join: never above it.
        self.ceiling = ceiling
        self.tier = ceiling
        #: The latest link estimate in bit/s (None until feedback says something), and its parts.
        self.estimate: float | None = None
        self.remb: float | None = None
        self._remb_falling = False
        self._sent: float | None = None
        self.loss = 0.0
        #: The queue (s): the lower of the last two reports' round-trip times over the link's base; None while unknown.
        self.queue: float | None = None
        self._last_queue = 0.0
        self._loss_estimate: float | None = None
        self._congested_since: float | None = None
        self._congested_last: float | None = None
        self._severe = False
        self._clean_since: float | None = now
        self._settle_until = now + SETTLE_SECONDS
        self._backoff = BACKOFF_INITIAL
        self._probe_at = now + CLEAN_SECONDS
        self._probe: Probe | None = None
        self._probe_started = 0.0
        self._probe_failed = False
        self._probe_echoed = False
        #: The queue the last probe's echo showed (s).
        self.probe_queue: float | None = None
        self._up_at: float | None = None
        self.switches = 0
        self.probes = 0
        self.probes_failed = 0
        self.probes_inconclusive = 0
        #: Congestion on the lowest video tier that the estimate says it carries: held there, not moved to audio only.
        self.holds = 0

    # --- feedback --------------------------------------------------------------------------

    def on_remb(self, bitrate: float, now: float) -> None:
        """A valid REMB (the caller drops absurd ones)."""
        if self.remb is not None:
            if bitrate < REMB_FALL * self.remb:
                self._remb_falling = True
            elif bitrate >= self.remb:
                self._remb_falling = False
        self.remb = bitrate
        self._update(now)

    def on_echo(self, rtt: float, base_rtt: float | None, now: float) -> None:
        """The round-trip time of the probe's sender report, and the link's base RTT (None: unknown)."""
        if self._probe is not None:
            self.probe_queue = max(rtt - (base_rtt if base_rtt is not None else rtt), 0.0)
            self._probe_echoed = True
            if self.probe_queue >= PROBE_QUEUE:
                self._probe_failed = True

    def trial(self, now: float) -> None:
        """The probe cannot be sent (no RTX negotiated): it passes, and the move up is the trial
        (congestion within TRIAL_SECONDS undoes it and backs off, as after a failed probe)."""
        if self._probe is not None:
            self._probe_echoed = True

    def on_report(
        self, fraction_lost: float, sent_bitrate: float | None, now: float, queue: float | None = None
    ) -> None:
        """A receiver report of our stream: its loss (0..1), the rate sent since the last one, and its
        round-trip time over the link's base (s; None when the report echoed no sender report of ours)."""
        self.loss = fraction_lost
        self._sent = sent_bitrate
        if queue is not None:
            # The lower of the last two: a queue that builds stays, a jitter spike does not.
            self.queue, self._last_queue = min(queue, self._last_queue), queue
        if self._probe is not None and fraction_lost > LOSS_LOW:
            self._probe_failed = True
        carried = sent_bitrate is not None and sent_bitrate >= MIN_SENT_SHARE * self.ladder[self.tier].bitrate
        if fraction_lost > LOSS_HIGH and sent_bitrate and carried:
            self._loss_estimate = FIT * sent_bitrate * (1 - fraction_lost)
            self._severe = fraction_lost >= LOSS_SEVERE
        elif fraction_lost < LOSS_LOW:
            self._loss_estimate = None
            self._severe = False
        self._update(now)

    def _update(self, now: float) -> None:
        # What got through a lossy link (which counts retransmissions that may have been lost
        # too: an upper bound), and REMB (what arrived, with its own margin).
        parts = [e for e in (self._loss_estimate, self.remb) if e is not None]
        self.estimate = min(parts) if parts else None
        if now < self._settle_until:
            return
        if self._congested():
            if self._congested_last is None or now - self._congested_last > STALE_SECONDS:
                self._congested_since = now
            self._congested_last = now
            self._clean_since = None
        else:
            self._congested_since = self._congested_last = None
            # A standing queue (the mix alone can keep a small link's queue full) is no clean link either:
            # a probe into it would tail-drop the mix.
            clean = self.loss < LOSS_LOW and (self.queue is None or self.queue < QUEUE_HIGH)
            if clean and self._clean_since is None:
                self._clean_since = now
            elif not clean:
                self._clean_since = None

    def _congested(self) -> bool:
        rung = self.ladder[self.tier]
        if rung.bitrate == 0:
            return False
        if self._loss_estimate is not None and (
            self.loss >= LOSS_QUEUELESS or (self.queue is not None and self.queue >= QUEUE_HIGH)
        ):
            return True
        # REMB also falls when less is sent (it is capped at 1.5x what arrives): only a REMB
        # under what was sent is an overuse, and only with a queue behind it is it congestion.
        return (
            self._remb_falling
            and self.remb is not None
            and self._sent is not None
            and self.remb < REMB_OVERUSE * self._sent
            and self.remb < REMB_LOW * rung.bitrate
            and self.queue is not None
            and self.queue >= QUEUE_HIGH
        )

    # --- decisions -------------------------------------------------------------------------

    def tick(self, now: float) -> Switch | Probe | None:
        """What to do now: a switch, a probe to start, or nothing."""
        if self._probe is not None:
            return self._judge_probe(now)
        if self._congested_since is not None and (
            self._severe or self._congested_last - self._congested_since >= CONFIRM_SECONDS  # type: ignore[operator]
        ):
            return self._down(now)
        above = self.ladder.above(self.tier, self.ceiling)
        if (
            above is not None
            and now >= self._probe_at
            and now >= self._settle_until
            and self._clean_since is not None
            and now - self._clean_since >= CLEAN_SECONDS
        ):
            self._probe = Probe(above.name, round(above.bitrate * PROBE_MARGIN), PROBE_SECONDS)
            self._probe_started = now
            self._probe_failed = self._probe_echoed = False
            self.probes += 1
            return self._probe
        if self._up_at is not None and now - self._up_at > TRIAL_SECONDS:
            self._up_at = None
            self._backoff = BACKOFF_INITIAL  # the last move up held
        return None

    def _judge_probe(self, now: float) -> Switch | None:
        probe = self._probe
        assert probe is not None
        if not (self._probe_failed or self._probe_echoed) and now < self._probe_started + probe.seconds + PROBE_WATCH:
            return None
        self._probe = None
        # What the probe's own burst did to the link is its verdict, not congestion of the tier.
        self._congested_since = self._congested_last = None
        self._loss_estimate = None
        self._severe = False
        self._settle_until = max(self._settle_until, now + PROBE_SETTLE)
        if not self._probe_echoed and not self._probe_failed:
            self.probes_inconclusive += 1
            self._probe_at = now + BACKOFF_INITIAL  # try again, no wiser
            return None
        if self._probe_failed:
            self.probes_failed += 1
            self._back_off(now)
            return None
        self._up_at = now
        return self._switch(probe.tier, "probe", now)

    def _down(self, now: float) -> Switch | None:
        estimate = self.estimate or 0.0
        rung = self.ladder.fitting(estimate, self.ceiling, self.tier)
        if self._up_at is not None and now - self._up_at <= TRIAL_SECONDS:
            self.probes_failed += 1  # the move up did not hold
        self._up_at = None
        self._back_off(now)
        lowest = self.ladder.lowest_video
        if rung.bitrate == 0 and lowest is not None and self._carries(lowest):
            if self.tier == lowest.name:
                # Congested, yet what arrives carries this tier: its burst or the old queue, not the link.
                self._congested_since = self._congested_last = None
                self._severe = False
                self._settle_until = now + SETTLE_SECONDS
                self.holds += 1
                return None
            rung = lowest
        return self._switch(rung.name, "congestion", now)

    def _carries(self, rung: Rung) -> bool:
        """Whether either part of the estimate (REMB, what got through the last lossy report) fits `rung`
        with FIT's headroom: REMB is capped at 1.5x what arrives, so on a link a little under the rung a
        REMB at the rung's bitrate is no proof, and audio only is what keeps the voice whole there."""
        return any(part is not None and FIT * part >= rung.bitrate for part in (self._loss_estimate, self.remb))

    def _back_off(self, now: float) -> None:
        self._probe_at = now + self._backoff
        self._backoff = min(2 * self._backoff, BACKOFF_MAX)

    def _switch(self, tier: str, reason: str, now: float) -> Switch:
        self.tier = tier
        self.switches += 1
        self._settle_until = now + SETTLE_SECONDS
        self._congested_since = self._congested_last = None
        self._severe = False
        self._loss_estimate = None
        self.remb = None  # REMB about the old tier's rate says nothing about the new one's
        self._remb_falling = False
        self._clean_since = now + SETTLE_SECONDS
        return Switch(tier, reason, None if self.estimate is None else round(self.estimate))
