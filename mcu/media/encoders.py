"""Encoders shared by many peers: one VP8 or H.264 encode per composite output, one Opus per mix.

Video is encoded in the room's video process and leaves it as payloads with
their keyframe flag; audio as `av.Packet`s that aiortc's senders only packetize.
Both carry timestamps of the room's media clock, so a peer may switch from one
encoder's stream to another's without a jump in its RTP timeline.
"""

from __future__ import annotations

import fractions
import threading
import time
from dataclasses import dataclass

import av
import numpy as np

from compositor.audio import SAMPLE_RATE
from compositor.opus import OpusEncoder
from mcu.media.vpx import Vp8Encoder

VIDEO_TIME_BASE = fractions.Fraction(1, 90000)
AUDIO_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)

#: A requested keyframe is forced at most this often: a storm of PLIs from many
#: receivers must not turn the stream into all keyframes.
KEYFRAME_MIN_INTERVAL = 0.3


@dataclass(frozen=True)
class Tier:
    """An output a peer may choose at join: the composite's size, frame rate and bitrate."""

    width: int
    height: int
    fps: int
    bitrate: int


#: The video codecs that the room's shared encoders make, by the name peers negotiate.
VIDEO_CODECS = ("vp8", "h264")


@dataclass(frozen=True)
class Output:
    """What one video encoder makes: a codec at a tier, for the room or for one peer.

    `personal` names the peer whose own canvas (hide-self: every tile but its
    own) this output encodes; None is the room's shared canvas of that tier.
    """

    codec: str
    tier: str
    personal: str | None = None

    def __str__(self) -> str:
        """ "vp8/high", or "h264/low/personal" for a hide-self canvas."""
        return f"{self.codec}/{self.tier}" + ("/personal" if self.personal else "")


#: libvpx's speed. In realtime mode a positive cpu-used is a time budget, not a speed: libvpx
#: picks its speed frame by frame so that an encode takes (16 - cpu-used)/16 of the frame
#: interval (vp8_auto_select_speed). 13: 3/16 of a core at any frame rate, 0.1-0.5 dB under
#: 12's 4/16; 14 loses 0.6-2 dB, with or without the active map (scripts/bench_encoder.py,
#: docs/benchmarks.md).
VP8_CPU_USED = 13


def _h264_context(bitrate: int, gop: int) -> av.VideoCodecContext:
    """Constrained baseline (profile-level-id 42e01f), Annex B as aiortc's H.264 packetizer splits it."""
    codec = av.CodecContext.create("libx264", "w")
    assert isinstance(codec, av.VideoCodecContext)  # what "libx264" makes; the stubs type it by name only
    codec.profile = "Constrained Baseline"
    rate = str(bitrate)
    codec.options = {
        "preset": "ultrafast",
        "tune": "zerolatency",
        "level": "3.1",
        # Keyframes come on request (PLI, joins), not on scene cuts.
        "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0",
        "maxrate": rate,
        "bufsize": rate,
    }
    return codec


class VideoEncoder:
    """A realtime VP8 or H.264 encoder whose keyframes are requested, rate-limited, by peers.

    VP8 goes through libvpx directly (mcu/media/vpx.py), coding only the macroblocks
    that changed; H.264 through PyAV's libx264.
    """

    def __init__(self, width: int, height: int, fps: int, bitrate: int, codec_name: str = "vp8") -> None:
        if codec_name not in VIDEO_CODECS:
            raise ValueError(f"unknown video codec {codec_name!r}")
        gop = 10 * fps
        self._vp8: Vp8Encoder | None = None
        self._codec: av.VideoCodecContext | None = None
        if codec_name == "vp8":
            self._vp8 = Vp8Encoder(width, height, fps, bitrate, VP8_CPU_USED, gop)
        else:
            codec = _h264_context(bitrate, gop)
            codec.width = width
            codec.height = height
            codec.pix_fmt = "yuv420p"
            codec.bit_rate = bitrate
            codec.time_base = VIDEO_TIME_BASE
            codec.framerate = fractions.Fraction(fps)
            codec.gop_size = gop
            # One thread: the other core handles packets, decodes and Opus.
            codec.thread_count = 1
            self._codec = codec
        self.codec_name = codec_name
        self._lock = threading.Lock()
        self._keyframe_pending = True
        self._last_keyframe = float("-inf")
        self.frames = 0
        self.keyframes = 0
        self.encode_seconds = 0.0

    def request_keyframe(self) -> None:
        """Ask for a keyframe soon (a PLI, a FIR or a joining peer). Thread-safe."""
        with self._lock:
            self._keyframe_pending = True

    def encode(self, frame: av.VideoFrame, pts: int) -> list[tuple[bytes, bool]]:
        """Encode one frame (pts in 1/90000 s) into (payload, is keyframe) per packet; runs on the
        room's video thread."""
        now = time.monotonic()
        with self._lock:
            force = self._keyframe_pending and now - self._last_keyframe >= KEYFRAME_MIN_INTERVAL
            if force:
                self._keyframe_pending = False
        if self._vp8 is not None:
            packets = self._vp8.encode(frame, pts, force)
        else:
            assert self._codec is not None
            frame.pts = pts
            frame.time_base = VIDEO_TIME_BASE
            frame.pict_type = av.video.frame.PictureType.I if force else av.video.frame.PictureType.NONE
            packets = [(bytes(packet), packet.is_keyframe) for packet in self._codec.encode(frame)]
        self.encode_seconds += time.monotonic() - now
        self.frames += 1
        keyframes = sum(key for _, key in packets)
        if keyframes:
            self.keyframes += keyframes
            self._last_keyframe = now
        return packets


class AudioEncoder:
    """An Opus encoder for one distinct mix (mono, 48 kHz, 20 ms frames), on libopus directly (compositor/opus.py)."""

    def __init__(self, bitrate: int = 32000) -> None:
        self._encoder = OpusEncoder(bitrate)

    def encode(self, samples: np.ndarray, pts: int) -> list[av.Packet]:
        """Encode one 20 ms frame of int16 samples; `pts` in samples of the room clock."""
        packet = av.Packet(self._encoder.encode(samples))
        packet.pts = packet.dts = pts
        packet.duration = len(samples)
        packet.time_base = AUDIO_TIME_BASE
        packet.is_keyframe = True  # as FFmpeg marks every audio packet
        return [packet]
