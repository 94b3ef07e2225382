"""Finding the C codec libraries called directly (compositor/opus.py; the server's mcu/media/vpx.py)."""

from __future__ import annotations

import ctypes.util
import glob
import os

import av


def codec_library(name: str, debian_package: str) -> str:
    """PyAV's own copy of lib`name` (its wheel bundles it beside the package), else the system's.

    PyAV's copy first: it is the build FFmpeg uses in this process, so a direct
    call and a call through PyAV run the same code.
    """
    bundled = sorted(glob.glob(os.path.join(os.path.dirname(av.__file__), os.pardir, "av.libs", f"lib{name}[-.]*so*")))
    found = bundled[0] if bundled else ctypes.util.find_library(name)
    if found is None:
        raise ImportError(f"lib{name} not found: neither in PyAV's wheel nor on the system (Debian: {debian_package})")
    return found
