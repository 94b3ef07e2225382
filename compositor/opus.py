"""libopus called through ctypes with the GIL held: a room's audio codec without a GIL hand-over per call
(and the Python client's decoder of the mix it receives, client/playback.py).

PyAV releases the GIL around each step of a codec call: sending, receiving, and
for an encoder the filter that cuts frames to size. On a room's audio thread that
is about 70 releases a tick at 16 peers. At each, the event loop, which wants the
GIL nearly all the time, takes it, and the audio thread sleeps until it gets it
back: two futex wake-ups a hand-over, a few thousand a second. An Opus call takes
25-200 µs here; holding the GIL through it costs the event loop less than the
hand-overs did (docs/benchmarks.md). The codec is the same libopus PyAV ships
(or the system's), with the settings FFmpeg's libopus encoder gave it.
"""

from __future__ import annotations

import ctypes
import weakref

import numpy as np

from .audio import SAMPLE_RATE
from .libraries import codec_library

#: OPUS_APPLICATION_VOIP and the encoder requests used (opus_defines.h).
_APPLICATION_VOIP = 2048
_SET_BITRATE = 4002
_SET_VBR = 4006
_SET_COMPLEXITY = 4010
_SET_VBR_CONSTRAINT = 4020
_SET_INBAND_FEC = 4012
_SET_PACKET_LOSS_PERC = 4014
#: The longest Opus packet, 120 ms, in samples at 48 kHz; and the largest packet an encode may make.
_MAX_FRAME_SAMPLES = 5760
_MAX_PACKET_BYTES = 4000


class OpusError(Exception):
    """libopus refused: a corrupt packet, or a bad setting."""


# PyDLL: the GIL stays held during the calls (CDLL would release it around each).
_lib = ctypes.PyDLL(codec_library("opus", "libopus0"))
_lib.opus_strerror.restype = ctypes.c_char_p
_lib.opus_strerror.argtypes = [ctypes.c_int]
_lib.opus_decoder_create.restype = ctypes.c_void_p
_lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
_lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
_lib.opus_decode.restype = ctypes.c_int
_lib.opus_decode.argtypes = [
    ctypes.c_void_p,
    ctypes.c_char_p,
    ctypes.c_int32,
    ctypes.c_void_p,
    ctypes.c_int,
    ctypes.c_int,
]
_lib.opus_packet_has_lbrr.restype = ctypes.c_int
_lib.opus_packet_has_lbrr.argtypes = [ctypes.c_char_p, ctypes.c_int32]
_lib.opus_encoder_create.restype = ctypes.c_void_p
_lib.opus_encoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
_lib.opus_encoder_destroy.argtypes = [ctypes.c_void_p]
_lib.opus_encode.restype = ctypes.c_int32
_lib.opus_encode.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int32]
_lib.opus_encoder_ctl.restype = ctypes.c_int


def _check(code: int) -> int:
    if code < 0:
        raise OpusError(_lib.opus_strerror(code).decode())
    return code


class OpusDecoder:
    """Decodes Opus packets (any channel count) to 48 kHz mono int16 samples."""

    def __init__(self) -> None:
        error = ctypes.c_int()
        self._state = _lib.opus_decoder_create(SAMPLE_RATE, 1, ctypes.byref(error))
        _check(error.value)
        weakref.finalize(self, _lib.opus_decoder_destroy, self._state)
        self._pcm = np.empty(_MAX_FRAME_SAMPLES, np.int16)

    def decode(self, payload: bytes) -> np.ndarray:
        """The packet's samples: a view, valid until the next call."""
        pcm = self._pcm
        count = _check(_lib.opus_decode(self._state, payload, len(payload), pcm.ctypes.data, len(pcm), 0))
        return pcm[:count]

    def recover(self, following: bytes, samples: int) -> np.ndarray:
        """The `samples` (a multiple of 2.5 ms) of a lost packet, from the in-band FEC (LBRR) that the
        packet `following` it carries; libopus conceals them (as `conceal`) where it carries none.
        Decode `following` itself next, as usual. A view, valid until the next call."""
        pcm = self._pcm
        count = _check(_lib.opus_decode(self._state, following, len(following), pcm.ctypes.data, samples, 1))
        return pcm[:count]

    def conceal(self, samples: int) -> np.ndarray:
        """`samples` (a multiple of 2.5 ms) in place of a lost packet: libopus's loss concealment, which
        continues the voice from the decoder's state and fades it over successive calls. A view."""
        pcm = self._pcm
        count = _check(_lib.opus_decode(self._state, None, 0, pcm.ctypes.data, samples, 0))
        return pcm[:count]


def has_fec(payload: bytes) -> bool:
    """Whether an Opus packet carries in-band FEC (LBRR) data for the packet before it."""
    return _check(_lib.opus_packet_has_lbrr(payload, len(payload))) == 1


class OpusEncoder:
    """Encodes 48 kHz mono int16 frames, as FFmpeg's libopus encoder did for the room (VoIP, VBR, complexity 10)."""

    def __init__(self, bitrate: int, expected_loss: int = 0) -> None:
        """`expected_loss` (percent), when not 0, makes each packet carry in-band FEC for the one before,
        as a browser's encoder does when its peer asks for it (`useinbandfec=1`)."""
        error = ctypes.c_int()
        self._state = _lib.opus_encoder_create(SAMPLE_RATE, 1, _APPLICATION_VOIP, ctypes.byref(error))
        _check(error.value)
        weakref.finalize(self, _lib.opus_encoder_destroy, self._state)
        settings = [(_SET_BITRATE, bitrate), (_SET_VBR, 1), (_SET_VBR_CONSTRAINT, 0), (_SET_COMPLEXITY, 10)]
        if expected_loss:
            settings += [(_SET_INBAND_FEC, 1), (_SET_PACKET_LOSS_PERC, expected_loss)]
        for request, value in settings:
            _check(_lib.opus_encoder_ctl(ctypes.c_void_p(self._state), ctypes.c_int(request), ctypes.c_int32(value)))
        self._packet = ctypes.create_string_buffer(_MAX_PACKET_BYTES)

    def encode(self, samples: np.ndarray) -> bytes:
        """One packet of a 2.5-60 ms frame of int16 samples."""
        samples = np.ascontiguousarray(samples, np.int16)
        size = _check(_lib.opus_encode(self._state, samples.ctypes.data, len(samples), self._packet, _MAX_PACKET_BYTES))
        return self._packet.raw[:size]
