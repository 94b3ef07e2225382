// How good each link is, from the browser's own statistics (RTCPeerConnection.getStats) every
// two seconds: round-trip time and packet loss, and for our own link also the tier the server
// sends us and why (its `tier` message: docs/protocol.md). The participant list shows it.

const PERIOD_MS = 2000;

// Loss above these (a fraction of packets) or a round trip above these (s): fair, then poor.
const FAIR = { loss: 0.02, rtt: 0.15 };
const POOR = { loss: 0.08, rtt: 0.4 };

const TIER_REASONS = {
  join: "as asked at join",
  congestion: "lowered: the link is congested",
  probe: "raised: the link has room again",
};

// RTT of the candidate pair in use, and packets received and lost on every inbound stream, in one report.
function read(report) {
  let pair = null;
  let received = 0;
  let lost = 0;
  for (const stat of report.values()) {
    if (stat.type === "transport" && stat.selectedCandidatePairId) {
      pair = report.get(stat.selectedCandidatePairId) ?? pair;
    } else if (stat.type === "candidate-pair" && stat.nominated && stat.state === "succeeded") {
      pair ??= stat;
    } else if (stat.type === "inbound-rtp") {
      received += stat.packetsReceived ?? 0;
      lost += stat.packetsLost ?? 0;
    }
  }
  return { rtt: pair?.currentRoundTripTime ?? null, received, lost };
}

class LinkMeter {
  constructor() {
    this.previous = null;
  }

  // Loss over the last period, not since the call began: a link that recovered shows it.
  async measure(pc) {
    const now = read(await pc.getStats());
    const before = this.previous ?? { received: 0, lost: 0 };
    this.previous = now;
    const received = now.received - before.received;
    const lost = Math.max(0, now.lost - before.lost);
    return { rtt: now.rtt, loss: received + lost > 0 ? lost / (received + lost) : 0 };
  }
}

function level({ rtt, loss }) {
  if (loss > POOR.loss || (rtt ?? 0) > POOR.rtt) return "poor";
  if (loss > FAIR.loss || (rtt ?? 0) > FAIR.rtt) return "fair";
  return "good";
}

function describe(measured, tier) {
  const parts = [];
  if (measured.rtt !== null) parts.push(`RTT ${Math.round(measured.rtt * 1000)} ms`);
  parts.push(`loss ${(measured.loss * 100).toFixed(1)} %`);
  if (tier) parts.push(`picture ${tier.tier} (${TIER_REASONS[tier.reason] ?? tier.reason})`);
  const quality = level(measured);
  const detail = parts.join(", ");
  return { level: quality, text: `${quality} link`, detail, ...measured };
}

/** Measure `meeting`'s links until it stops: `meeting.quality` maps peerId to {level, text, detail, rtt, loss}. */
export function watchLinks(meeting, render) {
  const meters = new Map(); // a peer connection -> its meter
  meeting.quality = new Map();
  const tick = async () => {
    if (meeting.stopped) return;
    const measured = new Map();
    try {
      // Our own link: the peer connection to the server (mcu, sfu), its tier with it.
      if (meeting.pc && meeting.peerId) {
        const meter = meters.get(meeting.pc) ?? meters.set(meeting.pc, new LinkMeter()).get(meeting.pc);
        measured.set(meeting.peerId, describe(await meter.measure(meeting.pc), meeting.tierReport));
      }
      // mesh: a link to each participant.
      for (const [peerId, pc] of meeting.links) {
        const meter = meters.get(pc) ?? meters.set(pc, new LinkMeter()).get(pc);
        measured.set(peerId, describe(await meter.measure(pc)));
      }
    } catch (error) {
      console.warn("getStats", error);
    }
    for (const pc of meters.keys()) if (pc !== meeting.pc && ![...meeting.links.values()].includes(pc)) meters.delete(pc);
    meeting.quality = measured;
    render();
    setTimeout(tick, PERIOD_MS);
  };
  setTimeout(tick, PERIOD_MS);
}
