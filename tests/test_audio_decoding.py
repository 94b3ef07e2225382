"""The audio thread decodes only who may be heard, and a voice it skipped enters the mix clean."""

from __future__ import annotations

import numpy as np
from media_checks import tone_levels

from client.encoded import PreEncodedAudioTrack, audio_clip_levels, encode_audio_clip
from compositor.audio import FRAME_SAMPLES
from mcu.media.audio_pipeline import AudioPipeline, _Channel
from mcu.rooms.participant import OpusPacket

LOUD, QUIET = 500.0, 1300.0


def packets(frequency: float, amplitude: float, header: bool = True) -> list[tuple[bytes, int | None]]:
    clip, levels = encode_audio_clip(frequency, 1.0, amplitude), audio_clip_levels(frequency, 1.0, amplitude)
    return [(payload, level if header else None) for payload, level in zip(clip, levels)]


def at(tick: int, packet: tuple[bytes, int | None]) -> tuple[OpusPacket, int | None]:
    """`packet` sent at `tick`: its RTP timestamp follows."""
    return OpusPacket(packet[0], tick * FRAME_SAMPLES), packet[1]


def test_a_skipped_voice_enters_the_mix_without_a_glitch():
    """B is quiet (not decoded), then speaks up and takes A's only talker place: what the listener
    C hears from the first frames on is B's tone, clean."""
    pipeline = AudioPipeline("unit", lambda: [], talkers=1)
    ids = ["a", "b", "c"]
    channels = [_Channel() for _ in ids]
    a, b_quiet, b_loud, silent = packets(LOUD, 0.1), packets(QUIET, 0.003), packets(QUIET, 0.5), packets(300.0, 0.0)
    heard, decoder = [], _Channel().decoder  # mono s16, as the room decodes
    for tick in range(150):
        b = b_quiet if tick < 50 else b_loud
        decodes = pipeline.stats.decodes
        payloads = [[at(tick, a[tick % 50])], [at(tick, b[tick % 50])], [at(tick, silent[0])]]
        out, _ = pipeline._mix_encode(ids, channels, payloads, np.ones(3), np.ones(3, bool), tick * FRAME_SAMPLES)
        if tick == 40:
            assert pipeline.talkers == {"a"} and pipeline.stats.decodes - decodes == 1  # only the talker
        for packet in out[2]:
            heard.append(decoder.decode(bytes(packet)).copy())
    # B has A's place; A, still speaking, stays mixed until it pauses (overtime).
    assert pipeline.talkers == {"a", "b"} and pipeline.on_overtime == {"a"}
    assert channels[2].buffer.underruns == 0  # C, silent, never decoded: not counted as late audio
    samples = np.concatenate(heard)
    # The frames where B entered: find them, then look at the first 100 ms of B alone.
    frames = samples.reshape(-1, FRAME_SAMPLES)
    frame_levels = [tone_levels(frame, [QUIET])[QUIET] for frame in frames]
    first = next(i for i in range(50, 150) if frame_levels[i] > frame_levels[40] + 30)
    entering = samples[first * FRAME_SAMPLES : (first + 5) * FRAME_SAMPLES].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(entering * np.hanning(len(entering)))) ** 2
    freqs = np.fft.rfftfreq(len(entering), 1 / 48000)
    near = (np.abs(freqs - QUIET) < 50) | (np.abs(freqs - LOUD) < 50)  # A may still sound in the first frame
    assert 10 * np.log10(spectrum[~near].sum() / spectrum[near].sum()) < -30


def test_peers_without_the_header_are_always_decoded():
    pipeline = AudioPipeline("unit", lambda: [], talkers=1)
    ids = ["a", "b", "c"]
    channels = [_Channel() for _ in ids]
    a, b = packets(LOUD, 0.1, header=False), packets(QUIET, 0.003, header=False)
    for tick in range(50):
        payloads = [[at(tick, a[tick])], [at(tick, b[tick])], [at(tick, b[tick])]]
        pipeline._mix_encode(ids, channels, payloads, np.ones(3), np.ones(3, bool), tick * 960)
    assert pipeline.stats.decodes == 150


async def test_a_pre_encoded_tone_starts_talking_at_once_when_told():
    """A load peer that takes the floor at a known moment: the next packet is the loud clip, with its level."""
    track = PreEncodedAudioTrack(QUIET, amplitude=0.0)
    silent = await track.recv()
    assert track.audio_level == -127 and bytes(silent) == encode_audio_clip(QUIET, 1.0, 0.0)[0]
    track.set_amplitude(0.5)
    loud = await track.recv()
    assert bytes(loud) == encode_audio_clip(QUIET, 1.0, 0.5)[1] and loud.pts == FRAME_SAMPLES
    assert track.audio_level == audio_clip_levels(QUIET, 1.0, 0.5)[1] > -20
