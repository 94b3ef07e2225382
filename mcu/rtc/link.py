"""What one receiver's RTCP says about its downstream link, checked and counted.

Fed by the peer's video sender (mcu/rtc/sender.py `watch_rtcp`) with every RTCP
packet aiortc routes to it. Supported feedback: REMB and receiver reports (loss,
jitter, and the round-trip time aiortc derives from them), NACK and PLI/FIR.
aiortc negotiates no transport-wide congestion control, so there is none.

Feedback that makes no sense is bounded here: a REMB under MIN_REMB or over
MAX_REMB is counted and ignored, a loss fraction is clamped to 0..1, report
blocks about other SSRCs are counted and skipped. RTCP about SSRCs that no
sender of the connection owns never gets here: aiortc's router drops it.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
    unpack_remb_fci,
)

#: REMB outside this range (bit/s) is absurd: counted, not believed.
MIN_REMB = 10_000
MAX_REMB = 100_000_000
#: The RTP clock of video, to turn report jitter into seconds.
VIDEO_CLOCK = 90_000
#: The base round-trip time is the least seen over this many seconds (queues only ever add).
RTT_WINDOW = 30.0
#: Sender reports remembered for the round trip of their echo: a report block echoes the last
#: sender report its receiver got, which behind a deep queue is several older than the last sent
#: (one a second, 1.6 s of queue at 300 kbit/s in scripts/bench_network.py).
REPORT_HISTORY = 16
#: A round-trip time older than this says nothing of the queue now (no report has echoed a sender report since).
RTT_FRESH = 5.0


@dataclass
class LinkStats:
    """One receiver's link as its RTCP reports it, and the counts of what it sent."""

    #: The last believable REMB, bit/s.
    remb: int | None = None
    #: The last report's fraction lost (0..1) and interarrival jitter (s), and aiortc's RTT (s).
    fraction_lost: float = 0.0
    jitter: float = 0.0
    rtt: float | None = None
    #: The rate sent between the last two reports (media, retransmissions, padding), bit/s.
    sent_bitrate: float | None = None
    reports: int = 0
    rembs: int = 0
    nacks: int = 0
    nacked_packets: int = 0
    plis: int = 0
    #: Feedback ignored: absurd REMBs, report blocks about other SSRCs.
    absurd_rembs: int = 0
    foreign_reports: int = 0
    #: Reports about the stream before a move down's jump (mcu/rtc/link.py `skipped`): read, not believed.
    old_stream_reports: int = 0

    def describe(self) -> dict:
        return {
            "remb": self.remb,
            "fractionLost": round(self.fraction_lost, 3),
            "jitter": round(self.jitter, 4),
            "rtt": None if self.rtt is None else round(self.rtt, 4),
            "sentBitrate": None if self.sent_bitrate is None else round(self.sent_bitrate),
            "reports": self.reports,
            "rembs": self.rembs,
            "nacks": self.nacks,
            "nackedPackets": self.nacked_packets,
            "plis": self.plis,
            "absurdRembs": self.absurd_rembs,
            "foreignReports": self.foreign_reports,
            "oldStreamReports": self.old_stream_reports,
        }


class LinkMonitor:
    """Reads one video sender's RTCP into `LinkStats` and tells `on_remb` / `on_report` what it believes."""

    def __init__(
        self,
        on_remb: Callable[[float, float], None] | None = None,
        on_report: Callable[[float, float | None, float, float | None], None] | None = None,
        on_echo: Callable[[float, float], None] | None = None,
    ) -> None:
        self.stats = LinkStats()
        self._on_remb = on_remb
        self._on_report = on_report
        self._on_echo = on_echo
        self._last_report: tuple[float, int] | None = None
        #: The last report's extended highest sequence number, and the first sequence number (16 bits)
        #: of the stream the sender started after its last jump (`skipped`) while no report is about it alone.
        self._last_highest: int | None = None
        self._new_stream: int | None = None
        #: A probe's sender report (its LSR, and when it left, time.time()) whose echo is awaited.
        self._echo: tuple[int, float] | None = None
        #: The last sender reports sent: their LSR (the middle 32 bits of their NTP time) and when they left.
        self._sent_reports: deque[tuple[int, float]] = deque(maxlen=REPORT_HISTORY)
        self._rtts: deque[tuple[float, float]] = deque()
        self._rtt_at = 0.0

    def rtt_sample(self, rtt: float | None, now: float) -> None:
        """One report's round-trip time (s), for `base_rtt` and the queue over it."""
        if rtt is None or rtt < 0:
            return
        self.stats.rtt = rtt
        self._rtt_at = now
        rtts = self._rtts
        while rtts and (rtts[-1][1] >= rtt or now - rtts[0][0] > RTT_WINDOW):
            rtts.pop() if rtts[-1][1] >= rtt else rtts.popleft()
        rtts.append((now, rtt))

    @property
    def base_rtt(self) -> float | None:
        """The least round-trip time of the last RTT_WINDOW seconds: the link without its queue."""
        return self._rtts[0][1] if self._rtts else None

    def skipped(self, first: int, count: int) -> None:
        """The sender jumped its sequence numbers from `first` (16 bits) over `count` it never sent, and
        started a new stream (mcu/rtc/sender.py `resync`, on a move down).

        Until a report is about the new stream alone, reports say nothing of it: they count the
        old stream's packets that the bottleneck dropped while they waited in its queue (up to
        1.5 s behind a 300 kbit/s link, then up to 1.5 s more until the next report), and the
        jump as lost (RFC 3550 counts what was expected). Such a report, 3 s after a move down,
        said 69-94 % lost and moved a peer from `small` or `low` to audio only (bench_network).
        """
        self._new_stream = (first + count) & 0xFFFF

    def sent_report(self, lsr: int, sent_at: float) -> None:
        """A sender report with this LSR left at `sent_at` (time.time()): its echo, whenever it comes,
        gives a round-trip time."""
        self._sent_reports.append((lsr, sent_at))

    def expect_echo(self, lsr: int, sent_at: float) -> None:
        """A probe's sender report with this LSR left at `sent_at` (time.time()): report the RTT of its echo."""
        self.sent_report(lsr, sent_at)
        self._echo = (lsr, sent_at)

    def _sent_at(self, lsr: int) -> float | None:
        """When the sender report with this LSR left (the latest of that LSR), None if it is not remembered."""
        for sent_lsr, sent_at in reversed(self._sent_reports):
            if sent_lsr == lsr:
                return sent_at
        return None

    def observe(
        self,
        packet: object,
        ssrc: int,
        rtx_ssrc: int | None,
        octets: int,
        now: float,
    ) -> None:
        """One RTCP packet routed to the sender of SSRC `ssrc` (retransmissions on `rtx_ssrc`),
        which has sent `octets` payload bytes so far (retransmissions and padding included: what
        the link had to carry). Its sender reports are told with `sent_report`."""
        stats = self.stats
        if isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            for report in packet.reports:
                if report.ssrc != ssrc:
                    if report.ssrc != rtx_ssrc:
                        stats.foreign_reports += 1
                    continue
                sent_at = self._sent_at(report.lsr) if report.lsr else None
                if sent_at is not None:
                    # This report's own round trip, not aiortc's smoothed one: a queue shows at once.
                    self.rtt_sample(time.time() - sent_at - report.dlsr / 65536, now)
                self._report(report.fraction_lost, report.jitter, octets, now, self._about_now(report.highest_sequence))
                if self._echo is not None and report.lsr == self._echo[0]:
                    rtt = time.time() - self._echo[1] - report.dlsr / 65536
                    self._echo = None
                    if self._on_echo is not None:
                        self._on_echo(rtt, now)
        elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            stats.nacks += 1
            stats.nacked_packets += len(packet.lost)
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            stats.plis += 1
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                return
            if ssrc in ssrcs:
                self._remb(bitrate, now)

    def _remb(self, bitrate: int, now: float) -> None:
        stats = self.stats
        if not MIN_REMB <= bitrate <= MAX_REMB:
            stats.absurd_rembs += 1
            return
        stats.remb = bitrate
        stats.rembs += 1
        if self._on_remb is not None:
            self._on_remb(bitrate, now)

    def _about_now(self, highest: int) -> bool:
        """Whether a report with this extended highest sequence number is about the current stream
        alone: its interval began after the sender's last jump (if any)."""
        last, self._last_highest = self._last_highest, highest
        start = self._new_stream
        if start is None:
            return True
        if last is not None and (last + 1 - start) % 0x10000 < 0x8000:
            self._new_stream = None
            return True
        return False

    def _report(self, fraction_lost: int, jitter: int, octets: int, now: float, current: bool = True) -> None:
        stats = self.stats
        stats.reports += 1
        # An 8-bit fixed point fraction (RFC 3550); a negative or wrapped value is nonsense.
        stats.fraction_lost = min(max(fraction_lost, 0), 255) / 256
        stats.jitter = max(jitter, 0) / VIDEO_CLOCK
        if self._last_report is not None:
            then, sent = self._last_report
            if now - then > 0.05:
                stats.sent_bitrate = 8 * max(octets - sent, 0) / (now - then)
        self._last_report = (now, octets)
        if not current:
            stats.old_stream_reports += 1
            return
        if self._on_report is not None:
            base = self.base_rtt
            fresh = stats.rtt is not None and now - self._rtt_at <= RTT_FRESH
            queue = None if not fresh or stats.rtt is None or base is None else max(stats.rtt - base, 0.0)
            self._on_report(stats.fraction_lost, stats.sent_bitrate, now, queue)
