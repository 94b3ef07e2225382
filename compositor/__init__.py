"""Pure media math for the MCU: layouts, video compositing, audio mixing, and the Opus codec with its
playout buffer (libopus through ctypes: PyAV's own copy), shared by the server and the Python client.

Imports nothing of the other packages and does no I/O but reading the fonts of the names once
(compositor/fonts.py), so it can be tested and benchmarked frame by frame.
"""

from .audio import FRAME_SAMPLES, SAMPLE_RATE, Mix, SampleBuffer, mix_minus
from .layout import (
    BUILT_IN,
    GRID,
    PIP,
    SPEAKER,
    Layout,
    LayoutError,
    Rect,
    Region,
    fit,
    grid_layout,
    grid_shape,
    last_n,
    parse_layout,
)
from .video import Compositor, Scene, Tile

__all__ = [
    "BUILT_IN",
    "FRAME_SAMPLES",
    "GRID",
    "PIP",
    "SAMPLE_RATE",
    "SPEAKER",
    "Compositor",
    "Layout",
    "LayoutError",
    "Mix",
    "Rect",
    "Region",
    "SampleBuffer",
    "Scene",
    "Tile",
    "fit",
    "grid_layout",
    "grid_shape",
    "last_n",
    "mix_minus",
    "parse_layout",
]
