"""Time Compositor.compose for 4, 9 and 16 tiles of 320x240 into 1280x720.

Inputs change every other call, like 15 fps inputs at a 30 fps output; the
worst case (every input new on every call) and the cost of clearing the whole
canvas are printed for comparison.

    python scripts/bench_compositor.py [--calls 300] [--layout grid|speaker|pip]
"""

from __future__ import annotations

import argparse
import time

import av
import numpy as np

from compositor import BUILT_IN, Compositor, Layout, Tile

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--layout", choices=sorted(BUILT_IN), default="grid")
    args = parser.parse_args()
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
