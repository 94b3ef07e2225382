"""client/counters.py: what a publisher's tracks count, and a peer's totals in every room mode (SimpleNamespace
stands in for client.peer.Peer: only its counters are read)."""

from __future__ import annotations

from types import SimpleNamespace

from client.counters import ReceiveCounters, Received
from client.remote import RemotePublisher


def test_encoded_frames_count_bytes_and_vp8_keyframes() -> None:
    counters = ReceiveCounters()
    counters.count_encoded("video", b"\x10\x02")  # VP8 P bit clear: a keyframe
    counters.count_encoded("video", b"\x11\x02\x03")  # P bit set: an interframe
    counters.count_encoded("audio", b"\xfc\x00\x00\x00")
    assert (counters.video_frames, counters.video_bytes, counters.keyframes) == (2, 5, 1)
    assert (counters.audio_frames, counters.audio_bytes) == (1, 4)
    assert counters.first_frame_time is not None


def test_first_picture_time_is_kept() -> None:
    counters = ReceiveCounters()
    counters.count_picture()
    first = counters.first_frame_time
    counters.count_picture()
    assert counters.first_frame_time == first and counters.video_frames == 2


def test_received_sums_remote_publishers_and_leaves_out_ended_streams() -> None:
    alive, ended, silent = RemotePublisher("a"), RemotePublisher("b"), RemotePublisher("c")
    alive.count_encoded("video", b"\x11")
    alive.count_encoded("audio", b"\x00\x00")
    ended.count_encoded("video", b"\x11\x00")
    ended.ended = True
    peer = SimpleNamespace(remote={"a": alive, "b": ended, "c": silent}, video_frames=0, audio_frames=0)
    now = Received.of(peer)
    assert (now.video_frames, now.audio_frames, now.payload_bytes, now.streams) == (2, 1, 5, 1)


def test_received_in_an_mcu_room_is_the_composite() -> None:
    peer = SimpleNamespace(remote={}, video_frames=30, audio_frames=50, video_bytes=1000, audio_bytes=200)
    now = Received.of(peer)
    assert (now.video_frames, now.audio_frames, now.payload_bytes, now.streams) == (30, 50, 1200, 1)


def test_rates_between_two_totals() -> None:
    first = Received(10.0, video_frames=100, audio_frames=200, payload_bytes=0)
    last = Received(12.0, video_frames=160, audio_frames=300, payload_bytes=50_000)
    assert last.fps(first) == 30.0
    assert last.audio_rate(first) == 50.0
    assert last.payload_kbps(first) == 200.0
