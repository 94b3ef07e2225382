#!/usr/bin/env python3
"""Speed and quality of the shared VP8 encoder at each libvpx speed setting.

A 16-tile 1280x720 composite whose inputs (320x240, blurred noise scrolling
sideways, so that motion search has work to do) change at 15 fps while the
composite runs at 30 fps, as in a real room. For each `cpu-used` value: encode
time per frame and the luma PSNR of the decoded result against the composite,
at the same bitrate. This is how the server's setting was chosen.

    .venv/bin/python scripts/bench_encoder.py [--speeds 6,8,12,13,14,16] [--frames 150]
"""

from __future__ import annotations

import argparse

import av
import cv2
import numpy as np

from compositor.video import Compositor, Tile
from mcu.encoders import VideoEncoder

WIDTH, HEIGHT, FPS, BITRATE, TILES = 1280, 720, 30, 1_200_000, 16


def inputs(step: int, textures: list[np.ndarray]) -> list[av.VideoFrame]:
    frames = []
    for k, texture in enumerate(textures):
        buffer = np.empty((360, 320), np.uint8)
        buffer[:240] = np.roll(texture, step * 3 + k, axis=1)[:, :320]
        buffer[240:] = 96 + k * 4
        frames.append(av.VideoFrame.from_numpy_buffer(buffer, format="yuv420p"))
    return frames


def run(speed: int, count: int, textures: list[np.ndarray]) -> tuple[float, float, float]:
    encoder = VideoEncoder(WIDTH, HEIGHT, FPS, BITRATE)
    encoder._codec.options = dict(encoder._codec.options, **{"cpu-used": str(speed)})
    decoder = av.CodecContext.create("libvpx", "r")
    compositor = Compositor(WIDTH, HEIGHT)
    psnr, size = [], 0
    for i in range(count):
        if i % 2 == 0:
            frames = inputs(i // 2, textures)
        composite = compositor.compose([Tile(str(k), f) for k, f in enumerate(frames)])
        reference = composite.to_ndarray()[:HEIGHT].astype(np.float64)
        for packet in encoder.encode(composite, i * 90000 // FPS):
            size += packet.size
            for decoded in decoder.decode(packet):
                if i >= FPS:  # past the rate control's start-up
                    error = np.mean((decoded.to_ndarray()[:HEIGHT] - reference) ** 2)
                    psnr.append(10 * np.log10(255**2 / max(error, 1e-9)))
    return 1000 * encoder.encode_seconds / count, float(np.mean(psnr)), size * 8 * FPS / count / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speeds", default="6,8,12,13,14,16", help="libvpx cpu-used values (default 6,8,12,13,14,16)")
    parser.add_argument("--frames", type=int, default=150, help="frames per setting (default 150)")
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    textures = [cv2.GaussianBlur(rng.integers(0, 255, (240, 640), dtype=np.uint8), (9, 9), 3) for _ in range(TILES)]
    print("| cpu-used | encode ms/frame | PSNR-Y dB | kbit/s |")
    print("|---|---|---|---|")
    for speed in (int(s) for s in args.speeds.split(",")):
        ms, psnr, kbps = run(speed, args.frames, textures)
        print(f"| {speed} | {ms:.1f} | {psnr:.2f} | {kbps:.0f} |")


if __name__ == "__main__":
    main()
