"""The fonts that draw participants' names, and which characters each one draws.

Names come in any script, and no single Debian font draws them all, so a list of
faces is kept in order of preference and each character goes to the first face
whose character map holds it (compositor/text.py). The files are Debian's, found
by path; fontconfig's `fc-match` is asked only when one of them is missing, and a
script no face draws is logged once with the package that would draw it.
"""

from __future__ import annotations

import functools
import logging
import shutil
import subprocess
import threading
from dataclasses import dataclass

from fontTools.ttLib import TTFont
from PIL import ImageFont, features

log = logging.getLogger(__name__)

#: The preferred faces, in order, each with the Debian package that installs it.
KNOWN = (
    # Latin, Greek, Cyrillic, Arabic, Hebrew (and the ellipsis).
    ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "fonts-dejavu-core"),
    # Hangul, Chinese, Japanese kana.
    ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", "fonts-wqy-microhei"),
    # Emoji and symbols, in outline (a colour-bitmap emoji font cannot be drawn at any size).
    ("/usr/share/fonts/truetype/ancient-scripts/Symbola_hint.ttf", "fonts-symbola"),
)
#: One character of each script a name is expected in, and the package whose face draws it.
SCRIPTS = {
    "Latin": ("ë", "fonts-dejavu-core"),
    "Cyrillic": ("Ж", "fonts-dejavu-core"),
    "Arabic": ("م", "fonts-dejavu-core"),
    "Hebrew": ("ש", "fonts-dejavu-core"),
    "Hangul": ("김", "fonts-wqy-microhei"),
    "CJK": ("中", "fonts-wqy-microhei"),
    "emoji": ("\U0001f389", "fonts-symbola"),
}
#: What fontconfig is asked for when a known file is missing: a face for each script.
PATTERNS = (
    "sans-serif",
    "sans-serif:lang=ar",
    "sans-serif:lang=he",
    "sans-serif:lang=ko",
    "sans-serif:lang=zh-cn",
    "sans-serif:lang=ja",
    "emoji",
)


@dataclass(frozen=True, eq=False)
class Face:
    """One face of a font file (a .ttc holds several) and the code points its character map holds."""

    path: str
    index: int
    characters: frozenset[int]

    def draws(self, character: str) -> bool:
        return ord(character) in self.characters


def _load(path: str, index: int = 0) -> Face | None:
    """Read a face's character map; None for a file that is missing, unreadable (a warning) or not outlines."""
    try:
        font = TTFont(path, fontNumber=index, lazy=True)
        if not any(table in font for table in ("glyf", "CFF ", "CFF2")):
            log.info("font %s has no outlines (a bitmap font): not used for names", path)
            return None
        characters = frozenset(font.getBestCmap() or ())
        ImageFont.truetype(path, 16, index=index)  # FreeType, which draws, must read it too
    except FileNotFoundError:
        return None
    # Any error: fontTools parses whatever file fontconfig names, and a bad one must not stop the names.
    except Exception as error:
        log.warning("font %s cannot be read (%s): not used for names", path, error)
        return None
    return Face(path, index, characters)


def _fontconfig(pattern: str) -> tuple[str, int] | None:
    """fontconfig's best file and face index for a pattern, if fc-match is installed."""
    fc_match = shutil.which("fc-match")
    if fc_match is None:
        return None
    try:
        found = subprocess.run(
            [fc_match, "--format", "%{file}\t%{index}", pattern], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    path, _, index = found.partition("\t")
    return (path, int(index)) if path and index.isdigit() else None


_finding = threading.Lock()


def faces() -> tuple[Face, ...]:
    """The faces that draw names, in order of preference, found once per process.

    Thread-safe: the video process starts finding them before its first tick,
    and a tick that needs them first waits rather than reading the files twice.
    """
    with _finding:
        return _find()


@functools.cache
def _find() -> tuple[Face, ...]:
    """Read the faces, once.

    Each script of SCRIPTS that none of them draws is logged once, with the
    Debian package to install; no face at all leaves names to OpenCV's
    Hershey font (ASCII only), also said once.
    """
    found = [face for path, _ in KNOWN if (face := _load(path)) is not None]
    if len(found) < len(KNOWN):
        paths = {path for path, _ in KNOWN}  # fontconfig naming one that failed: no second try
        for pattern in PATTERNS:
            match = _fontconfig(pattern)
            if match is not None and match[0] not in paths:
                paths.add(match[0])
                if (face := _load(*match)) is not None:
                    found.append(face)
    if not found:
        log.warning(
            "no font found for names (%s): labels are drawn in OpenCV's Hershey font, ASCII only",
            ", ".join(package for _, package in KNOWN),
        )
    else:
        for script, (sample, package) in SCRIPTS.items():
            if not any(face.draws(sample) for face in found):
                log.warning("no font draws %s: such names show missing-glyph boxes (Debian: %s)", script, package)
    if not features.check("raqm"):
        log.warning(
            "Pillow has no raqm layout (Debian: libfribidi0): Arabic letters are drawn unjoined and "
            "right-to-left names left to right"
        )
    return tuple(found)
