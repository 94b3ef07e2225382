"""Encoders shared by many peers: one VP8 encode of a composite, one Opus per mix.

Both produce `av.Packet`s that aiortc's senders only packetize; the packets carry
timestamps of the room's media clock, so a peer may switch from one encoder's
stream to another's without a jump in its RTP timeline.
"""

from __future__ import annotations

import fractions
import threading
import time

import av
import numpy as np

from compositor.audio import SAMPLE_RATE

VIDEO_TIME_BASE = fractions.Fraction(1, 90000)
AUDIO_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)

#: A requested keyframe is forced at most this often: a storm of PLIs from many
#: receivers must not turn the stream into all keyframes.
KEYFRAME_MIN_INTERVAL = 0.3


class VideoEncoder:
    """A realtime VP8 encoder whose keyframes are requested, rate-limited, by peers."""

    def __init__(self, width: int, height: int, fps: int, bitrate: int) -> None:
        codec = av.CodecContext.create("libvpx", "w")
        codec.width = width
        codec.height = height
        codec.pix_fmt = "yuv420p"
        codec.bit_rate = bitrate
        codec.time_base = VIDEO_TIME_BASE
        codec.framerate = fps
        codec.gop_size = 10 * fps
        # One thread: the other core handles packets, decodes and Opus.
        codec.thread_count = 1
        rate = str(bitrate)
        codec.options = {
            "deadline": "realtime",
            # 12: twice as fast as 8 on a 720p composite at the same PSNR; 16 loses 3 dB
            # (scripts/bench_encoder.py, docs/benchmarks.md).
            "cpu-used": "12",
            "lag-in-frames": "0",
            "static-thresh": "1",
            "noise-sensitivity": "0",
            "partitions": "0",
            "undershoot-pct": "100",
            "overshoot-pct": "15",
            "minrate": rate,
            "maxrate": rate,
            "bufsize": rate,
        }
        self._codec = codec
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

    def encode(self, frame: av.VideoFrame, pts: int) -> list[av.Packet]:
        """Encode one frame (pts in 1/90000 s); runs on the room's video thread."""
        now = time.monotonic()
        with self._lock:
            force = self._keyframe_pending and now - self._last_keyframe >= KEYFRAME_MIN_INTERVAL
            if force:
                self._keyframe_pending = False
        frame.pts = pts
        frame.time_base = VIDEO_TIME_BASE
        frame.pict_type = av.video.frame.PictureType.I if force else av.video.frame.PictureType.NONE
        packets = self._codec.encode(frame)
        self.encode_seconds += time.monotonic() - now
        self.frames += 1
        for packet in packets:
            packet.time_base = VIDEO_TIME_BASE
            if packet.is_keyframe:
                self.keyframes += 1
                self._last_keyframe = now
        return packets


class AudioEncoder:
    """An Opus encoder for one distinct mix (mono, 48 kHz, 20 ms frames)."""

    def __init__(self, bitrate: int = 32000) -> None:
        codec = av.CodecContext.create("libopus", "w")
        codec.sample_rate = SAMPLE_RATE
        codec.format = "s16"
        codec.layout = "mono"
        codec.bit_rate = bitrate
        codec.time_base = AUDIO_TIME_BASE
        codec.options = {"application": "voip"}
        self._codec = codec

    def encode(self, samples: np.ndarray, pts: int) -> list[av.Packet]:
        """Encode one 20 ms frame of int16 samples; `pts` in samples of the room clock."""
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = pts
        frame.time_base = AUDIO_TIME_BASE
        packets = self._codec.encode(frame)
        for packet in packets:
            # libopus shifts pts by its lookahead; the room clock is the truth.
            packet.pts = pts
            packet.time_base = AUDIO_TIME_BASE
        return packets
