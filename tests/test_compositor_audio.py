import av
import numpy as np
import pytest
from media_checks import tone

from compositor import FRAME_SAMPLES, SAMPLE_RATE, SampleBuffer, mix_minus
from compositor.audio import Limiter, mix_sums


def test_constants():
    assert SAMPLE_RATE == 48000
    assert FRAME_SAMPLES == 960


def test_tone_is_a_continuous_sine():
    samples = tone(1000.0, FRAME_SAMPLES, amplitude=0.5)
    assert samples.dtype == np.int16 and samples.shape == (FRAME_SAMPLES,)
    assert abs(int(samples.max()) - 16384) <= 1 and abs(int(samples.min()) + 16384) <= 1
    # 1 kHz at 48 kHz: a period of 48 samples.
    assert np.array_equal(samples[:48], samples[48:96])
    joined = np.concatenate([tone(440.0, 480), tone(440.0, 480, phase_samples=480)])
    assert np.array_equal(joined, tone(440.0, 960))


def test_mix_minus_removes_own_voice():
    contributions = np.stack([tone(f, FRAME_SAMPLES, 0.2) for f in (300.0, 500.0, 700.0)])
    mix = mix_minus(contributions)
    assert mix.total.dtype == np.int16 and mix.total.shape == (FRAME_SAMPLES,)
    assert mix.minus.dtype == np.int16 and mix.minus.shape == (3, FRAME_SAMPLES)
    expected_total = contributions.astype(np.int32).sum(axis=0)
    assert np.array_equal(mix.total, expected_total)  # 3 x 0.2 of full scale: no saturation
    for i in range(3):
        assert np.array_equal(mix.minus[i], expected_total - contributions[i])
        others = [j for j in range(3) if j != i]
        assert np.array_equal(mix.minus[i], contributions[others].astype(np.int32).sum(axis=0))


def test_mix_saturates_instead_of_wrapping():
    loud = np.full((2, FRAME_SAMPLES), 30000, np.int16)
    loud[:, 1] = -30000
    mix = mix_minus(loud)
    assert np.all(mix.total[[0, 2]] == 32767)
    assert mix.total[1] == -32768
    assert np.all(mix.minus == loud)  # each hears only the other, unclipped


def test_mix_minus_is_exact_even_when_the_total_saturates():
    contributions = np.array([[30000], [30000], [-30000]], np.int16)
    mix = mix_minus(contributions)
    assert mix.total[0] == 30000
    assert mix.minus[:, 0].tolist() == [0, 0, 32767]


def test_mix_empty_room_is_silence():
    mix = mix_minus(np.zeros((0, FRAME_SAMPLES), np.int16))
    assert mix.total.shape == (FRAME_SAMPLES,) and mix.total.dtype == np.int16
    assert not mix.total.any()
    assert mix.minus.shape == (0, FRAME_SAMPLES) and mix.minus.dtype == np.int16


def test_mix_single_participant_hears_silence():
    own = tone(440.0, FRAME_SAMPLES)[np.newaxis]
    mix = mix_minus(own)
    assert np.array_equal(mix.total, own[0])
    assert mix.minus.shape == (1, FRAME_SAMPLES) and not mix.minus.any()


def test_mix_rejects_wrong_dtype():
    with pytest.raises(ValueError):
        mix_minus(np.zeros((2, FRAME_SAMPLES), np.float32))


def audio_frame(array, format, layout, rate=SAMPLE_RATE):
    frame = av.AudioFrame.from_ndarray(array, format=format, layout=layout)
    frame.sample_rate = rate
    return frame


def test_buffer_keeps_order_across_wrap_around():
    buffer = SampleBuffer(max_samples=1000)
    stream = np.arange(5000, dtype=np.int16)
    pulled = []
    for start in range(0, 5000, 700):  # 700 in, 700 out: the write index wraps repeatedly
        buffer.push(stream[start : start + 700])
        pulled.append(buffer.pull(700))
    assert np.array_equal(np.concatenate(pulled)[:5000], stream)
    assert buffer.available == 0


def test_buffer_underrun_pads_with_zeros_and_counts():
    buffer = SampleBuffer()
    buffer.push(np.full(500, 7, np.int16))
    out = buffer.pull(FRAME_SAMPLES)
    assert out.dtype == np.int16 and out.shape == (FRAME_SAMPLES,)
    assert np.all(out[:500] == 7) and not out[500:].any()
    assert buffer.underruns == 1 and buffer.available == 0
    buffer.push(np.full(FRAME_SAMPLES, 3, np.int16))
    assert np.all(buffer.pull() == 3)
    assert buffer.underruns == 1


def test_buffer_overflow_drops_oldest():
    buffer = SampleBuffer(max_samples=1000)
    buffer.push(np.arange(800, dtype=np.int16))
    buffer.push(np.arange(800, 1200, dtype=np.int16))
    assert buffer.available == 1000
    assert np.array_equal(buffer.pull(1000), np.arange(200, 1200))
    buffer.push(np.arange(3000, dtype=np.int16))  # larger than the cap in one push
    assert np.array_equal(buffer.pull(1000), np.arange(2000, 3000))
    assert buffer.underruns == 0


def test_buffer_default_cap_is_200_ms():
    buffer = SampleBuffer()
    buffer.push(np.ones(SAMPLE_RATE, np.int16))
    assert buffer.available == SAMPLE_RATE // 5


TALKER_FREQUENCIES = [220.0 * 1.19**i for i in range(10)]


def talkers_frames(count: int, amplitude: float, frame: int) -> np.ndarray:
    """One 20 ms frame of `count` continuous tones (frame index `frame`)."""
    return np.stack([tone(f, FRAME_SAMPLES, amplitude, frame * FRAME_SAMPLES) for f in TALKER_FREQUENCIES[:count]])


def test_limiter_keeps_ten_loud_talkers_off_the_rails_and_recovers():
    limiter, clipped_rails, out = Limiter(), 0, []
    for frame in range(50):
        total, minus = mix_sums(talkers_frames(10, 0.5, frame))
        assert np.abs(total).max() > 1.5 * 32767  # far beyond int16
        clipped_rails += int(np.sum(np.abs(mix_minus(talkers_frames(10, 0.5, frame)).total) >= 32767))
        out.append(limiter.process(total))
    loud = np.concatenate(out)
    assert clipped_rails > 1000  # hard clipping sits on the rails: the crackle
    assert np.abs(loud.astype(np.int32)).max() <= limiter.ceiling < 32767
    assert np.abs(loud[FRAME_SAMPLES:].astype(np.int32)).max() > 0.9 * limiter.ceiling  # limited, not muted
    assert limiter.gain < 0.5
    # They stop; one quiet talker goes on: the gain rises back smoothly, and within 4 s
    # (0.3 s release) the limiter is at rest and the mix passes unchanged.
    gains = []
    for frame in range(50, 250):
        limiter.process(mix_sums(talkers_frames(1, 0.1, frame))[0])
        gains.append(limiter.gain)
    assert np.all(np.diff(gains) >= 0) and gains[25] < 1.0  # a release, not a jump
    quiet = mix_sums(talkers_frames(1, 0.1, 250))[0]
    assert limiter.gain == 1.0
    assert np.array_equal(limiter.process(quiet), quiet)


def test_limiter_distorts_ten_talkers_less_than_clipping():
    """Energy outside the tones' own frequencies: what a listener hears as crackle."""
    frames = [talkers_frames(10, 0.5, frame) for frame in range(50)]
    limiter = Limiter()
    limited = np.concatenate([limiter.process(mix_sums(f)[0]) for f in frames])[-SAMPLE_RATE // 2 :]
    clipped = np.concatenate([mix_minus(f).total for f in frames])[-SAMPLE_RATE // 2 :]

    def distortion_db(samples: np.ndarray) -> float:
        spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples)))) ** 2
        freqs = np.fft.rfftfreq(len(samples), 1 / SAMPLE_RATE)
        near = np.zeros(len(freqs), bool)
        for f in TALKER_FREQUENCIES:
            near |= np.abs(freqs - f) < 10
        return 10 * np.log10(spectrum[~near].sum() / spectrum[near].sum())

    assert distortion_db(limited) < distortion_db(clipped) - 10, (distortion_db(limited), distortion_db(clipped))


def test_limiter_passes_a_quiet_mix_bit_exact():
    limiter = Limiter()
    for frame in range(20):
        total, minus = mix_sums(talkers_frames(3, 0.2, frame))
        assert np.array_equal(limiter.process(total), total)
    assert limiter.gain == 1.0


def test_limiter_output_under_the_ceiling_for_any_input():
    rng = np.random.default_rng(1)
    limiter = Limiter()
    for _ in range(20):
        samples = rng.integers(-400_000, 400_000, FRAME_SAMPLES).astype(np.int32)
        assert np.abs(limiter.process(samples).astype(np.int32)).max() <= limiter.ceiling
