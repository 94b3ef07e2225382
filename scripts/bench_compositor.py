"""Time Compositor.compose for 4, 9 and 16 tiles of 320x240 into 1280x720.

Inputs change every other call, like 15 fps inputs at a 30 fps output; the
worst case (every input new on every call) and the cost of clearing the whole
canvas are printed for comparison.

With --labels: the names' renderer (real fonts, compositor/text.py) against the
Hershey font it replaced (kept here only, to compare), composing 16 tiles named
in Latin and Hangul, in alternating rounds; and what rendering one label costs
once (the compose itself only looks the patch up).

    python scripts/bench_compositor.py [--calls 300] [--layout grid|speaker|pip] [--labels] [--rounds 6]
"""

from __future__ import annotations

import argparse
import functools
import re
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import av
import cv2
import numpy as np

from compositor import BUILT_IN, GRID, Compositor, Layout, Tile, video
from compositor.fonts import faces

WIDTH, HEIGHT = 1280, 720


def noise_frame(rng: np.random.Generator, width: int = 320, height: int = 240) -> av.VideoFrame:
    """A yuv420p frame of random content (built like a decoder's output)."""
    frame = av.VideoFrame(width, height, "yuv420p")
    for plane in frame.planes:
        plane.update(rng.integers(0, 256, plane.buffer_size, np.uint8))
    return frame


def time_compose(count: int, calls: int, change_every: int, layout: Layout) -> float:
    """Mean milliseconds per compose when every input changes every `change_every` calls."""
    rng = np.random.default_rng(count)
    versions = [[noise_frame(rng) for _ in range(count)] for _ in range(2)]
    compositor = Compositor(WIDTH, HEIGHT)
    compositor.compose([Tile(f"Participant {i}", f) for i, f in enumerate(versions[1])], layout)
    start = time.perf_counter()
    for call in range(calls):
        frames = versions[(call // change_every) % 2]
        compositor.compose([Tile(f"Participant {i}", f) for i, f in enumerate(frames)], layout)
    return (time.perf_counter() - start) * 1000 / calls


def time_full_clear(calls: int) -> float:
    """Milliseconds to fill a whole 1280x720 yuv420p canvas with black."""
    buffer = np.empty((HEIGHT * 3 // 2, WIDTH), np.uint8)
    start = time.perf_counter()
    for _ in range(calls):
        buffer[:HEIGHT] = 16
        buffer[HEIGHT:] = 128
    return (time.perf_counter() - start) * 1000 / calls


#: Eight Latin and eight Hangul names, for the 16 tiles of --labels.
NAMES = (
    "Alice Martin", "Bob", "Zoë Łukasiewicz", "Dmitri", "Éloïse Brontë", "Sam", "Participant 7", "Jürgen Groß",
    "김민수", "박서준", "이지은", "최우식", "정해인", "한소희", "송강", "윤아",
)  # fmt: skip
_HERSHEY = cv2.FONT_HERSHEY_SIMPLEX
_NOT_ASCII = re.compile(r"[^\x20-\x7e]")


def _up_even(value: int) -> int:
    return -(-value // 2) * 2


@functools.lru_cache(maxsize=256)
def hershey_label_patch(name: str, size: int, max_width: int) -> np.ndarray:
    """The label as drawn before real fonts (Hershey, ASCII only, '?' for the rest), at the same scale."""
    text = _NOT_ASCII.sub("?", name)
    scale = round(size / video.FONT_SIZE, 2)
    (text_width, text_height), baseline = cv2.getTextSize(text, _HERSHEY, scale, 1)
    pad = max(2, round(text_height * 0.4))
    patch = np.full(
        (_up_even(text_height + baseline + 2 * pad), _up_even(text_width + 2 * pad)), video.LABEL_BOX_Y, np.uint8
    )
    cv2.putText(patch, text, (pad, pad + text_height), _HERSHEY, scale, video.TEXT_Y, 1, cv2.LINE_AA)
    patch.setflags(write=False)
    return patch


@contextmanager
def labels_by(render: Callable[[str, int, int], np.ndarray]) -> Iterator[None]:
    """Compose with another label renderer for a while."""
    kept = video._label_patch
    video._label_patch = render  # type: ignore[assignment]
    try:
        yield
    finally:
        video._label_patch = kept


def time_labelled(calls: int) -> float:
    """Microseconds per compose of 16 named tiles, inputs new every other call (labels cached)."""
    rng = np.random.default_rng(16)
    versions = [[noise_frame(rng) for _ in NAMES] for _ in range(2)]
    compositor = Compositor(WIDTH, HEIGHT)
    compositor.compose([Tile(n, f) for n, f in zip(NAMES, versions[1])], GRID)
    start = time.perf_counter()
    for call in range(calls):
        compositor.compose([Tile(n, f) for n, f in zip(NAMES, versions[(call // 2) % 2])], GRID)
    return (time.perf_counter() - start) * 1e6 / calls


def time_render(render: Callable[[str, int, int], np.ndarray], names: tuple[str, ...]) -> float:
    """Microseconds to render one label the first time (a 180-pixel-high cell: 16 tiles in 1280x720)."""
    size, width = round(video.FONT_SIZE * 180 / 360), 240
    started = time.perf_counter()
    for name in names:
        render(name, size, width)
    return (time.perf_counter() - started) * 1e6 / len(names)


def compare_labels(calls: int, rounds: int) -> None:
    started = time.perf_counter()
    faces()
    print(f"fonts found once per process: {(time.perf_counter() - started) * 1000:.0f} ms")
    fonts_render, hershey_render = video._label_patch, hershey_label_patch
    # One-time cost: each name's first render (the font files already open after a warm-up name).
    fonts_render("warm-up", 17, 240)
    hershey_render("warm-up", 17, 240)
    for script, names in (("Latin", NAMES[:8]), ("Hangul", NAMES[8:])):
        fonts_render.cache_clear()
        hershey_render.cache_clear()
        print(
            f"first render of a {script} label: fonts {time_render(fonts_render, names):.0f} µs, "
            f"Hershey {time_render(hershey_render, names):.0f} µs"
        )
    print(f"16 tiles (8 Latin, 8 Hangul names) into {WIDTH}x{HEIGHT}, {calls} composes a round, {rounds} rounds")
    timings: dict[str, list[float]] = {"fonts": [], "Hershey": []}
    for round_ in range(rounds):
        order = [("fonts", fonts_render), ("Hershey", hershey_render)]
        for label, render in order if round_ % 2 == 0 else order[::-1]:
            with labels_by(render):
                timings[label].append(time_labelled(calls))
    for label, values in timings.items():
        rounds_text = " ".join(f"{value:.0f}" for value in values)
        print(
            f"{label:8s} median {statistics.median(values):.0f} µs/compose, best {min(values):.0f} "
            f"(rounds: {rounds_text})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--layout", choices=sorted(BUILT_IN), default="grid")
    parser.add_argument("--labels", action="store_true", help="real fonts against Hershey, 16 named tiles")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds of --labels")
    args = parser.parse_args()
    if args.labels:
        compare_labels(args.calls, args.rounds)
        return
    layout = BUILT_IN[args.layout]
    print(f"compose into {WIDTH}x{HEIGHT} yuv420p, {args.layout} layout, 320x240 inputs, {args.calls} calls each")
    for count in (4, 9, 16):
        half_rate = time_compose(count, args.calls, change_every=2, layout=layout)
        every_call = time_compose(count, args.calls, change_every=1, layout=layout)
        print(
            f"{count:2d} tiles: {half_rate:.3f} ms/compose (inputs new every other call), "
            f"{every_call:.3f} ms (inputs new every call)"
        )
    print(f"full canvas clear: {time_full_clear(args.calls):.3f} ms")


if __name__ == "__main__":
    main()
