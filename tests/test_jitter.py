"""The server's video jitter buffer and NACKs (mcu/rtc/jitter.py), on packets made by hand and a fake clock."""

from __future__ import annotations

from aiortc.codecs import depayload
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from mcu.rtc.jitter import (
    DOWNLINK_MAX_WAIT,
    DOWNLINK_NACK_RETRY,
    DOWNLINK_NACK_TRIES,
    MAX_WAIT,
    NACK_HISTORY,
    NACK_RETRY,
    NACK_TRIES,
    PLI_INTERVAL,
    PacedNacks,
    VideoJitterBuffer,
    starts_keyframe,
)

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def vp8(seq: int, timestamp: int, first: bool, marker: bool, key: bool = False) -> RtpPacket:
    """One VP8 packet: the payload descriptor's S bit on a frame's first packet, the frame tag's key bit there."""
    body = bytes([0x10 if key else 0x11]) + b"\x00" * 20 if first else b"\x22" * 20
    packet = RtpPacket(payload_type=96, sequence_number=seq % 0x10000, timestamp=timestamp, marker=marker)
    packet.payload = (b"\x10" if first else b"\x00") + body
    packet._data = depayload(VP8, packet.payload)  # as aiortc's receiver does before its jitter buffer
    return packet


def frame(seq: int, index: int, key: bool = False) -> list[RtpPacket]:
    """Frame `index` in two packets from `seq`."""
    return [vp8(seq, index * 6000, True, False, key), vp8(seq + 1, index * 6000, False, True)]


def buffer(clock: Clock) -> VideoJitterBuffer:
    return VideoJitterBuffer(lambda payload_type: "vp8" if payload_type == 96 else None, clock)


def test_a_frame_leaves_as_soon_as_its_last_packet_is_in_across_the_sequence_wrap() -> None:
    jitter = buffer(Clock())
    out = []
    for index, seq in enumerate(range(0xFFFC, 0xFFFC + 8, 2)):
        for packet in frame(seq, index, key=index == 0):
            out.append(jitter.add(packet))
    assert [pli for pli, _ in out] == [False] * 8
    assert [f.timestamp for _, f in out if f is not None] == [0, 6000, 12000, 18000]
    assert out[1][1] is not None  # the marker packet lets its frame out, no wait for the next frame


def test_a_retransmission_in_time_fills_the_hole_and_nothing_is_given_up() -> None:
    clock = Clock()
    jitter = buffer(clock)
    key, second, third = frame(0, 0, key=True), frame(2, 1), frame(4, 2)
    for packet in [*key, second[0], *third]:
        assert jitter.add(packet)[0] is False
    clock.now += MAX_WAIT / 2
    pli, out = jitter.add(second[1])
    assert not pli and out is not None and out.timestamp == 6000
    assert jitter.add(vp8(6, 18000, True, False))[1].timestamp == 12000  # the frame held behind it follows
    assert jitter.frames_dropped == 0 and jitter.keyframes_asked == 0


def test_a_hole_waited_out_is_given_up_and_a_keyframe_asked_for_at_most_every_pli_interval() -> None:
    clock = Clock()
    jitter = buffer(clock)
    for packet in frame(0, 0, key=True):
        jitter.add(packet)
    clock.now += PLI_INTERVAL  # the stream has run a while: no keyframe asked for lately
    lost = frame(2, 1)
    jitter.add(lost[0])  # its second packet never comes
    assert jitter.add(frame(4, 2)[0]) == (False, None)
    clock.now += MAX_WAIT
    assert jitter.add(frame(4, 2)[1]) == (True, None)  # given up: a PLI at once
    assert jitter.frames_dropped >= 2
    asked = []
    for index in range(3, 20):  # inter frames only: they cannot be decoded without what was lost
        clock.now += 1 / 15
        for packet in frame(index * 2, index):
            pli, out = jitter.add(packet)
            assert out is None
            asked.append(pli)
    waited = 17 / 15
    assert 1 <= sum(asked) <= waited / PLI_INTERVAL + 1
    pli, out = jitter.add(frame(40, 20, key=True)[0])
    assert out is None
    pli, out = jitter.add(frame(40, 20, key=True)[1])
    assert out is not None and out.timestamp == 20 * 6000  # the keyframe starts the stream again
    assert jitter.add(frame(42, 21)[1])[1] is None and jitter.add(frame(42, 21)[0])[1].timestamp == 21 * 6000


def test_a_client_of_the_composite_waits_longer_for_a_retransmission_and_asks_more_often() -> None:
    """Its keyframe requests reach a shared encoder at most every 10 s: a retransmission is worth the wait."""
    clock = Clock()
    jitter = VideoJitterBuffer(lambda payload_type: "vp8", clock, max_wait=DOWNLINK_MAX_WAIT)
    key, second, third = frame(0, 0, key=True), frame(2, 1), frame(4, 2)
    for packet in [*key, second[0], *third]:
        jitter.add(packet)
    clock.now += MAX_WAIT + 0.1  # the server's upstream buffer would have given up by now
    assert jitter.add(frame(6, 3)[0]) == (False, None)
    pli, out = jitter.add(second[1])  # the retransmission
    assert not pli and out is not None and out.timestamp == 6000 and jitter.frames_dropped == 0
    clock.now += DOWNLINK_MAX_WAIT  # a hole waited out all the same
    lost = frame(8, 4)
    jitter.add(lost[0])
    jitter.add(frame(10, 5)[0])
    clock.now += DOWNLINK_MAX_WAIT
    assert jitter.add(frame(10, 5)[1]) == (True, None)

    nacks = PacedNacks(clock, tries=DOWNLINK_NACK_TRIES, retry=DOWNLINK_NACK_RETRY)
    nacks.add(RtpPacket(sequence_number=10))
    asked = 0
    for seq in range(12, 60):
        clock.now += DOWNLINK_NACK_RETRY / 2
        asked += nacks.add(RtpPacket(sequence_number=seq)) and 11 in nacks.missing
    assert asked == DOWNLINK_NACK_TRIES > NACK_TRIES  # every DOWNLINK_NACK_RETRY: all within DOWNLINK_MAX_WAIT
    assert DOWNLINK_NACK_TRIES * DOWNLINK_NACK_RETRY < DOWNLINK_MAX_WAIT


def test_keyframes_are_told_from_their_first_packet() -> None:
    assert starts_keyframe("vp8", frame(0, 0, key=True)[0].payload)
    assert not starts_keyframe("vp8", frame(0, 0)[0].payload)
    assert not starts_keyframe("vp8", frame(0, 0, key=True)[1].payload)  # not a frame's first packet
    assert starts_keyframe("h264", b"\x65" + b"\x00" * 10)  # an IDR slice, single NAL unit
    assert starts_keyframe("h264", bytes([0x7C, 0x85]) + b"\x00" * 10)  # FU-A start of an IDR slice
    assert not starts_keyframe("h264", bytes([0x7C, 0x05]) + b"\x00" * 10)  # FU-A, not its start
    assert not starts_keyframe("h264", b"\x41" + b"\x00" * 10)  # a non-IDR slice
    assert not starts_keyframe(None, b"\x10\x10")


def test_each_missing_packet_is_asked_for_a_few_times_only() -> None:
    clock = Clock()
    nacks = PacedNacks(clock)

    def add(seq: int) -> set[int] | None:
        return set(nacks.missing) if nacks.add(RtpPacket(sequence_number=seq)) else None

    assert add(10) is None
    assert add(13) == {11, 12}
    assert add(14) is None  # asked for already, not due again yet
    assert add(16) == {15}  # a new gap: only the new packet, not the whole list again
    asked = 1  # 11 was asked for once, with 12
    for seq in range(17, 60):
        clock.now += NACK_RETRY / 2
        due = add(seq)
        asked += 11 in (due or set())
    assert asked == NACK_TRIES
    assert add(12) is None  # a retransmission that came is no longer missing


def test_a_keyframe_whose_first_packet_comes_late_still_starts_the_stream() -> None:
    """Its first packet lost and retransmitted, or overtaken: the packets after it are kept meanwhile."""
    clock = Clock()
    jitter = buffer(clock)
    first, last = frame(0, 0, key=True)
    assert jitter.add(last) == (False, None)  # no keyframe yet, and none asked for so soon
    clock.now += MAX_WAIT / 5
    pli, out = jitter.add(first)
    assert not pli and out is not None and out.timestamp == 0
    assert jitter.keyframes_asked == 0


def test_a_keyframe_asked_for_elsewhere_delays_the_buffers_own_request() -> None:
    """A decode error's PLI (the room's) and the buffer's share one clock: no second request right after."""
    clock = Clock()
    jitter = buffer(clock)
    for packet in frame(0, 0, key=True):
        jitter.add(packet)
    clock.now += PLI_INTERVAL
    jitter.add(frame(2, 1)[0])
    jitter.add(frame(4, 2)[0])
    clock.now += MAX_WAIT - 0.1
    jitter.keyframe_asked_elsewhere()
    clock.now += 0.1
    assert jitter.add(frame(4, 2)[1]) == (False, None)  # given up, but a keyframe was asked for 0.1 s ago
    clock.now += PLI_INTERVAL
    assert jitter.add(frame(6, 3)[0])[0] is True


def test_a_jump_back_starts_a_new_stream_and_a_jump_far_ahead_gives_up_at_once() -> None:
    """A sender that started again (new sequence numbers): its keyframe starts the stream, as in aiortc."""
    clock = Clock()
    jitter = buffer(clock)
    for index, seq in enumerate(range(30000, 30010, 2)):
        for packet in frame(seq, index, key=index == 0):
            jitter.add(packet)
    assert jitter.add(frame(200, 1)[1]) == (False, None)  # one late packet, even from far behind: dropped
    assert jitter.add(frame(30010, 5, key=True)[0])[1] is None
    assert jitter.add(frame(30010, 5, key=True)[1])[1].timestamp == 5 * 6000
    # The sender starts again from 1000: its keyframe is among the packets dropped as late before
    # the run shows a new stream; its next keyframe starts the stream again.
    new = [packet for index in range(50, 56) for packet in frame(1000 + (index - 50) * 2, index, key=index == 50)]
    assert [jitter.add(packet)[1] for packet in new] == [None] * len(new)
    restarted = [jitter.add(packet)[1] for packet in frame(1012, 56, key=True)]
    assert restarted[1] is not None and restarted[1].timestamp == 56 * 6000
    assert jitter.add(frame(1014, 57)[0])[1] is None and jitter.add(frame(1014, 57)[1])[1] is not None
    clock.now += PLI_INTERVAL
    assert jitter.add(frame(1016 + 600, 58)[0]) == (True, None)  # 600 packets missing: no wait for them


def test_a_keyframe_past_a_long_sequence_gap_starts_the_stream_at_once() -> None:
    """A move down: the new tier's keyframe comes RESYNC_GAP (1024) numbers on; the packet that shows the
    gap is its first, and it must not be dropped with what is given up."""
    clock = Clock()
    jitter = buffer(clock)
    for index, seq in enumerate(range(100, 110, 2)):
        for packet in frame(seq, index, key=index == 0):
            jitter.add(packet)
    jitter.add(frame(110, 5)[0])  # half a frame, the rest lost in the congested queue
    first, second = frame(110 + 1024, 6, key=True)
    assert jitter.add(first) == (False, None)  # the gap: what was held is given up
    pli, out = jitter.add(second)
    assert not pli and out is not None and out.timestamp == 6 * 6000
    assert jitter.frames_dropped == 1 and jitter.keyframes_asked == 0


def test_a_hole_waited_out_resumes_at_a_keyframe_already_held_behind_it() -> None:
    clock = Clock()
    jitter = buffer(clock)
    for packet in frame(0, 0, key=True):
        jitter.add(packet)
    jitter.add(frame(2, 1)[0])  # 3 never comes
    for packet in frame(4, 2, key=True):
        assert jitter.add(packet) == (False, None)  # held behind the hole
    clock.now += MAX_WAIT
    pli, out = jitter.add(frame(6, 3)[0])
    assert not pli and out is not None and out.timestamp == 2 * 6000  # the keyframe, no request
    assert jitter.add(frame(6, 3)[1])[1].timestamp == 3 * 6000


def test_a_keyframe_that_is_itself_behind_the_hole_is_given_up_and_another_asked_for() -> None:
    clock = Clock()
    jitter = buffer(clock)
    for packet in frame(0, 0, key=True):
        jitter.add(packet)
    jitter.add(frame(2, 1, key=True)[0])  # a keyframe whose second packet (3) never comes
    jitter.add(frame(4, 2)[0])
    clock.now += MAX_WAIT
    assert jitter.add(frame(4, 2)[1]) == (False, None)  # given up, not started again at its own keyframe
    clock.now += PLI_INTERVAL
    assert jitter.add(frame(6, 3)[0]) == (True, None)  # waiting: a keyframe is asked for


def test_copies_of_packets_already_let_out_are_dropped_however_many_come_in_a_row() -> None:
    """Retransmissions asked for again while the first came: a keyframe's copies arrive a dozen in a row,
    and must not be taken for a sender that started again (the picture froze until the next keyframe)."""
    jitter = buffer(Clock())
    key = [vp8(5000 + i, 0, i == 0, i == 11, key=True) for i in range(12)]
    assert [jitter.add(packet)[1] is not None for packet in key] == [False] * 11 + [True]
    assert [jitter.add(packet) for packet in key] == [(False, None)] * 12  # the copies, all late
    assert jitter.add(frame(5012, 1)[0]) == (False, None)
    pli, after = jitter.add(frame(5012, 1)[1])
    assert not pli and after is not None and after.timestamp == 6000


def test_a_new_stream_behind_is_taken_up_while_waiting_for_a_keyframe_too() -> None:
    clock = Clock()
    jitter = buffer(clock)
    for packet in frame(30000, 0, key=True):
        jitter.add(packet)
    jitter.add(frame(30004, 2)[0])  # 30002-30003 never come
    clock.now += MAX_WAIT
    jitter.add(frame(30004, 2)[1])  # given up: waiting for a keyframe
    new = [packet for index in range(10, 16) for packet in frame(1000 + (index - 10) * 2, index)]
    assert [jitter.add(packet)[1] for packet in new] == [None] * len(new)
    assert jitter.add(frame(1012, 16, key=True)[0])[1] is None
    assert jitter.add(frame(1012, 16, key=True)[1])[1].timestamp == 16 * 6000


def test_a_jump_ahead_is_asked_for_within_the_history_only_and_no_gap_asks_nothing() -> None:
    nacks = PacedNacks(Clock())
    assert not nacks.add(RtpPacket(sequence_number=65530))
    assert not nacks.add(RtpPacket(sequence_number=65531))  # no gap, nothing asked
    assert nacks.add(RtpPacket(sequence_number=3)) and sorted(nacks.missing) == [0, 1, 2, 65532, 65533, 65534, 65535]
    assert nacks.add(RtpPacket(sequence_number=30000)) and len(nacks.missing) == NACK_HISTORY
