"""The tier controller and the link monitor, fed made-up feedback on a made-up clock."""

from __future__ import annotations

import time

import pytest
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    pack_remb_fci,
)

from mcu.config import Config
from mcu.rooms import adaptation
from mcu.rooms.adaptation import AUDIO_ONLY, PROBE_MARGIN, Controller, Ladder, Probe, Switch
from mcu.rtc.link import RTT_FRESH, LinkMonitor
from mcu.rtc.sender import RESYNC_GAP

LADDER = Ladder(Config().output_tiers())  # high 1.5M, low 400k, small 150k, audio
SSRC = 1234


def run(
    controller: Controller,
    start: float,
    end: float,
    remb: float | None,
    loss: float,
    sent: float | None,
    queue: float | None = 0.0,
    report_queue: float | None = None,
):
    """Feedback once a second (a report, then a REMB), ticks every 0.1 s; the decisions made, with their times.

    A probe's report is echoed at once, `queue` seconds over a base RTT of 10 ms (None: never echoed);
    each report's own round trip is `report_queue` over the base (None: unknown).
    """
    decisions = []
    t = start
    while t < end:
        if round(t * 10) % 10 == 0:
            controller.on_report(loss, sent, t, report_queue)
            if remb is not None:
                controller.on_remb(remb, t + 0.05)
        decision = controller.tick(t)
        if decision is not None:
            decisions.append((round(t, 1), decision))
        if isinstance(decision, Probe) and queue is not None:
            controller.on_echo(0.01 + queue, 0.01, t + 0.05)
        t += 0.1
    return decisions


def congest(controller: Controller, start: float) -> float:
    """A 700 kbit/s bottleneck under a 1.5 Mbit/s tier until the controller moves down; the time it did."""
    t = start
    while controller.tier == "high":
        assert t < start + 10
        run(controller, t, t + 0.1, remb=600_000, loss=0.5, sent=1_500_000)
        t += 0.1
    return t


def test_the_ladder_orders_tiers_by_bitrate_and_ends_with_audio_only():
    assert [r.name for r in LADDER.rungs] == ["high", "low", "small", AUDIO_ONLY]
    assert LADDER.fitting(600_000, "high", "high").name == "low"
    assert LADDER.fitting(200_000, "high", "high").name == "small"
    assert LADDER.fitting(50_000, "high", "high").name == AUDIO_ONLY
    assert LADDER.fitting(5_000_000, "low", "small").name == AUDIO_ONLY  # only below "small"
    assert LADDER.fitting(5_000_000, "low", "high").name == "low"  # never above the ceiling
    assert LADDER.above("low", "high").name == "high" and LADDER.above("low", "low") is None


def test_a_clean_link_keeps_its_tier_and_is_never_probed_at_its_ceiling():
    controller = Controller(LADDER, "high", 0.0)
    assert run(controller, 0.0, 60.0, remb=2_000_000, loss=0.0, sent=1_500_000) == []


def test_a_tail_drop_bottleneck_moves_the_peer_down_within_two_reports():
    controller = Controller(LADDER, "high", 0.0)
    assert run(controller, 0.0, 10.0, remb=1_800_000, loss=0.0, sent=1_500_000) == []
    # 700 kbit/s under 1.5 Mbit/s: half the packets lost, REMB at 0.85 of what arrives.
    assert congest(controller, 10.0) <= 11.1
    assert controller.tier == "low"


@pytest.mark.parametrize(
    "queue, moved", [(0.25, True), (0.04, False), (None, False)], ids=["queue", "jitter", "no-rtt"]
)
def test_a_falling_remb_moves_the_peer_down_only_with_a_queue_behind_it(queue, moved):
    """A queue building (a bottleneck without loss yet) moves the peer down on REMB alone; a link that is
    only jittery (its reports' round trips within jitter of the base) does not, whatever its REMB says."""
    controller = Controller(LADDER, "high", 0.0)
    # aiortc's REMB after an overuse grows back slowly: low, steady, no loss: the link carries the tier.
    assert run(controller, 0.0, 20.0, remb=650_000, loss=0.0, sent=1_500_000) == []
    decisions = []
    for i, bitrate in enumerate([600_000, 550_000, 500_000, 450_000]):
        controller.on_report(0.0, 1_500_000, 20.0 + i, queue)
        controller.on_remb(bitrate, 20.0 + i)
        decisions += [d for d in (controller.tick(20.0 + i + k / 10) for k in range(10)) if d is not None]
    assert decisions == ([Switch("low", "congestion")] if moved else [])


@pytest.mark.parametrize(
    "loss, queue, moved",
    [(0.12, None, False), (0.12, 0.02, False), (0.12, 0.2, True), (0.25, None, True)],
    ids=["random-loss", "random-loss-with-jitter", "tail-drop-queue", "policer"],
)
def test_loss_is_congestion_with_a_queue_behind_it_or_when_heavy(loss, queue, moved):
    """12 % loss in every report (Wi-Fi on a bad day) without a queue building does not move the peer:
    retransmission repairs it and a smaller tier would lose as much. With a queue (a tail-drop bottleneck),
    or at 20 % and more (a policer drops without queueing), it does."""
    controller = Controller(LADDER, "high", 0.0)
    decisions = run(controller, 0.0, 20.0, remb=1_800_000, loss=loss, sent=1_500_000, report_queue=queue)
    assert bool([d for _, d in decisions if isinstance(d, Switch)]) == moved, decisions


def test_a_report_of_the_pause_after_a_switch_makes_no_estimate():
    """The report whose interval held the switch's pause says the sender sent little: its loss says nothing
    of what the link carries, and must not send the peer to audio only."""
    controller = Controller(LADDER, "low", 0.0)
    run(controller, 0.0, 10.0, remb=1_000_000, loss=0.0, sent=400_000)
    controller.on_report(0.5, 20_000, 10.0, 0.3)
    controller.on_report(0.5, 20_000, 10.5, 0.3)
    assert controller.estimate == 1_000_000 and controller.tick(10.6) is None


def test_one_lossy_report_alone_does_not_move_the_peer():
    controller = Controller(LADDER, "high", 0.0)
    run(controller, 0.0, 10.0, remb=1_800_000, loss=0.0, sent=1_500_000)
    controller.on_report(0.15, 1_500_000, 10.0)
    assert [controller.tick(10.0 + i / 10) for i in range(9)] == [None] * 9
    assert run(controller, 11.0, 20.0, remb=1_800_000, loss=0.0, sent=1_500_000) == []


def test_a_peer_goes_down_to_audio_only_when_nothing_fits():
    """A 60 kbit/s link: each tier sent loses most of its packets, and REMB says 60 kbit/s."""
    controller = Controller(LADDER, "high", 0.0)
    decisions = []
    for second in range(20):
        sent = max(LADDER[controller.tier].bitrate, 40_000)
        decisions += run(controller, float(second), second + 1.0, remb=60_000, loss=0.6, sent=sent)
    assert [d.tier for _, d in decisions if isinstance(d, Switch)][-1] == AUDIO_ONLY


def test_a_tail_drop_burst_that_reads_under_the_lowest_video_tier_moves_to_it_if_remb_carries_it():
    """300 kbit/s behind 200 ms of queue: the report of the keyframe and retransmission burst lost 93 % of
    2.6 Mbit/s (so 0.85 x 171 kbit/s got through: under `small`), REMB 232 kbit/s: the link carries `small`,
    and audio only would take the picture away for a probe's climb (7 s in scripts/bench_network.py)."""
    controller = Controller(LADDER, "high", 0.0)
    run(controller, 0.0, 10.0, remb=1_800_000, loss=0.0, sent=1_500_000)
    controller.on_remb(232_000, 10.0)
    controller.on_report(0.934, 2_600_000, 10.05)
    assert controller.estimate is not None and controller.estimate < LADDER["small"].bitrate
    assert controller.tick(10.1) == Switch("small", "congestion")


def test_congestion_on_the_lowest_video_tier_that_its_link_carries_holds_it_there():
    """The old tier's deep queue drains for seconds under `small`'s stream, its drops reported as `small`'s
    loss (26 % of 263 kbit/s, REMB 222 kbit/s on a 300 kbit/s link): a hold, not audio only."""
    controller = Controller(LADDER, "small", 0.0)
    decisions = run(controller, 0.0, 6.0, remb=222_000, loss=0.262, sent=263_000)
    assert decisions == [] and controller.tier == "small"
    assert controller.holds >= 1


def test_a_link_under_the_lowest_video_tier_goes_to_audio_only_even_with_remb_at_its_cap():
    """100 kbit/s under `small` (150 kbit/s): aiortc's REMB may read up to 1.5x what arrives, the tier's
    bitrate itself, which is no proof it fits: audio only keeps the voice whole."""
    controller = Controller(LADDER, "small", 0.0)
    decisions = run(controller, 0.0, 10.0, remb=150_000, loss=0.4, sent=170_000)
    assert [d.tier for _, d in decisions if isinstance(d, Switch)] == [AUDIO_ONLY]


def test_up_needs_a_probe_that_passes_and_a_failed_probe_backs_off():
    controller = Controller(LADDER, "high", 0.0)
    t = round(congest(controller, 5.0))
    assert controller.tier == "low"
    # The link stays at 700 kbit/s: the clean link at the low tier is probed, and each probe's
    # report comes back 110 ms late (the queue its burst made).
    decisions = [t for t, d in run(controller, t, 80.0, remb=600_000, loss=0.0, sent=400_000, queue=0.11)]
    gaps = [round(b - a, 1) for a, b in zip(decisions, decisions[1:])]
    assert len(decisions) >= 3 and gaps == sorted(gaps), gaps  # waits grow...
    assert max(gaps) <= adaptation.BACKOFF_MAX + adaptation.PROBE_WATCH + 1.5  # ...up to the cap
    assert controller.tier == "low" and controller.probes_failed == len(decisions)
    assert controller.probe_queue == pytest.approx(0.11)
    # The bottleneck lifts: the next probe passes and the peer goes up.
    decisions = run(controller, 80.0, 80.0 + adaptation.BACKOFF_MAX + 5, remb=650_000, loss=0.0, sent=400_000)
    assert decisions[-1][1] == Switch("high", "probe"), decisions
    assert decisions[-1][0] - 80.0 <= adaptation.BACKOFF_MAX + adaptation.CLEAN_SECONDS + 2


def test_a_probe_without_echo_is_tried_again_without_backing_off():
    controller = Controller(LADDER, "high", 0.0)
    t = round(congest(controller, 5.0))
    decisions = run(controller, t, t + 40, remb=600_000, loss=0.0, sent=400_000, queue=None)
    probes = [t for t, d in decisions if isinstance(d, Probe)]
    gaps = {round(b - a) for a, b in zip(probes, probes[1:])}
    assert controller.tier == "low" and len(probes) >= 4 and controller.probes_failed == 0
    assert gaps == {round(adaptation.PROBE_SECONDS + adaptation.PROBE_WATCH + adaptation.BACKOFF_INITIAL)}
    assert controller.probes_inconclusive >= len(probes) - 1  # the last one may still wait for its echo


def test_a_probe_pads_above_the_next_tiers_bitrate():
    """The tier's stream needs more than its bitrate (audio, overhead, retransmissions): the probe asks
    PROBE_MARGIN more, so that a link that only just carries the bare bitrate is not taken for room."""
    controller = Controller(LADDER, "high", 0.0)
    t = round(congest(controller, 5.0))
    while not isinstance(probe := controller.tick(t), Probe):
        controller.on_report(0.0, 400_000, t)
        t += 0.1
    assert probe.tier == "high" and probe.bitrate == round(LADDER["high"].bitrate * PROBE_MARGIN)
    assert probe.bitrate > LADDER["high"].bitrate


def test_without_padding_the_move_up_is_the_trial():
    controller = Controller(LADDER, "high", 0.0)
    t = round(congest(controller, 5.0))
    while not isinstance(controller.tick(t), Probe):
        controller.on_report(0.0, 400_000, t)
        t += 0.1
    controller.trial(t)
    assert controller.tick(t + 0.1) == Switch("high", "probe")


def test_a_move_up_that_does_not_hold_counts_as_a_failed_probe():
    controller = Controller(LADDER, "high", 0.0)
    up = round(congest(controller, 5.0))
    while controller.tier != "high" and up < 40:
        run(controller, up, up + 1, remb=650_000, loss=0.0, sent=400_000)
        up += 1
    assert controller.tier == "high"
    failed = controller.probes_failed
    assert congest(controller, up + 0.1) <= up + 0.1 + adaptation.SETTLE_SECONDS + 2
    assert controller.tier == "low"
    assert controller.probes_failed == failed + 1


def remb(bitrate: int, ssrcs: list[int]) -> RtcpPsfbPacket:
    return RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=pack_remb_fci(bitrate, ssrcs))


def report(
    ssrc: int, fraction_lost: int, jitter: int = 900, highest: int = 0, lost: int = 0, lsr: int = 0, dlsr: int = 0
) -> RtcpRrPacket:
    info = RtcpReceiverInfo(
        ssrc=ssrc,
        fraction_lost=fraction_lost,
        packets_lost=lost,
        highest_sequence=highest,
        jitter=jitter,
        lsr=lsr,
        dlsr=dlsr,
    )
    return RtcpRrPacket(ssrc=1, reports=[info])


def test_reports_about_the_stream_before_a_move_downs_jump_make_no_estimate():
    """Until a report's interval begins past the jump, it counts the old stream's tail drops and the
    1024 numbers never sent as lost (69-94 % in bench_network): read, counted, not believed."""
    reports = []
    monitor = LinkMonitor(on_report=lambda loss, sent, t, queue: reports.append(loss))
    monitor.observe(report(SSRC, 0, highest=0x1FFF0), SSRC, 99, 0, 0.0)
    monitor.skipped(0xFFF8, RESYNC_GAP)  # the new stream starts at 0x3F8, past the wrap
    monitor.observe(report(SSRC, 220, highest=0x1FFF6), SSRC, 99, 0, 1.0)  # the old stream's last packets
    monitor.observe(report(SSRC, 240, highest=0x20400), SSRC, 99, 0, 2.0)  # the jump, and a few new ones
    assert reports == [0.0] and monitor.stats.old_stream_reports == 2
    assert monitor.stats.fraction_lost == pytest.approx(240 / 256)  # shown as the receiver said it
    monitor.observe(report(SSRC, 13, highest=0x20440), SSRC, 99, 0, 3.0)  # the new stream alone
    assert reports == [0.0, pytest.approx(13 / 256)]
    # Without the jump told, the same report reads as the congestion it is not.
    plain = []
    other = LinkMonitor(on_report=lambda loss, sent, t, queue: plain.append(loss))
    other.observe(report(SSRC, 240, highest=0x20400), SSRC, 99, 0, 2.0)
    assert plain == [pytest.approx(240 / 256)]


@pytest.mark.parametrize("bitrate", [0, 5, 10**10, ((1 << 18) - 1) << 63])
def test_an_absurd_remb_is_counted_and_ignored(bitrate):
    seen = []
    monitor = LinkMonitor(on_remb=lambda b, t: seen.append(b))
    monitor.observe(remb(bitrate, [SSRC]), SSRC, None, 0, 0.0)
    assert seen == [] and monitor.stats.absurd_rembs == 1 and monitor.stats.remb is None
    monitor.observe(remb(800_000, [SSRC]), SSRC, None, 0, 0.0)
    assert seen == [800_000] and monitor.stats.remb == 800_000


def test_reports_loss_nacks_and_plis_are_read_and_foreign_blocks_counted():
    reports = []
    monitor = LinkMonitor(on_report=lambda loss, sent, t, queue: reports.append((loss, sent)))
    monitor.observe(report(SSRC, 64), SSRC, 99, 0, 0.0)
    monitor.observe(report(SSRC, 0, 9000), SSRC, 99, 125_000, 1.0)
    monitor.observe(report(99, 0), SSRC, 99, 125_000, 1.0)  # our retransmission stream: skipped
    monitor.observe(report(555, 0), SSRC, 99, 125_000, 1.0)  # nobody's: counted
    nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=SSRC)
    nack.lost = [1, 2, 3]
    monitor.observe(nack, SSRC, 99, 0, 1.0)
    monitor.observe(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=SSRC), SSRC, 99, 0, 1.0)
    assert reports == [(0.25, None), (0.0, 1_000_000)]
    stats = monitor.stats
    assert (stats.reports, stats.foreign_reports, stats.nacks, stats.nacked_packets, stats.plis) == (2, 1, 1, 3, 1)
    assert stats.jitter == pytest.approx(0.1)


def test_the_echo_of_an_older_sender_report_is_timed_and_shows_the_queue_behind_it():
    """Behind 1.6 s of queue a report echoes the sender report of 1.6 s ago, not the last one sent:
    only a history of them times it. A round trip no report has renewed for long says no queue."""
    queues = []
    monitor = LinkMonitor(on_report=lambda loss, sent, t, queue: queues.append(queue))
    now = time.time()
    monitor.sent_report(0x1000, now - 0.03)
    monitor.observe(report(SSRC, 0, lsr=0x1000, dlsr=655), SSRC, 99, 0, 0.0)  # 10 ms held: a 20 ms link
    for i, lsr in enumerate([0x2000, 0x3000, 0x4000]):  # one a second, the last 0.4 s ago
        monitor.sent_report(lsr, now - 2.4 + i)
    monitor.observe(report(SSRC, 0, lsr=0x2000, dlsr=655), SSRC, 99, 0, 1.0)
    assert monitor.stats.rtt == pytest.approx(2.39, abs=0.05)
    assert queues[-1] == pytest.approx(2.37, abs=0.05)
    monitor.observe(report(SSRC, 0, lsr=0x9999), SSRC, 99, 0, 2.0)  # not one of ours: no round trip
    assert monitor.stats.rtt == pytest.approx(2.39, abs=0.05) and queues[-1] is not None
    monitor.observe(report(SSRC, 0), SSRC, 99, 0, 1.0 + RTT_FRESH + 0.1)
    assert queues[-1] is None


def test_a_standing_queue_on_audio_only_holds_the_probe_until_it_drains():
    """The mix alone kept an 80 kbit/s link's queue standing (1.8 s): a probe into it tail-dropped the mix.
    A link is clean only without loss and without a queue."""
    controller = Controller(LADDER, "high", 0.0)
    controller.tier = AUDIO_ONLY
    decisions = run(controller, 0.0, 20.0, remb=None, loss=0.0, sent=30_000, report_queue=0.8)
    assert decisions == []
    decisions = run(controller, 20.0, 30.0, remb=None, loss=0.0, sent=30_000, report_queue=0.01)
    assert [d for _, d in decisions if isinstance(d, Probe)][:1] == [
        Probe("small", round(150_000 * PROBE_MARGIN), 0.25)
    ]
