#!/usr/bin/env python3
"""Speed and quality of the shared VP8 encoder: libvpx's speed setting, with and without the active map.

A 1280x720@30 composite of 16 tiles, encoded at the room's bitrate by
`mcu.media.vpx.Vp8Encoder`, on three kinds of input:

- `texture`: blurred noise scrolling sideways (motion search has work to do),
  every tile changing at 15 fps, all on the same ticks;
- `clips`: the load peers' own VP8 clips (`client.encoded`, what bench_room.py
  sends), decoded, each at 15 fps on a tick of its own, as in a 16-peer room;
- `clips-30`: the same clips at 30 fps, every tile changing on every tick, as
  browsers' cameras send.

For each cpu-used value and map setting: encode CPU time per frame (the thread's
own, so the machine's other load counts less), luma PSNR of the decoded stream
against the composite, bitrate and the share of macroblocks the map skipped.
Rounds alternate the settings; the medians are printed.

    .venv/bin/python scripts/bench_encoder.py [--settings 13:off,13:on,14:on] [--frames 150] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from client.encoded import encode_video_clip  # noqa: E402
from compositor.video import Compositor, Tile  # noqa: E402
from mcu.media.vpx import Vp8Encoder  # noqa: E402
from scripts.loadgen import peer_colour  # noqa: E402

WIDTH, HEIGHT, FPS, BITRATE, TILES = 1280, 720, 30, 1_500_000, 16


def texture_tiles() -> Callable[[int], list[av.VideoFrame]]:
    rng = np.random.default_rng(1)
    grain = [cv2.GaussianBlur(rng.integers(0, 255, (240, 640), dtype=np.uint8), (9, 9), 3) for _ in range(TILES)]
    cache: dict[int, list[av.VideoFrame]] = {}

    def tiles(index: int) -> list[av.VideoFrame]:
        step = index // 2
        if step not in cache:
            frames = []
            for k, texture in enumerate(grain):
                buffer = np.empty((360, 320), np.uint8)
                buffer[:240] = np.roll(texture, step * 3 + k, axis=1)[:, :320]
                buffer[240:] = 96 + k * 4
                frames.append(av.VideoFrame.from_numpy_buffer(buffer, format="yuv420p"))
            cache.clear()
            cache[step] = frames
        return cache[step]

    return tiles


def clip_tiles(every_tick: bool) -> Callable[[int], list[av.VideoFrame]]:
    clips = []
    for k in range(TILES):
        decoder = av.CodecContext.create("libvpx", "r")
        clips.append([f for payload in encode_video_clip(peer_colour(k)) for f in decoder.decode(av.Packet(payload))])
    phase = np.random.default_rng(3).integers(0, 2, TILES)

    def tiles(index: int) -> list[av.VideoFrame]:
        return [clip[(index if every_tick else (index + phase[k]) // 2) % len(clip)] for k, clip in enumerate(clips)]

    return tiles


def composites(tiles: Callable[[int], list[av.VideoFrame]], count: int) -> Iterator[av.VideoFrame]:
    compositor = Compositor(WIDTH, HEIGHT)
    for index in range(count):
        yield compositor.compose([Tile(f"peer {k}", frame) for k, frame in enumerate(tiles(index))])


def run(tiles: Callable[[int], list[av.VideoFrame]], speed: int, skip: bool, count: int) -> tuple[float, ...]:
    encoder = Vp8Encoder(WIDTH, HEIGHT, FPS, BITRATE, speed, 10 * FPS, skip_unchanged=skip)
    decoder = av.CodecContext.create("libvpx", "r")
    psnr, size, cpu = [], 0, 0.0
    for index, composite in enumerate(composites(tiles, count)):
        reference = composite.to_ndarray()[:HEIGHT].astype(np.float64)
        started = time.thread_time()
        packets = encoder.encode(composite, index * 90000 // FPS, keyframe=index == 0)
        cpu += time.thread_time() - started
        for data, _ in packets:
            size += len(data)
            for decoded in decoder.decode(av.Packet(data)):
                if index >= FPS:  # past the rate control's start-up
                    error = np.mean((decoded.to_ndarray()[:HEIGHT] - reference) ** 2)
                    psnr.append(10 * np.log10(255**2 / max(error, 1e-9)))
    blocks = encoder.skipped_blocks + encoder.active_blocks
    return (
        1000 * cpu / count,
        float(np.mean(psnr)),
        size * 8 * FPS / count / 1000,
        100 * encoder.skipped_blocks / blocks,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default="13:off,13:on,14:off,14:on", help="cpu-used:map pairs")
    parser.add_argument("--contents", default="texture,clips,clips-30")
    parser.add_argument("--frames", type=int, default=150, help="frames per run (default 150)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, settings alternating (default 3)")
    args = parser.parse_args()
    settings = [(int(speed), mode == "on") for speed, mode in (s.split(":") for s in args.settings.split(","))]
    makers = {"texture": texture_tiles, "clips": lambda: clip_tiles(False), "clips-30": lambda: clip_tiles(True)}
    print("| input | cpu-used | active map | encode ms/frame (CPU) | PSNR-Y dB | kbit/s | macroblocks skipped |")
    print("|---|---|---|---|---|---|---|")
    for content in args.contents.split(","):
        tiles = makers[content]()
        results: dict[tuple[int, bool], list[tuple[float, ...]]] = {setting: [] for setting in settings}
        for _ in range(args.rounds):
            for setting in settings:
                results[setting].append(run(tiles, *setting, args.frames))
        for (speed, skip), runs in results.items():
            ms, psnr, kbps, skipped = (statistics.median(column) for column in zip(*runs))
            row = f"| {content} | {speed} | {'on' if skip else 'off'} | {ms:.2f} | {psnr:.2f} | {kbps:.0f}"
            print(f"{row} | {skipped:.0f} % |", flush=True)


if __name__ == "__main__":
    main()
