"""A peer's playout buffer (compositor/playout.py): lost, late, reordered and repeated packets, and timestamp
jumps, leave no gap in what the mix gets from it."""

from __future__ import annotations

import numpy as np
import pytest

from compositor import opus
from compositor.audio import FRAME_SAMPLES
from compositor.playout import CONCEAL_FRAMES, MAX_FRAMES
from mcu.media.audio_pipeline import _Channel

AMPLITUDE = 0.3 * 32767


def tone_packets(count: int, fec: bool = True, frequency: float = 440.0) -> list[bytes]:
    """`count` 20 ms Opus packets of a steady tone, each with FEC for the one before when `fec`."""
    t = np.arange(count * FRAME_SAMPLES) / 48000
    source = (AMPLITUDE * np.sin(2 * np.pi * frequency * t)).astype(np.int16)
    encoder = opus.OpusEncoder(32000, expected_loss=10 if fec else 0)
    return [encoder.encode(source[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]) for i in range(count)]


def play(channel: _Channel, arrivals: list[list[tuple[bytes, int]]]) -> np.ndarray:
    """What the mix takes from `channel` at each tick, given the (payload, RTP timestamp) come by then."""
    out = []
    for packets in arrivals:
        channel.decode([(packet, None) for packet in packets])
        out.append(channel.buffer.pull(FRAME_SAMPLES))
    return np.concatenate(out)


def silent_runs(samples: np.ndarray, block: int = 48) -> list[int]:
    """The lengths (ms) of the runs of near-silence (1 ms blocks whose peak is under 3 % of the tone's)."""
    peaks = np.abs(samples[: len(samples) // block * block].astype(np.int32)).reshape(-1, block).max(axis=1)
    quiet = np.concatenate([[0], (peaks < 0.03 * AMPLITUDE).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(quiet))
    return list(edges[1::2] - edges[::2])


def snr(heard: np.ndarray, reference: np.ndarray) -> float:
    """How close `heard` is to `reference`, in dB."""
    heard, reference = heard.astype(np.float64), reference.astype(np.float64)
    return float(10 * np.log10((reference**2).sum() / max(((heard - reference) ** 2).sum(), 1.0)))


def network(count: int, loss: float, jitter: float, seed: int) -> list[list[int]]:
    """Which packets (by index) come by each 20 ms tick: sent every 20 ms, `loss` of them lost at
    random, each delayed 5 ms plus up to `jitter` seconds (so some overtake others)."""
    rng = np.random.default_rng(seed)
    sent = np.arange(count) * 0.02
    arrival = sent + 0.005 + rng.uniform(0, jitter, count)
    kept = rng.random(count) >= loss
    ticks: list[list[int]] = [[] for _ in range(count + 10)]
    for index in np.flatnonzero(kept)[np.argsort(arrival[kept], kind="stable")]:
        ticks[int(np.ceil(arrival[index] / 0.02))].append(int(index))
    return ticks


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_lost_jittered_and_reordered_packets_leave_no_gap_in_the_tone(seed: int):
    packets = tone_packets(250)
    ticks = network(250, loss=0.05, jitter=0.03, seed=seed)
    lost = 250 - sum(len(t) for t in ticks)
    assert lost >= 5 and any(t != sorted(t) for t in ticks)  # losses, and packets overtaking others
    channel = _Channel()
    heard = play(channel, [[(packets[i], i * FRAME_SAMPLES) for i in tick] for tick in ticks])
    # Inside the tone (from its first sound to the end of the last packet's), no near-silence at all:
    # every missing frame was rebuilt (FEC) or concealed (a frame's silence was the old way).
    start = int(np.argmax(np.abs(heard) > 0.03 * AMPLITUDE))
    inside = heard[start : start + 240 * FRAME_SAMPLES]
    assert max(silent_runs(inside), default=0) <= 2
    counts = channel.playout.counts
    assert counts.recovered > 0 and counts.recovered + counts.concealed >= lost
    assert start <= 4 * FRAME_SAMPLES  # playing began a tick after the first packet (which took 1-2)


def test_a_lost_packet_is_rebuilt_from_the_next_one_s_fec_much_better_than_concealment():
    packets = tone_packets(40)
    clean = opus.OpusDecoder()
    reference = [clean.decode(p).copy() for p in packets]
    for lost in (15, 25):
        channel = _Channel()
        # One packet a tick; the lost one never comes. Frame k plays at tick k + 1.
        heard = play(channel, [[] if i == lost else [(p, i * FRAME_SAMPLES)] for i, p in enumerate(packets)])
        frames = heard.reshape(-1, FRAME_SAMPLES)
        concealing = opus.OpusDecoder()
        for p in packets[:lost]:
            concealing.decode(p)
        concealed = concealing.conceal(FRAME_SAMPLES).copy()
        assert snr(frames[lost + 1], reference[lost]) > 10
        assert snr(frames[lost + 1], reference[lost]) > snr(concealed, reference[lost]) + 6
        assert channel.playout.counts.recovered == 1 and channel.playout.counts.concealed == 0
        assert snr(frames[lost + 2], reference[lost + 1]) > 20  # and the next one decodes nearly as it was


def test_without_fec_a_lost_packet_is_concealed():
    packets = tone_packets(30, fec=False)
    channel = _Channel()
    heard = play(channel, [[] if i == 12 else [(p, i * FRAME_SAMPLES)] for i, p in enumerate(packets)])
    assert channel.playout.counts.concealed == 1 and channel.playout.counts.recovered == 0
    assert max(silent_runs(heard[2 * FRAME_SAMPLES : 29 * FRAME_SAMPLES]), default=0) <= 2


def test_10_ms_packets_lost_are_rebuilt_10_ms_at_a_time():
    t = np.arange(80 * 480) / 48000
    source = (AMPLITUDE * np.sin(2 * np.pi * 440.0 * t)).astype(np.int16)
    encoder = opus.OpusEncoder(32000, expected_loss=10)
    packets = [encoder.encode(source[i * 480 : (i + 1) * 480]) for i in range(80)]
    arrivals = [
        [(p, i * 480) for i, p in enumerate(packets) if i // 2 == tick and i not in (31, 50)] for tick in range(40)
    ]
    channel = _Channel()
    heard = play(channel, arrivals)
    counts = channel.playout.counts
    assert counts.late == 0 and counts.recovered + counts.concealed == 2
    assert max(silent_runs(heard[2 * FRAME_SAMPLES : 39 * FRAME_SAMPLES]), default=0) <= 2


def test_corrupt_packets_in_a_row_are_counted_and_concealed():
    """A corrupt packet after a corrupt one: no FEC to look for in it (libopus cannot parse it)."""
    packets = tone_packets(40)
    corrupt = bytes([0x03])  # a TOC byte saying two frames, and nothing after it
    with pytest.raises(opus.OpusError):
        opus.has_fec(corrupt)
    channel = _Channel()
    errors = 0
    out = []
    for i, p in enumerate(packets):
        errors += channel.decode([((corrupt if i in (10, 11) else p, i * FRAME_SAMPLES), None)])
        out.append(channel.buffer.pull(FRAME_SAMPLES))
    heard = np.concatenate(out)
    assert errors == 2 and channel.playout.counts.concealed == 1 and channel.playout.counts.recovered == 1
    assert max(silent_runs(heard[2 * FRAME_SAMPLES : 39 * FRAME_SAMPLES]), default=0) <= 2


def test_a_late_packet_is_dropped_and_counted_and_a_repeated_one_ignored():
    packets = tone_packets(40)
    arrivals: list[list[tuple[bytes, int]]] = [[(p, i * FRAME_SAMPLES)] for i, p in enumerate(packets)]
    late = arrivals[10].pop()
    arrivals[14].append(late)  # after its time (frame 10 plays at tick 11)
    arrivals[20].append(arrivals[20][0])  # twice in one tick
    arrivals[23].append(arrivals[21][0])  # again after it was played
    channel = _Channel()
    heard = play(channel, arrivals)
    counts = channel.playout.counts
    assert counts.late == 2 and counts.recovered == 1  # the late one, and the repeat of a played one
    assert max(silent_runs(heard[2 * FRAME_SAMPLES : 39 * FRAME_SAMPLES]), default=0) <= 2


@pytest.mark.parametrize("jump", [48000 * 10, 48000 // 2, -48000 * 3, 2**32 - 960 * 20])
def test_a_timestamp_jump_resyncs_without_a_gap_or_drops(jump: int):
    """The peer's timeline moves (it paused and resumed, or restarted): playing goes on at once."""
    packets = tone_packets(60)
    timestamps = [(i * FRAME_SAMPLES + (jump if i >= 30 else 0)) % 2**32 for i in range(60)]
    channel = _Channel()
    heard = play(channel, [[(p, t)] for p, t in zip(packets, timestamps)])
    counts = channel.playout.counts
    assert counts.late == 0 and counts.dropped <= 1 and counts.concealed <= 1
    assert max(silent_runs(heard[2 * FRAME_SAMPLES : 59 * FRAME_SAMPLES]), default=0) <= 2


def test_a_peer_that_stops_fades_out_and_starts_again_with_its_next_packet():
    packets = tone_packets(60)
    arrivals = [[] if 20 <= i < 40 else [(p, i * FRAME_SAMPLES)] for i, p in enumerate(packets)]
    channel = _Channel()
    frames = play(channel, arrivals).reshape(-1, FRAME_SAMPLES).astype(np.float64)
    rms = np.sqrt((frames**2).mean(axis=1))
    # Frames 0-19 play at ticks 1-20; ticks 21-25 conceal, fading; then silence until it sends again.
    assert rms[21] > 0.5 * rms[19] and np.all(np.diff(rms[22 : 21 + CONCEAL_FRAMES]) < 0)
    assert np.all(rms[21 + CONCEAL_FRAMES : 41] == 0) and np.all(rms[42:60] > 0.5 * rms[19])
    assert channel.playout.counts.concealed == CONCEAL_FRAMES


def test_a_skipped_peer_keeps_time_and_resumes_on_the_packet_due():
    packets = tone_packets(60, frequency=500.0)
    clean = opus.OpusDecoder()
    reference = [clean.decode(p).copy() for p in packets]
    channel = _Channel()
    for i in range(30):
        channel.skip([((packets[i], i * FRAME_SAMPLES), None)])
    heard = play(channel, [[(p, i * FRAME_SAMPLES)] for i, p in enumerate(packets[30:], 30)])
    frames = heard.reshape(-1, FRAME_SAMPLES)
    assert snr(frames[0], reference[29]) > 3  # the frame due at once (decoded from a stale state)
    assert snr(frames[5], reference[34]) > 20
    assert channel.playout.counts.dropped == channel.playout.counts.late == 0


def test_a_skipped_peer_s_late_packets_are_waited_for_as_when_heard():
    """Unheard, it keeps time as if heard: packets held up together for 40 ms are not dropped as late."""
    packets = tone_packets(60)
    arrivals: list[list[tuple[bytes, int]]] = [[(p, i * FRAME_SAMPLES)] for i, p in enumerate(packets)]
    arrivals[32] = arrivals[30] + arrivals[31] + arrivals[32]  # 30 and 31 come with 32
    arrivals[30] = arrivals[31] = []
    for heard in (False, True):
        channel = _Channel()
        for packets_now in arrivals:
            if heard:
                channel.decode([(packet, None) for packet in packets_now])
            else:
                channel.skip([(packet, None) for packet in packets_now])
        assert channel.playout.counts.late == 0


def test_a_burst_is_cut_to_the_longest_delay():
    packets = tone_packets(60)
    arrivals: list[list[tuple[bytes, int]]] = [[(p, i * FRAME_SAMPLES)] for i, p in enumerate(packets)]
    for i in range(20, 30):  # a 200 ms stall, then everything at once
        arrivals[30].insert(-1, arrivals[i].pop())
    channel = _Channel()
    frames = play(channel, arrivals).reshape(-1, FRAME_SAMPLES)
    # Concealed, then quiet until the burst; of the burst (and the packet after it, which comes at
    # the next tick, when it starts playing), what is over MAX_FRAMES goes at once.
    assert channel.playout.counts.dropped == 12 - MAX_FRAMES
    assert np.all(np.abs(frames[32:60]).max(axis=1) > 0.5 * AMPLITUDE)


def test_concealment_running_out_as_a_packet_comes_starts_afresh_on_it():
    """The peer's packets stop; as its concealment runs out (it counts as quiet), a packet comes for two
    frames on. The tick must not fail (it did, in the client's playback on a 3G-like link: the play
    position was gone while that packet waited), and the packet plays from the next tick."""
    packets = tone_packets(4, fec=False)
    late = 3 * FRAME_SAMPLES  # two frames after the one due when the concealment runs out
    arrivals = [[(packets[0], 0)], [], *[[]] * (CONCEAL_FRAMES - 1), [(packets[3], late)], [], []]
    samples = play(_Channel(), arrivals).reshape(len(arrivals), FRAME_SAMPLES)
    rms = np.sqrt(np.mean(samples.astype(np.float64) ** 2, axis=1))
    assert rms[1] > 0.5 * AMPLITUDE / np.sqrt(2) * 0.5  # the first packet, played
    assert rms[-2] == 0  # the concealment faded out: the peer is quiet
    # The late one, played after the quiet (quieter than the first: its codec state predicts from the lost
    # frames), where a dropped packet would leave silence.
    assert rms[-1] > 100, rms
