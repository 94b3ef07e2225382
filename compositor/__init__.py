"""Pure media math for the MCU: layouts, video compositing, audio mixing.

Imports nothing of the other packages and does no I/O, so it can be tested
and benchmarked frame by frame.
"""

from .audio import FRAME_SAMPLES, SAMPLE_RATE, Mix, SampleBuffer, mix_minus
from .layout import Rect, fit, grid_layout, grid_shape
from .video import Compositor, Tile

__all__ = [
    "FRAME_SAMPLES",
    "SAMPLE_RATE",
    "Compositor",
    "Mix",
    "Rect",
    "SampleBuffer",
    "Tile",
    "fit",
    "grid_layout",
    "grid_shape",
    "mix_minus",
]
