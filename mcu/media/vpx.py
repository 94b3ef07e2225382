"""libvpx's VP8 encoder called through ctypes, so that it codes only the macroblocks that changed.

A composite changes only where a tile was redrawn. In a 16-peer room whose
cameras send 15 fps, about half the tiles change from one 30 fps tick to the
next, and the letterbox bars never do. libvpx takes an active map, one flag
per 16x16 macroblock: an inactive one is coded as skipped (the last frame's
pixels), with no motion search and no bits. FFmpeg's libvpx wrapper, and so
PyAV, has no way to pass one; this module calls the same libvpx PyAV ships.

The encoder compares each picture with the last one it coded and marks active
the macroblocks where any pixel differs, plus a band of rows that sweeps the
picture once a second: CBR spends on a changed tile the bits the static ones
no longer take, and the sweep refines what stopped changing after being coded
coarsely (a whole new layout at once). At a fixed speed the benchmark's
composites take about a sixth less CPU a frame. With the room's time budget
(cpu-used 13) a quiet machine spends the time saved on quality instead (+0.2-0.8
dB); a loaded one, where libvpx already runs at its fastest, saves it: the
picture clock of a 16-peer room took 3 points of a core less (docs/benchmarks.md).

The structures below are libvpx 1.16's: `vpx_codec_enc_init_ver` refuses any
other ABI version, and the image and packet layouts are checked when an
encoder starts (tests/test_vpx.py).
"""

from __future__ import annotations

import ctypes
import weakref

import av
import numpy as np
from aiortc.mediastreams import VIDEO_CLOCK_RATE

from compositor.libraries import codec_library
from compositor.video import yuv420p_planes

#: VPX_ENCODER_ABI_VERSION of libvpx 1.16: the configuration offsets below are that version's.
_ENCODER_ABI_VERSION = 39
_IMG_FMT_I420 = 0x102
_DL_REALTIME = 1
_EFLAG_FORCE_KF = 1
_CX_FRAME_PKT = 0
_FRAME_IS_KEY = 1
#: vp8e_enc_control_id (vp8cx.h).
_SET_ACTIVEMAP = 9
_SET_CPUUSED = 13
_SET_NOISE_SENSITIVITY = 15
_SET_STATIC_THRESHOLD = 17
_SET_TOKEN_PARTITIONS = 18
#: Byte offsets in vpx_codec_enc_cfg_t (vpx_encoder.h) of the fields set here, all 32-bit.
_CFG = {
    "g_threads": 4,
    "g_w": 12,
    "g_h": 16,
    "g_timebase_num": 28,
    "g_timebase_den": 32,
    "g_lag_in_frames": 44,
    "rc_end_usage": 72,
    "rc_target_bitrate": 112,
    "rc_undershoot_pct": 124,
    "rc_overshoot_pct": 128,
    "rc_buf_sz": 132,
    "rc_buf_initial_sz": 136,
    "rc_buf_optimal_sz": 140,
    "kf_max_dist": 168,
}
#: libvpx's VP8 defaults at those offsets for a 320x240 picture: the layout check.
_CFG_DEFAULTS = {"g_w": 320, "g_h": 240, "g_timebase_den": 30, "rc_target_bitrate": 256, "rc_buf_sz": 6000}
_VPX_CBR = 1
#: Generous sizes for the opaque vpx_codec_ctx_t, vpx_codec_enc_cfg_t and vpx_image_t.
_CONTEXT_BYTES, _CFG_BYTES, _IMAGE_BYTES = 256, 2048, 256
#: vpx_image_t: planes[4] and stride[4]; vpx_codec_cx_pkt_t: the frame's buf, sz, pts and flags.
_IMG_PLANES, _IMG_STRIDES = 48, 80
_PKT_BUF, _PKT_SIZE, _PKT_PTS, _PKT_FLAGS = 8, 16, 24, 40

MACROBLOCK = 16
#: Seconds for the refresh band to sweep the whole picture.
SWEEP_SECONDS = 1.0

_lib = ctypes.CDLL(codec_library("vpx", "libvpx9"))  # CDLL: the GIL is released during an encode
_lib.vpx_codec_vp8_cx.restype = ctypes.c_void_p
_lib.vpx_codec_enc_config_default.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint]
_lib.vpx_codec_enc_init_ver.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long, ctypes.c_int]
_lib.vpx_codec_encode.argtypes = [
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_int64,
    ctypes.c_ulong,
    ctypes.c_long,
    ctypes.c_ulong,
]
_lib.vpx_codec_get_cx_data.restype = ctypes.c_void_p
_lib.vpx_codec_get_cx_data.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
_lib.vpx_codec_control_.argtypes = [ctypes.c_void_p, ctypes.c_int]
_lib.vpx_img_wrap.restype = ctypes.c_void_p
_lib.vpx_img_wrap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_int,
    ctypes.c_uint,
    ctypes.c_uint,
    ctypes.c_uint,
    ctypes.c_void_p,
]
_lib.vpx_codec_error.restype = ctypes.c_char_p
_lib.vpx_codec_error.argtypes = [ctypes.c_void_p]
_lib.vpx_codec_destroy.argtypes = [ctypes.c_void_p]
_lib.vpx_codec_version_str.restype = ctypes.c_char_p


class VpxError(Exception):
    """libvpx refused a setting or a frame."""


class _ActiveMap(ctypes.Structure):
    _fields_ = [("active_map", ctypes.c_void_p), ("rows", ctypes.c_uint), ("cols", ctypes.c_uint)]


def _u32(buffer: ctypes.Array, field: str) -> ctypes.c_uint32:
    return ctypes.c_uint32.from_buffer(buffer, _CFG[field])


def version() -> str:
    return _lib.vpx_codec_version_str().decode()


class ChangedBlocks:
    """Which macroblocks of a yuv420p picture differ from the previous picture given.

    Each picture is copied into one of two buffers padded to whole macroblocks
    (the padding stays 0 in both) and compared with the other as 64-bit words: a
    macroblock's row is two words of luma and one of each chroma plane. That costs
    0.17 ms for 1280x720 here, copy included, and the copy is what the encoder
    reads.
    """

    def __init__(self, width: int, height: int) -> None:
        if width % 2 or height % 2:
            raise ValueError(f"{width}x{height}: yuv420p needs even sizes")
        self.rows, self.cols = -(-height // MACROBLOCK), -(-width // MACROBLOCK)
        luma, chroma = self.rows * self.cols * MACROBLOCK**2, self.rows * self.cols * MACROBLOCK**2 // 4
        self._buffers = [np.zeros(luma + 2 * chroma, np.uint8) for _ in range(2)]
        self._planes = [
            (
                buffer[:luma].reshape(self.rows * MACROBLOCK, self.cols * MACROBLOCK),
                buffer[luma : luma + chroma].reshape(self.rows * MACROBLOCK // 2, self.cols * MACROBLOCK // 2),
                buffer[luma + chroma :].reshape(self.rows * MACROBLOCK // 2, self.cols * MACROBLOCK // 2),
            )
            for buffer in self._buffers
        ]
        self._words = [buffer.view(np.uint64) for buffer in self._buffers]
        self._differs = np.empty(self._words[0].shape, bool)
        #: Where the U and the V planes start, in words.
        self._u_word, self._v_word = luma // 8, (luma + chroma) // 8
        self._current = 0

    @property
    def planes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The last picture given, its planes padded to whole macroblocks."""
        return self._planes[self._current]

    def update(self, frame: av.VideoFrame) -> np.ndarray:
        """The changed macroblocks (rows x cols, bool) since the last call; keeps this picture."""
        new = 1 - self._current
        for source, target in zip(yuv420p_planes(frame), self._planes[new]):
            np.copyto(target[: source.shape[0], : source.shape[1]], source)
        differs = np.not_equal(self._words[new], self._words[self._current], out=self._differs)
        self._current = new
        rows, cols, u, v = self.rows, self.cols, self._u_word, self._v_word
        changed = differs[:u].reshape(rows, MACROBLOCK, 2 * cols).any(axis=1).reshape(rows, cols, 2).any(axis=2)
        for chroma in (differs[u:v], differs[v:]):
            changed |= chroma.reshape(rows, MACROBLOCK // 2, cols).any(axis=1)
        assert isinstance(changed, np.ndarray)  # any(axis=...) of a 3-d array: the stubs allow a scalar too
        return changed


class Vp8Encoder:
    """A realtime CBR VP8 encoder (libvpx) fed yuv420p frames, coding only what changed."""

    def __init__(
        self, width: int, height: int, fps: int, bitrate: int, cpu_used: int, gop: int, skip_unchanged: bool = True
    ) -> None:
        interface = ctypes.c_void_p(_lib.vpx_codec_vp8_cx())
        config = ctypes.create_string_buffer(_CFG_BYTES)
        if _lib.vpx_codec_enc_config_default(interface, config, 0):
            raise VpxError("no default VP8 configuration")
        found = {field: _u32(config, field).value for field in _CFG_DEFAULTS}
        if found != _CFG_DEFAULTS:
            raise VpxError(f"libvpx {version()}: unexpected configuration layout {found}")
        settings = {
            "g_threads": 1,
            "g_w": width,
            "g_h": height,
            "g_timebase_num": 1,
            "g_timebase_den": VIDEO_CLOCK_RATE,
            "g_lag_in_frames": 0,
            "rc_end_usage": _VPX_CBR,
            "rc_target_bitrate": round(bitrate / 1000),
            "rc_undershoot_pct": 100,
            "rc_overshoot_pct": 15,
            # A one-second buffer, three quarters full at the start: what FFmpeg makes of bufsize = bitrate.
            "rc_buf_sz": 1000,
            "rc_buf_initial_sz": 750,
            "rc_buf_optimal_sz": 1000 * 5 // 6,
            "kf_max_dist": gop,
        }
        for field, value in settings.items():
            _u32(config, field).value = value
        self._context = ctypes.create_string_buffer(_CONTEXT_BYTES)
        if _lib.vpx_codec_enc_init_ver(self._context, interface, config, 0, _ENCODER_ABI_VERSION):
            raise VpxError(f"libvpx {version()}: {_lib.vpx_codec_error(self._context).decode()}")
        weakref.finalize(self, _lib.vpx_codec_destroy, self._context)
        # In realtime mode a positive cpu-used is a time budget (mcu/media/encoders.py).
        for control, value in (
            (_SET_CPUUSED, cpu_used),
            (_SET_NOISE_SENSITIVITY, 0),
            (_SET_STATIC_THRESHOLD, 1),
            (_SET_TOKEN_PARTITIONS, 0),
        ):
            self._control(control, ctypes.c_int(value))
        self.width, self.height = width, height
        self.skip_unchanged = skip_unchanged
        self._duration = VIDEO_CLOCK_RATE // fps
        self._image = ctypes.create_string_buffer(_IMAGE_BYTES)
        self._changes = ChangedBlocks(width, height)
        # The image's format and size; its planes are set before each encode.
        luma = self._changes.planes[0]
        if not _lib.vpx_img_wrap(self._image, _IMG_FMT_I420, width, height, 1, luma.ctypes.data):
            raise VpxError("vpx_img_wrap failed")
        planes = [ctypes.c_void_p.from_buffer(self._image, _IMG_PLANES + 8 * i).value for i in range(3)]
        strides = [ctypes.c_int.from_buffer(self._image, _IMG_STRIDES + 4 * i).value for i in range(3)]
        address, size = luma.ctypes.data, width * height
        if planes != [address, address + size, address + size * 5 // 4] or strides != [width, width // 2, width // 2]:
            raise VpxError(f"libvpx {version()}: unexpected image layout")
        self._plane_fields = [ctypes.c_void_p.from_buffer(self._image, _IMG_PLANES + 8 * i) for i in range(3)]
        self._stride_fields = [ctypes.c_int.from_buffer(self._image, _IMG_STRIDES + 4 * i) for i in range(3)]
        self._sweep_rows = max(1, -(-self._changes.rows // round(SWEEP_SECONDS * fps)))
        self._sweep = 0
        self._map = np.ones((self._changes.rows, self._changes.cols), np.uint8)
        self._active = _ActiveMap(self._map.ctypes.data, self._changes.rows, self._changes.cols)
        #: Macroblocks coded, and skipped by the active map, over all frames.
        self.active_blocks = 0
        self.skipped_blocks = 0

    def _control(self, control: int, value: object) -> None:
        if _lib.vpx_codec_control_(self._context, control, value):
            raise VpxError(f"control {control}: {_lib.vpx_codec_error(self._context).decode()}")

    def encode(self, frame: av.VideoFrame, pts: int, keyframe: bool) -> list[tuple[bytes, bool]]:
        """Encode one picture (pts in the 90 kHz RTP video clock); returns (payload, is keyframe) per packet."""
        if (frame.width, frame.height) != (self.width, self.height):
            raise VpxError(f"a {frame.width}x{frame.height} frame for a {self.width}x{self.height} encoder")
        changed = self._changes.update(frame)
        for plane, pointer, stride in zip(self._changes.planes, self._plane_fields, self._stride_fields):
            pointer.value, stride.value = plane.ctypes.data, plane.strides[0]
        if keyframe or not self.skip_unchanged:
            self._map[...] = 1
        else:
            np.copyto(self._map, changed)
            self._map[self._sweep : self._sweep + self._sweep_rows] = 1
            self._sweep = (self._sweep + self._sweep_rows) % self._changes.rows
        if self.skip_unchanged:
            self._control(_SET_ACTIVEMAP, ctypes.byref(self._active))
        active = int(np.count_nonzero(self._map))
        self.active_blocks += active
        self.skipped_blocks += self._map.size - active
        if _lib.vpx_codec_encode(
            self._context, self._image, pts, self._duration, _EFLAG_FORCE_KF if keyframe else 0, _DL_REALTIME
        ):
            raise VpxError(_lib.vpx_codec_error(self._context).decode())
        packets = []
        iterator = ctypes.c_void_p()
        while packet := _lib.vpx_codec_get_cx_data(self._context, ctypes.byref(iterator)):
            if ctypes.c_int.from_address(packet).value != _CX_FRAME_PKT:
                continue
            buffer = ctypes.c_void_p.from_address(packet + _PKT_BUF).value
            assert buffer is not None  # a frame packet always carries its data
            data = ctypes.string_at(buffer, ctypes.c_size_t.from_address(packet + _PKT_SIZE).value)
            if ctypes.c_int64.from_address(packet + _PKT_PTS).value != pts:
                raise VpxError(f"libvpx {version()}: unexpected packet layout")
            flags = ctypes.c_uint32.from_address(packet + _PKT_FLAGS).value
            packets.append((data, bool(flags & _FRAME_IS_KEY)))
        return packets
