"""Names drawn as one line of text: any script, shaped, in whichever face draws each character.

Pillow lays the text out with raqm (HarfBuzz shaping, FriBiDi ordering), so
Arabic letters join and right-to-left names read from the right. A name is cut
into runs by the face that draws each character (compositor/fonts.py), the runs
sharing one baseline; a right-to-left name places its runs from the right (the
direction of its first strong character: a name is a short, single paragraph).
Drawing a name costs a few hundred microseconds (docs/benchmarks.md), so callers
cache the result per name and size.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import unicodedata

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

from .fonts import Face, faces

log = logging.getLogger(__name__)

ELLIPSIS = "\u2026"
#: The font size a Hershey scale of 1 stands for, in the fallback without any face.
_HERSHEY_HEIGHT = 30
_NOT_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]")
#: Whether Pillow lays text out with raqm (else without shaping or bidi: compositor/fonts.py says so once).
_RAQM = features.check("raqm")


@functools.lru_cache(maxsize=32)
def _font(face: Face, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(face.path, size, index=face.index)


_unlaid: set[str] = set()


def _fall_back(text: str, error: Exception) -> None:
    """Say, once per process, that a name was laid out without the fonts, and why."""
    if not _unlaid:
        log.warning("name %r could not be laid out (%s): drawn in OpenCV's Hershey font, ASCII only", text, error)
    _unlaid.add(text)


def _one_line(text: str) -> str:
    """NFC (precomposed letters, as fonts draw best), control characters and line breaks as spaces."""
    text = unicodedata.normalize("NFC", text)
    return "".join(" " if unicodedata.category(character) in ("Cc", "Zl", "Zp") else character for character in text)


def _attaches(character: str) -> bool:
    """Marks, joiners and variation selectors belong with the character before them."""
    return unicodedata.category(character) in ("Mn", "Me", "Mc", "Cf")


def _runs(text: str, available: tuple[Face, ...]) -> list[tuple[Face, str]]:
    """Cut text into runs of one face each: the face in use while it draws, else the first that does."""
    runs: list[tuple[Face, str]] = []
    for character in text:
        current = runs[-1][0] if runs else None
        if current is not None and (current.draws(character) or _attaches(character)):
            face = current
        else:
            # A character no face draws stays in the current face, which draws its missing-glyph box.
            face = next((f for f in available if f.draws(character)), current or available[0])
        if runs and face is current:
            runs[-1] = (face, runs[-1][1] + character)
        else:
            runs.append((face, character))
    return runs


def _right_to_left(text: str) -> bool:
    """Whether the first strong character of the text is right to left (Unicode's P2 rule)."""
    for character in text:
        kind = unicodedata.bidirectional(character)
        if kind in ("R", "AL"):
            return True
        if kind == "L":
            return False
    return False


def _direction(text: str) -> str | None:
    """The paragraph direction to give each run: only with raqm, which alone takes one."""
    if not _RAQM:
        return None
    return "rtl" if _right_to_left(text) else "ltr"


def _width(text: str, size: int, available: tuple[Face, ...]) -> float:
    direction = _direction(text)
    return sum(_font(face, size).getlength(run, direction=direction) for face, run in _runs(text, available))


def _shortened(text: str, size: int, max_width: int, available: tuple[Face, ...]) -> str:
    """The text, or its longest beginning with an ellipsis that fits max_width (measured with the fonts)."""
    if _width(text, size, available) <= max_width:
        return text
    fits, too_long = 0, len(text)
    while too_long - fits > 1:
        middle = (fits + too_long) // 2
        if _width(text[:middle].rstrip() + ELLIPSIS, size, available) <= max_width:
            fits = middle
        else:
            too_long = middle
    while fits and _attaches(text[fits]):  # never part a letter from its marks
        fits -= 1
    return text[:fits].rstrip() + ELLIPSIS if fits else ""


def _hershey_mask(text: str, size: int, max_width: int) -> np.ndarray:
    """The last resort without any face: OpenCV's Hershey font, ASCII only (other characters as '?')."""
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, size / _HERSHEY_HEIGHT
    text = _NOT_PRINTABLE_ASCII.sub("?", text)
    while text and cv2.getTextSize(text, font, scale, 1)[0][0] > max_width:
        text = text[:-4] + "..." if len(text) > 3 else ""
    (width, height), baseline = cv2.getTextSize(text, font, scale, 1)
    mask = np.zeros((height + baseline, width if text else 0), np.uint8)
    if text:
        cv2.putText(mask, text, (0, height), font, scale, 255, 1, cv2.LINE_AA)
    return mask


def text_width(text: str, size: int) -> float:
    """How wide the text is drawn at `size` pixels (its advance, before any ellipsis)."""
    available = faces()
    if available:
        try:
            return _width(_one_line(text), size, available)
        except (OSError, RuntimeError, ValueError):  # text_mask says so, and falls back likewise
            pass
    hershey = _NOT_PRINTABLE_ASCII.sub("?", text)
    return float(cv2.getTextSize(hershey, cv2.FONT_HERSHEY_SIMPLEX, size / _HERSHEY_HEIGHT, 1)[0][0])


def text_mask(text: str, size: int, max_width: int) -> np.ndarray:
    """The text's coverage (0 to 255) at `size` pixels, ellipsized to at most `max_width` wide.

    The mask is as high as the faces used are (ascent plus descent, the
    baseline at the ascent), and as wide as the ink: an empty text, or one
    too long for even an ellipsis, gives a mask of no columns.
    """
    available = faces()
    if available:
        try:
            return _drawn(_one_line(text), size, max_width, available)
        except (OSError, RuntimeError, ValueError) as error:  # a face FreeType rejects, raqm refusing a text
            _fall_back(text, error)
    return _hershey_mask(text, size, max_width)


def _drawn(text: str, size: int, max_width: int, available: tuple[Face, ...]) -> np.ndarray:
    """text_mask with the faces: the runs placed in the name's direction on the ascent's baseline."""
    text = _shortened(text, size, max(max_width, 0), available)
    runs = [(_font(face, size), run) for face, run in _runs(text, available)]
    direction = _direction(text)
    if direction == "rtl":
        runs.reverse()
    metrics = [font.getmetrics() for font, _ in runs] or [_font(available[0], size).getmetrics()]
    ascent, descent = max(up for up, _ in metrics), max(down for _, down in metrics)
    # Ink may reach a little beyond the advances (italics, overhangs): a margin each side, trimmed below.
    margin = size
    advances = [font.getlength(run, direction=direction) for font, run in runs]
    image = Image.new("L", (math.ceil(sum(advances)) + 2 * margin, ascent + descent))
    draw = ImageDraw.Draw(image)
    x = float(margin)
    for (font, run), advance in zip(runs, advances):
        draw.text((x, ascent), run, fill=255, font=font, anchor="ls", direction=direction)
        x += advance
    mask = np.asarray(image)
    inked = np.flatnonzero(mask.any(axis=0))
    if inked.size == 0:
        return mask[:, :0]
    mask = mask[:, inked[0] : inked[-1] + 1]
    return mask[:, :max_width] if max_width > 0 else mask[:, :0]
