"""Media for load peers that costs almost nothing on the client.

A benchmark's load generator must not spend its CPU on codecs, or it measures
itself instead of the server. Here a short clip is encoded once per process
(and shared by every track with the same parameters), and the tracks hand out
its packets in a loop: aiortc's senders then only packetize them (an aiortc
internal, covered by tests/test_aiortc_internals.py). The way in is
`mcu.rtc.receiver.install_encoded_receiver`.
"""

from __future__ import annotations

import fractions
import functools

import av
import cv2
import numpy as np
from aiortc import RTCRtpSender

from mcu.rtc.levels import send_levels

from .sources import FRAME_SAMPLES, SAMPLE_RATE, _Paced, rgb_to_yuv

VIDEO_TIME_BASE = fractions.Fraction(1, 90000)
AUDIO_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)


@functools.lru_cache(maxsize=None)
def encode_video_clip(
    color: tuple[int, int, int],
    width: int = 320,
    height: int = 240,
    fps: int = 15,
    seconds: float = 2.0,
    bitrate: int = 300_000,
) -> tuple[bytes, ...]:
    """A looping VP8 clip in `color`, one payload per frame, a keyframe first.

    The picture is the colour with a scrolling texture and a moving block, so
    that it is not trivially compressible (≈300 kbit/s at the defaults). Each
    lap starts on a keyframe, so a receiver can start at any lap.
    """
    frames = round(seconds * fps)
    y, u, v = rgb_to_yuv(color)
    rng = np.random.default_rng(sum(color))
    texture = cv2.GaussianBlur(rng.normal(0, 40, (height, width)).astype(np.float32), (0, 0), 1)
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.bit_rate = bitrate
    codec.time_base = fractions.Fraction(1, fps)
    codec.framerate = fractions.Fraction(fps)
    codec.gop_size = 2 * frames
    codec.thread_count = 1
    rate = str(bitrate)
    codec.options = {"deadline": "realtime", "lag-in-frames": "0", "minrate": rate, "maxrate": rate, "bufsize": rate}
    block = height // 4
    payloads: list[bytes] = []
    # Two passes over the clip: the first lets rate control settle, the second,
    # from a keyframe on, is kept.
    for index in range(2 * frames):
        position = index % frames
        buffer = np.empty((height * 3 // 2, width), np.uint8)
        luma = np.roll(texture, round(position * width / frames), axis=1) + y
        left = round(position * (width - block) / frames)
        luma[block : 2 * block, left : left + block] = 235 if y < 128 else 16
        buffer[:height] = np.clip(luma, 16, 235)
        chroma = buffer[height:].reshape(-1)
        chroma[: chroma.size // 2] = u
        chroma[chroma.size // 2 :] = v
        frame = av.VideoFrame.from_numpy_buffer(buffer, format="yuv420p")
        frame.pts = index
        if index == frames:
            frame.pict_type = av.video.frame.PictureType.I
        payloads.extend(bytes(packet) for packet in codec.encode(frame))
    payloads.extend(bytes(packet) for packet in codec.encode(None))
    if len(payloads) != 2 * frames:
        raise RuntimeError(f"libvpx made {len(payloads)} packets from {2 * frames} frames")
    payloads = payloads[frames:]
    return tuple(payloads)


def audio_level_dbov(samples: np.ndarray) -> int:
    """The RFC 6464 level of int16 samples: RMS in dBov, -127..0, as browsers and aiortc send it."""
    rms = np.sqrt(np.mean(np.square(samples, dtype=np.float64))) / 32767
    return max(-127, round(20 * np.log10(rms))) if rms > 0 else -127


@functools.lru_cache(maxsize=None)
def audio_clip_levels(frequency: float, seconds: float = 1.0, amplitude: float = 0.3) -> tuple[int, ...]:
    """The RFC 6464 level of each frame of `encode_audio_clip` with the same arguments."""
    count = round(seconds * SAMPLE_RATE / FRAME_SAMPLES)
    return tuple(audio_level_dbov(_tone_frame(frequency, amplitude, index)) for index in range(count))


def _tone_frame(frequency: float, amplitude: float, index: int) -> np.ndarray:
    t = (np.arange(FRAME_SAMPLES) + index * FRAME_SAMPLES) / SAMPLE_RATE
    return (np.sin(2 * np.pi * frequency * t) * amplitude * 32767).astype(np.int16)


@functools.lru_cache(maxsize=None)
def encode_audio_clip(
    frequency: float, seconds: float = 1.0, amplitude: float = 0.3, fec: bool = False
) -> tuple[bytes, ...]:
    """A looping Opus clip of a tone: mono, 48 kHz, one payload per 20 ms; with `fec`, the packets
    carry in-band FEC for the one before, as a browser's do once the server's SDP asks for it."""
    count = round(seconds * SAMPLE_RATE / FRAME_SAMPLES)
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = SAMPLE_RATE
    codec.format = "s16"
    codec.layout = "mono"
    codec.bit_rate = 32000
    codec.time_base = AUDIO_TIME_BASE
    if fec:
        codec.options = {"fec": "1", "packet_loss": "10"}
    payloads: list[bytes] = []
    # One frame more than needed: the encoder's lookahead holds the last one back.
    for index in range(count + 1):
        samples = _tone_frame(frequency, amplitude, index)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = index * FRAME_SAMPLES
        payloads.extend(bytes(packet) for packet in codec.encode(frame))
    return tuple(payloads[:count])


class _PacketLoop(_Paced):
    """Hands out a clip's payloads in a loop, paced, with ever increasing pts."""

    def __init__(self, payloads: tuple[bytes, ...], rate: float, step: int, time_base: fractions.Fraction) -> None:
        super().__init__(rate)
        self._payloads = payloads
        self._step = step
        self._time_base = time_base
        #: The index of the packet that starts the current lap.
        self._lap_start = 0

    def restart_lap(self) -> None:
        """Hand out the clip's first payload next (a video clip's keyframe: a receiver can start on it),
        the pts going on as before: what a paused sender resumes with."""
        self._lap_start = self._index

    async def recv(self) -> av.Packet:
        index = await self._next_index()
        # A packet of its own: its pts is this track's, even when the clip is shared.
        packet = av.Packet(self._payloads[(index - self._lap_start) % len(self._payloads)])
        packet.pts = index * self._step
        packet.time_base = self._time_base
        return packet


class PreEncodedVideoTrack(_PacketLoop):
    """A VP8 test pattern in a colour, encoded once and looped (see `encode_video_clip`)."""

    kind = "video"

    def __init__(
        self,
        color: tuple[int, int, int],
        width: int = 320,
        height: int = 240,
        fps: int = 15,
        seconds: float = 2.0,
        bitrate: int = 300_000,
    ) -> None:
        clip = encode_video_clip(color, width, height, fps, seconds, bitrate)
        super().__init__(clip, fps, 90000 // fps, VIDEO_TIME_BASE)


class PreEncodedAudioTrack(_PacketLoop):
    """An Opus tone, encoded once and looped, 50 packets per second.

    Like a browser, it sends each packet's level in the RFC 6464 header once
    `attach_sender` has hooked its sender (the server then need not decode a
    peer that is not talking).
    """

    kind = "audio"

    def __init__(
        self,
        frequency: float,
        seconds: float = 1.0,
        amplitude: float = 0.3,
        send_levels: bool = True,
        fec: bool = False,
    ) -> None:
        clip = encode_audio_clip(frequency, seconds, amplitude, fec)
        super().__init__(clip, SAMPLE_RATE / FRAME_SAMPLES, FRAME_SAMPLES, AUDIO_TIME_BASE)
        #: False: send no RFC 6464 header (a client that does not, as aiortc with packets).
        self.send_levels = send_levels
        self._clip = (frequency, seconds, fec)
        self._levels = audio_clip_levels(frequency, seconds, amplitude)
        #: The level (dBov) of the packet that `recv` returned last.
        self.audio_level = self._levels[0]

    def set_amplitude(self, amplitude: float) -> None:
        """Send the same tone at another level from the next packet on: a load peer that starts or stops
        talking at a known moment (encode the clip beforehand, with an `encode_audio_clip` call, to switch
        without an encode)."""
        frequency, seconds, fec = self._clip
        self._payloads = encode_audio_clip(frequency, seconds, amplitude, fec)
        self._levels = audio_clip_levels(frequency, seconds, amplitude)

    async def recv(self) -> av.Packet:
        packet = await super().recv()
        assert packet.pts is not None  # the clip's packets are stamped (encode_audio_clip)
        self.audio_level = self._levels[(packet.pts // FRAME_SAMPLES) % len(self._levels)]
        return packet

    def attach_sender(self, sender: RTCRtpSender) -> None:
        """Make `sender` put this track's levels in the RFC 6464 header (mcu/rtc/levels.py)."""
        if self.send_levels:
            send_levels(sender, lambda: self.audio_level)
