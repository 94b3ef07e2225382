"""libopus through ctypes (compositor/opus.py): others read what it encodes, and it reads what they encode."""

from __future__ import annotations

import ctypes

import av
import numpy as np
import pytest
from media_checks import tone_levels

from client.encoded import encode_audio_clip
from compositor import opus
from mcu.media.encoders import AudioEncoder

FRAME = 960


def tone(frequency: float, seconds: float, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(48000 * seconds)) / 48000
    return (amplitude * 32767 * np.sin(2 * np.pi * frequency * t)).astype(np.int16)


def test_the_calls_keep_the_gil():
    # The reason for the module: PyAV's codec calls hand the GIL over several times each.
    assert isinstance(opus._lib, ctypes.PyDLL)


def ffmpeg_encoder() -> av.AudioCodecContext:
    """The room's Opus encoder before compositor/opus.py: FFmpeg's libopus wrapper, through PyAV."""
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate, codec.format, codec.layout, codec.bit_rate = 48000, "s16", "mono", 32000
    codec.options = {"application": "voip"}
    return codec


def test_the_room_encodes_the_packets_ffmpegs_libopus_encoder_made_and_they_decode():
    ours, theirs = AudioEncoder(32000), ffmpeg_encoder()
    decoder = av.CodecContext.create("libopus", "r")
    source, heard = tone(440.0, 1.0), []
    for index in range(len(source) // FRAME):
        samples = source[index * FRAME : (index + 1) * FRAME]
        (packet,) = ours.encode(samples, index * FRAME)
        assert (packet.pts, packet.duration, packet.is_keyframe) == (index * FRAME, FRAME, True)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 48000, index * FRAME
        assert [bytes(packet)] == [bytes(p) for p in theirs.encode(frame)]
        heard.extend(f.to_ndarray()[0] for f in decoder.decode(packet))
    levels = tone_levels(np.concatenate(heard)[FRAME * 10 :], [440.0, 1000.0])
    assert levels[440.0] > levels[1000.0] + 25


def test_what_clients_encode_the_room_decodes_to_mono():
    decoder = opus.OpusDecoder()
    heard = np.concatenate([decoder.decode(payload).copy() for payload in encode_audio_clip(660.0, 1.0, 0.3)])
    assert heard.dtype == np.int16 and len(heard) == 48000
    levels = tone_levels(heard[FRAME * 10 :], [660.0, 440.0])
    assert levels[660.0] > levels[440.0] + 40


def test_a_corrupt_packet_is_an_error_and_the_decoder_goes_on():
    decoder = opus.OpusDecoder()
    with pytest.raises(opus.OpusError):
        decoder.decode(b"\xff\xff\xff")
    encoder = opus.OpusEncoder(32000)
    assert len(decoder.decode(encoder.encode(tone(440.0, 0.02)))) == FRAME


def snr(heard: np.ndarray, reference: np.ndarray) -> float:
    """How close `heard` is to `reference`, in dB."""
    heard, reference = heard.astype(np.float64), reference.astype(np.float64)
    return float(10 * np.log10((reference**2).sum() / max(((heard - reference) ** 2).sum(), 1.0)))


def chord(seconds: float) -> np.ndarray:
    return tone(440.0, seconds) + tone(1130.0, seconds, 0.1)


@pytest.mark.parametrize("lost", [12, 20, 30])
def test_a_lost_packet_s_fec_in_the_next_one_is_much_closer_to_it_than_concealment(lost: int):
    encoder = opus.OpusEncoder(32000, expected_loss=10)
    source = chord(1.0)
    packets = [encoder.encode(source[i * FRAME : (i + 1) * FRAME]) for i in range(50)]
    # Most carry the one before (libopus leaves it out where it judges it not worth its bits).
    assert sum(opus.has_fec(p) for p in packets) >= 30 and opus.has_fec(packets[lost + 1])
    clean, recovered, concealed = opus.OpusDecoder(), opus.OpusDecoder(), opus.OpusDecoder()
    for packet in packets[:lost]:
        reference = clean.decode(packet).copy()
        recovered.decode(packet), concealed.decode(packet)
    reference = clean.decode(packets[lost]).copy()
    from_fec = recovered.recover(packets[lost + 1], FRAME).copy()
    from_plc = concealed.conceal(FRAME).copy()
    assert len(from_fec) == len(from_plc) == FRAME
    assert snr(from_fec, reference) > 10
    assert snr(from_fec, reference) > snr(from_plc, reference) + 6
    # And the packet after it decodes as usual.
    assert len(recovered.decode(packets[lost + 1])) == FRAME


def test_without_fec_a_lost_packet_is_concealed_not_silent():
    encoder = opus.OpusEncoder(32000)
    source = chord(0.6)
    packets = [encoder.encode(source[i * FRAME : (i + 1) * FRAME]) for i in range(30)]
    assert not any(opus.has_fec(p) for p in packets)
    decoder, clean = opus.OpusDecoder(), opus.OpusDecoder()
    for packet in packets[:20]:
        decoder.decode(packet), clean.decode(packet)
    reference = [clean.decode(packets[20]).copy(), clean.decode(packets[21]).copy()]
    recovered = decoder.recover(packets[21], FRAME).copy()  # nothing to recover: libopus conceals
    concealed = decoder.conceal(FRAME).copy()
    # Silence would be 0 dB: the first goes on with the chord; the second, fading, still sounds.
    assert snr(recovered, reference[0]) > 1.5
    rms = [np.sqrt(np.mean(frame.astype(np.float64) ** 2)) for frame in (concealed, reference[1])]
    assert rms[0] > 0.3 * rms[1]
