"""The README's pictures of the page can be made again: scripts/screenshots.py runs end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from browser_checks import chromium_playwright
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def test_the_screenshots_script_captures_the_page_in_a_call_at_both_widths(tmp_path: Path) -> None:
    chromium_playwright()  # skips without Debian's chromium or outside a loopback-only namespace
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "screenshots.py"), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    for name, width in (("call-desktop.png", 1280), ("call-phone.png", 375)):
        with Image.open(tmp_path / name) as image:
            assert image.width == width and image.height >= 700
            pixels = np.asarray(image.convert("RGB"))
        # The composite is in it: the two peers' colours (blue and orange tiles), not a blank page.
        blue = ((pixels[..., 2] > 150) & (pixels[..., 0] < 90)).mean()
        orange = ((pixels[..., 0] > 150) & (pixels[..., 2] < 90)).mean()
        assert blue > 0.005 and orange > 0.005, (name, blue, orange)
