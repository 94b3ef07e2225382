"""The room's audio clock ticks on its own thread: the event loop only delivers what a tick made."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque

import av
from conftest import within

from mcu.media.audio_clock import AudioClock
from mcu.media.audio_pipeline import MAX_PENDING, AudioPipeline


def test_the_clock_ticks_at_its_period_on_a_thread_of_its_own() -> None:
    ticks: list[tuple[int, float, str]] = []
    clock = AudioClock(
        "test-clock",
        0.02,
        lambda index: ticks.append((index, time.monotonic(), threading.current_thread().name)),
        max_behind=5,
    )
    clock.start()
    time.sleep(0.5)
    asyncio.run(clock.stop())
    assert 20 <= len(ticks) <= 27
    assert [index for index, _, _ in ticks] == list(range(len(ticks)))
    assert {name for _, _, name in ticks} == {"test-clock"}
    # Paced from the start, not by each tick's own end: no drift.
    (first, start, _), (last, end, _) = ticks[0], ticks[-1]
    assert abs(end - start - (last - first) * 0.02) < 0.03


def test_after_a_stall_the_missed_ticks_run_back_to_back_up_to_the_limit() -> None:
    ticks: list[tuple[int, float]] = []

    def tick(index: int) -> None:
        ticks.append((index, time.monotonic()))
        if index == 3:
            time.sleep(0.2)  # ten periods

    clock = AudioClock("test-clock", 0.02, tick, max_behind=4)
    clock.start()
    time.sleep(0.5)
    asyncio.run(clock.stop())
    indices = [index for index, _ in ticks]
    # Tick 3 ends when tick 13 is due: ticks 4 to 8 are dropped, and the last 4 missed
    # and the one due run back to back.
    resumed = indices[4]
    assert indices[:4] == [0, 1, 2, 3] and 8 <= resumed <= 10
    assert indices[4:] == list(range(resumed, resumed + len(indices) - 4))
    assert clock.dropped == resumed - 4
    burst = [at for _, at in ticks[4:9]]
    assert burst[-1] - burst[0] < 0.015


class _Peer:
    """What the audio pipeline reads from a participant: its id, queued Opus payloads (none: it is
    silent), gain, and output."""

    def __init__(self, peer_id: str) -> None:
        self.peer_id = peer_id
        self.audio_gain = 1.0
        self.sends_audio = True
        self._queued: deque = deque()
        self.received: list[av.Packet] = []
        self.audio_out = self
        self.pushing_threads: set[str] = set()

    def take_audio(self) -> list:
        return [self._queued.popleft() for _ in range(len(self._queued))]

    def push(self, packet: av.Packet) -> None:
        self.received.append(packet)
        self.pushing_threads.add(threading.current_thread().name)


async def test_the_room_mixes_while_the_event_loop_is_busy_and_delivers_on_the_loop() -> None:
    peers = [_Peer("a"), _Peer("b")]
    pipeline = AudioPipeline("unit", lambda: peers, talkers=3)
    pipeline.start()
    try:
        await within(2, lambda: pipeline.stats.mixes >= 3)
        ticks, mixes, delivered = pipeline.stats.ticks, pipeline.stats.mixes, len(peers[0].received)
        time.sleep(0.3)  # the event loop is blocked: fifteen ticks pass
        # The thread kept time and mixed, but stopped once MAX_PENDING ticks waited for the loop
        # (one may have been waiting already when the loop blocked).
        ticked = pipeline.stats.ticks - ticks
        assert ticked >= 12
        assert MAX_PENDING - 1 <= pipeline.stats.mixes - mixes <= MAX_PENDING
        assert pipeline.dropped_ticks >= ticked - MAX_PENDING
        assert len(peers[0].received) == delivered
        await asyncio.sleep(0.1)
        assert len(peers[0].received) >= delivered + MAX_PENDING
        assert {name for peer in peers for name in peer.pushing_threads} == {threading.main_thread().name}
    finally:
        await pipeline.stop()


async def test_a_departed_peer_s_codec_state_goes_at_the_next_tick() -> None:
    peers = [_Peer("a"), _Peer("b")]
    pipeline = AudioPipeline("unit", lambda: list(peers), talkers=3)
    pipeline.start()
    try:
        await within(2, lambda: set(pipeline._channels) == {"a", "b"})
        underruns = pipeline.underruns
        peers.pop()
        await within(2, lambda: set(pipeline._channels) == {"a"})
        assert pipeline.underruns >= underruns  # what the departed peer's buffer counted is kept
    finally:
        await pipeline.stop()
