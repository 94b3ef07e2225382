"""The client's audio clock (client/playback.py): a frame every 20 ms from the first packet on, losses
concealed, and the ticks a stalled event loop missed made up for, so the timeline keeps real time."""

from __future__ import annotations

import asyncio
import fractions
import time

import numpy as np
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError
from media_checks import longest_gap_ms

from client.playback import AudioPlayback, audio_frame
from compositor import opus
from compositor.audio import FRAME_SAMPLES
from compositor.playout import PlayoutCounts

AMPLITUDE = 0.3


class EndingTrack:
    """Stands in for a received track whose packets go elsewhere: `recv` only ends."""

    def __init__(self) -> None:
        self.ended = asyncio.Event()

    async def recv(self) -> None:
        await self.ended.wait()
        raise MediaStreamError


def tone_packets(count: int) -> list[bytes]:
    t = np.arange(count * FRAME_SAMPLES) / 48000
    source = (AMPLITUDE * 32767 * np.sin(2 * np.pi * 440.0 * t)).astype(np.int16)
    encoder = opus.OpusEncoder(32000)
    return [encoder.encode(source[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]) for i in range(count)]


async def test_a_frame_every_20_ms_losses_concealed_and_a_stalled_loop_made_up_for():
    played: list[tuple[np.ndarray, int]] = []
    counts = PlayoutCounts()
    playback = AudioPlayback(lambda samples, pts: played.append((samples, pts)), counts)
    track = EndingTrack()
    task = asyncio.ensure_future(playback.play(track))
    packets = tone_packets(100)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i, packet in enumerate(packets):
        if i % 10 != 5:  # one in ten lost
            playback.take(JitterFrame(packet, i * FRAME_SAMPLES))
        if i == 60:
            time.sleep(0.1)  # the event loop stalls for five ticks
        await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - loop.time()))
    elapsed = loop.time() - start
    track.ended.set()
    await task
    # Real time, frame for frame, the stall included; the pts count samples from the first tick.
    assert abs(len(played) - elapsed * 50) <= 2, (len(played), elapsed)
    assert [pts for _, pts in played] == [i * FRAME_SAMPLES for i in range(len(played))]
    heard = np.concatenate([samples for samples, _ in played])
    # Before the stall, each lost packet concealed: the tone has no gap (the first tick is silence).
    assert counts.concealed >= 5
    assert longest_gap_ms(heard[2 * FRAME_SAMPLES : 55 * FRAME_SAMPLES], 440.0, AMPLITUDE) <= 20
    # And it plays again once the packets come after the stall.
    assert longest_gap_ms(heard[-20 * FRAME_SAMPLES :], 440.0, AMPLITUDE) <= 20
    # No tick after the track ended.
    count = len(played)
    await asyncio.sleep(0.1)
    assert len(played) == count


def test_a_frame_played_is_48_khz_mono_s16_with_the_clock_s_pts():
    samples = np.arange(FRAME_SAMPLES, dtype=np.int16)
    frame = audio_frame(samples, 5 * FRAME_SAMPLES)
    assert (frame.sample_rate, frame.format.name, frame.layout.name, frame.samples) == (48000, "s16", "mono", 960)
    assert frame.pts == 5 * FRAME_SAMPLES and frame.time_base == fractions.Fraction(1, 48000)
    assert np.array_equal(frame.to_ndarray()[0], samples)


async def test_a_tick_that_fails_is_silence_and_the_clock_goes_on():
    """A tick whose playout raises (a bug, a packet libopus rejects in a way nobody foresaw) plays
    silence, and the frames after it come as before: the timeline does not end there."""
    played: list[int] = []
    playback = AudioPlayback(lambda samples, pts: played.append(pts), PlayoutCounts())
    tick = playback._playout.tick
    failures = iter([False, False, True])

    def failing_once(packets, decode):
        if next(failures, False):
            raise TypeError("a bug in the playout")
        return tick(packets, decode)

    playback._playout.tick = failing_once  # type: ignore[method-assign]
    track = EndingTrack()
    task = asyncio.ensure_future(playback.play(track))
    for i, packet in enumerate(tone_packets(15)):
        playback.take(JitterFrame(packet, i * FRAME_SAMPLES))
        await asyncio.sleep(0.02)
    track.ended.set()
    await task
    assert len(played) >= 12 and played == [i * FRAME_SAMPLES for i in range(len(played))]
