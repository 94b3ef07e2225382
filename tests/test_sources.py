"""The moving test pattern (client/sources.py MovingTrack): changes every frame, keeps its colour at the centre."""

from __future__ import annotations

import numpy as np

from client.cli import _video
from client.sources import COLORS, MovingTrack, rgb_to_yuv


async def test_the_moving_pattern_changes_every_frame_and_keeps_its_colour_at_the_centre() -> None:
    track = MovingTrack(COLORS["red"])
    frames = [(await track.recv()).to_ndarray(format="yuv420p") for _ in range(4)]
    lumas = [frame[:240].astype(np.int16) for frame in frames]
    assert all(np.abs(b - a).mean() > 5 for a, b in zip(lumas, lumas[1:]))  # everywhere, not a corner
    y, u, v = rgb_to_yuv(COLORS["red"])
    centre = frames[0][112:128, 152:168].astype(np.int16)
    assert abs(centre.mean() - y) < 12
    chroma = frames[0][240:].reshape(-1)
    assert (chroma[: chroma.size // 2] == u).all() and (chroma[chroma.size // 2 :] == v).all()
    assert [frame.pts for frame in [await track.recv()]] == [4 * 6000]


def test_mcu_client_video_moving_name_is_the_moving_pattern() -> None:
    track, player = _video("moving:blue")
    assert isinstance(track, MovingTrack) and player is None
