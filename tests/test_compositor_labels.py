"""Names in every script on the composite: real fonts, shaping, right to left, ellipsis, and the fallback."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import av
import cv2
import numpy as np
import pytest
from media_checks import cell_colours, close_to

import compositor.fonts as fonts
import compositor.text as text
import compositor.video as video
from client.peer import Peer
from client.sources import COLORS, ColorTrack, ToneTrack, rgb_to_yuv
from compositor import Compositor, Tile
from compositor.layout import GRID, fit

SIZE = 17  # the label's font size in a 180-pixel-high cell: 16 tiles in 1280x720
WIDE = 400
#: Pairs of names of the same length and script, which Hershey drew alike ('???', 'Zo?').
PAIRS = [
    ("Hangul", ("김민수", "박서준")),
    ("Latin", ("Zoë", "Zoe")),
    ("Latin", ("Łukasz", "Lukasz")),
    ("Arabic", ("محمد", "أحمد")),
    ("Cyrillic", ("Дмитрий", "Алексей")),
    ("Hebrew", ("שרה", "דוד")),
    ("CJK", ("王小明", "李小龙")),
]
NAMES = [(script, name) for script, pair in PAIRS for name in pair]
#: A code point no font draws (unassigned): every face draws it as its missing-glyph box.
UNASSIGNED = "\u0378"


def needs(script: str) -> None:
    """Skip where no installed face draws the script (scripts/test installs them, as root)."""
    sample, package = fonts.SCRIPTS[script]
    if not any(face.draws(sample) for face in fonts.faces()):
        pytest.skip(f"no font draws {script} here (Debian: {package})")


def alike(a: np.ndarray, b: np.ndarray) -> bool:
    """Same shape, and fewer than 4 pixels clearly apart (the dots of an umlaut are more)."""
    return a.shape == b.shape and np.count_nonzero(np.abs(a.astype(np.int16) - b) > 40) < 4


def clear_caches() -> None:
    for cached in (fonts._find, text._font, video._label_patch, video._placeholder_patch):
        cached.cache_clear()


@pytest.mark.parametrize("script, pair", PAIRS)
def test_two_names_of_one_script_never_render_alike(script, pair):
    needs(script)
    first, second = (video._label_patch(name, SIZE, WIDE) for name in pair)
    assert not alike(first, second), pair


@pytest.mark.parametrize("script, name", NAMES)
def test_no_name_renders_as_question_marks_or_missing_glyph_boxes(script, name):
    needs(script)
    patch = video._label_patch(name, SIZE, WIDE)
    assert not alike(patch, video._label_patch("?" * len(name), SIZE, WIDE))
    assert not alike(patch, video._label_patch(UNASSIGNED * len(name), SIZE, WIDE))
    # Nor any of its characters: each alone is not the box.
    box = text.text_mask(UNASSIGNED, 34, WIDE)
    for character in name:
        assert not alike(text.text_mask(character, 34, WIDE), box), character


def test_placeholder_draws_hangul():
    needs("Hangul")
    patch = video._placeholder_patch("김민수", 320, 180)
    assert not alike(patch, video._placeholder_patch("???", 320, 180))
    assert not alike(patch, video._placeholder_patch(UNASSIGNED * 3, 320, 180))


def test_arabic_letters_are_joined():
    needs("Arabic")
    joined = text.text_mask("محمد", 34, WIDE)
    apart = text.text_mask("\u200c".join("محمد"), 34, WIDE)  # zero-width non-joiners: the isolated forms
    assert not alike(joined, apart)
    assert joined.shape[1] < apart.shape[1]
    assert not alike(joined, text.text_mask("????", 34, WIDE))  # drawn, not replaced


def where(template: np.ndarray, image: np.ndarray) -> int:
    """The column at which a letter's mask best matches within a name's."""
    scores = cv2.matchTemplate(image.astype(np.float32), template.astype(np.float32), cv2.TM_SQDIFF)
    return int(cv2.minMaxLoc(scores)[2][0])


def test_hebrew_reads_from_the_right():
    needs("Hebrew")
    name = "שרה"  # shin, resh, he
    drawn = text.text_mask(name, 34, WIDE)
    first, last = (text.text_mask(letter, 34, WIDE) for letter in (name[0], name[-1]))
    assert first.shape[1] and last.shape[1]
    assert where(first, drawn) > where(last, drawn) + first.shape[1] // 2


def test_a_long_name_ends_in_an_ellipsis_within_the_width():
    needs("Latin")
    name = "Maximiliane Alexandra von Hohenzollern-Sigmaringen"
    patch = video._label_patch(name, SIZE, 160)
    assert patch.shape[1] <= 160
    assert patch.shape[1] >= 120  # as much of the name as fits, not a stub
    shortened = [name[:end].rstrip() + text.ELLIPSIS for end in range(1, len(name))]
    assert any(alike(patch, video._label_patch(short, SIZE, 160)) for short in shortened)
    assert video._label_patch(name, SIZE, 1000).shape[1] > 160


def test_a_long_right_to_left_name_fits_too():
    needs("Hebrew")
    patch = video._label_patch("אלכסנדרה בת שבע רוזנבלום-כהן", SIZE, 100)
    assert 80 <= patch.shape[1] <= 100


def test_labels_are_rendered_once_per_name_and_size():
    assert video._label_patch("김민수", SIZE, WIDE) is video._label_patch("김민수", SIZE, WIDE)
    assert video._placeholder_patch("김민수", 320, 180) is video._placeholder_patch("김민수", 320, 180)


def solid(yuv: tuple[int, int, int], width: int = 320, height: int = 240) -> av.VideoFrame:
    frame = av.VideoFrame(width, height, "yuv420p")
    for plane, value in zip(frame.planes, yuv):
        plane.update(np.full(plane.buffer_size, value, np.uint8))
    return frame


def test_the_label_in_the_composite_is_the_rendered_patch():
    needs("Hangul")
    canvas = Compositor(1280, 720).compose([Tile("김민수", solid((81, 90, 240)))] * 16).to_ndarray()[:720]
    cell = GRID.rects(16, 1280, 720)[0][0]
    area = fit(320, 240, cell)
    patch = video._label_patch("김민수", round(video.FONT_SIZE * cell.height / 360), area.width)
    bottom = area.y + area.height
    assert np.array_equal(canvas[bottom - patch.shape[0] : bottom, area.x : area.x + patch.shape[1]], patch)


@pytest.fixture
def fresh_fonts() -> Iterator[None]:
    clear_caches()
    yield
    clear_caches()


def test_without_any_font_names_fall_back_to_hershey_with_one_warning(monkeypatch, caplog, fresh_fonts):
    monkeypatch.setattr(fonts, "KNOWN", (("/nonexistent/DejaVuSans.ttf", "fonts-dejavu-core"),))
    monkeypatch.setattr(fonts, "_fontconfig", lambda pattern: None)
    caplog.set_level(logging.WARNING, logger="compositor.fonts")
    patch = video._label_patch("김민수 Zoë", SIZE, WIDE)
    assert patch.shape[0] > 10 and patch.max() > 200  # drawn, as '??? Zo?'
    video._placeholder_patch("김민수", 320, 180)
    video._label_patch("Alice", SIZE, WIDE)
    warnings = [r.getMessage() for r in caplog.records if "Hershey" in r.getMessage()]
    assert len(warnings) == 1 and "fonts-dejavu-core" in warnings[0]


def test_a_missing_script_is_named_once_with_its_package(monkeypatch, caplog, fresh_fonts):
    known = fonts.KNOWN[:1]  # DejaVu Sans alone: no Hangul
    if fonts._load(known[0][0]) is None:
        pytest.skip("DejaVu Sans is not installed here (Debian: fonts-dejavu-core)")
    monkeypatch.setattr(fonts, "KNOWN", known)
    monkeypatch.setattr(fonts, "_fontconfig", lambda pattern: None)
    caplog.set_level(logging.WARNING, logger="compositor.fonts")
    patch = video._label_patch("김민수", SIZE, WIDE)  # missing-glyph boxes, not a crash
    assert alike(patch, video._label_patch(UNASSIGNED * 3, SIZE, WIDE))
    video._label_patch("박서준", SIZE, WIDE)
    warnings = [r.getMessage() for r in caplog.records if "Hangul" in r.getMessage()]
    assert len(warnings) == 1 and "fonts-wqy-microhei" in warnings[0]


async def test_a_peer_named_in_hangul_is_labelled_in_hangul_on_the_composite(server):
    """The label another peer decodes is 김민수 drawn in a real font, not Hershey's '???'."""
    needs("Hangul")
    people = [
        Peer(server.url, "labels", "김민수", video=ColorTrack(COLORS["red"]), audio=ToneTrack(440)),
        Peer(server.url, "labels", "observer", video=ColorTrack(COLORS["green"]), audio=ToneTrack(660)),
    ]
    red, green = rgb_to_yuv(COLORS["red"]), rgb_to_yuv(COLORS["green"])
    try:
        for peer in people:
            await peer.join()
        observer = people[1]

        def both_shown() -> bool:
            frame = observer.video_frame
            return frame is not None and all(close_to(c, e) for c, e in zip(cell_colours(frame, 2), (red, green)))

        await observer.wait_for(both_shown, timeout=10)
        received = observer.video_frame
        assert received is not None
        width, height = received.width, received.height
        decoded = received.to_ndarray(format="yuv420p")[:height].astype(np.int16)

        def composed(name: str) -> np.ndarray:
            tiles = [Tile(name, solid(red)), Tile("observer", solid(green))]
            return Compositor(width, height).compose(tiles).to_ndarray()[:height].astype(np.int16)

        cell = GRID.rects(2, width, height)[0][0]
        area = fit(320, 240, cell)
        label = (slice(area.y + area.height * 3 // 4, area.y + area.height), slice(area.x, area.x + area.width // 2))

        def distance(name: str) -> float:
            return float(np.abs(decoded[label] - composed(name)[label]).mean())

        right, wrong = distance("김민수"), distance("???")
        assert right < wrong / 2, (right, wrong)
    finally:
        for peer in people:
            await peer.close()


@pytest.mark.parametrize(
    "name", ["a\nb", "\t", "\ud800", "\u0301\u0301", "\u202eabc", "🇰🇷 Kim", "👩\u200d💻", "x" * 1000]
)
def test_odd_names_are_drawn_on_one_line_and_never_crash(name):
    patch = video._label_patch(name, SIZE, 200)
    assert 20 <= patch.shape[0] <= 40 and patch.shape[1] <= 200
    assert video._placeholder_patch(name, 320, 180).shape == (180, 320)


def test_a_name_the_layout_refuses_falls_back_to_hershey_with_one_warning(monkeypatch, caplog, fresh_fonts):
    def refuse(*args: object) -> np.ndarray:
        raise RuntimeError("raqm_layout() failed.")

    monkeypatch.setattr(text, "_drawn", refuse)
    monkeypatch.setattr(text, "_unlaid", set())
    caplog.set_level(logging.WARNING, logger="compositor.text")
    hershey = video._label_patch("Zo?", SIZE, WIDE)  # '?' for what Hershey cannot draw
    assert alike(video._label_patch("Zoë", SIZE, WIDE), hershey) and hershey.max() > 200
    video._label_patch("김민수", SIZE, WIDE)
    assert len(caplog.records) == 1 and "Hershey" in caplog.records[0].getMessage()


def test_fontconfig_finds_faces_when_the_known_files_are_missing(monkeypatch, fresh_fonts):
    if fonts._fontconfig("sans-serif") is None:
        pytest.skip("no fc-match here (Debian: fontconfig)")
    monkeypatch.setattr(fonts, "KNOWN", (("/nonexistent/DejaVuSans.ttf", "fonts-dejavu-core"),))
    found = fonts.faces()
    assert found and all(face.path != "/nonexistent/DejaVuSans.ttf" for face in found)
    assert any(face.draws("Z") for face in found)
