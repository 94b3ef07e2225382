"""`mcu compose`: generated clips of different sizes, frame rates and sample rates, composed as a real process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import numpy as np
from media_checks import cell_colours, close_to, tone_levels

from client.sources import COLORS, rgb_to_yuv
from compositor.layout import parse_layout
from compositor.video import PLACEHOLDER_Y

BIN = Path(sys.executable).parent
SECONDS = 3


def write_clip(
    path: Path,
    frequency: float | None,
    rate: int,
    colour: str | None = None,
    size: tuple[int, int] = (320, 240),
    fps: int = 15,
) -> None:
    """A clip with a solid colour picture (or none) and a tone (or silence) at `rate` Hz."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libvpx", rate=fps) if colour else None
        if video is not None:
            video.width, video.height, video.pix_fmt = *size, "yuv420p"
        audio = container.add_stream("libopus" if rate == 48000 else "aac", rate=rate)
        audio.layout = "mono"
        if video is not None:
            picture = np.zeros((size[1], size[0], 3), np.uint8)
            picture[:] = COLORS[colour]
            for i in range(SECONDS * fps):
                frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
                frame.pts = i
                container.mux(video.encode(frame))
            container.mux(video.encode(None))
        t = np.arange(rate * SECONDS) / rate
        samples = (0.3 * 32767 * np.sin(2 * np.pi * (frequency or 0) * t)).astype(np.int16)
        chunk = 1024
        for i in range(0, len(samples) - chunk + 1, chunk):
            frame = av.AudioFrame.from_ndarray(samples[i : i + chunk].reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, i
            container.mux(audio.encode(frame))
        container.mux(audio.encode(None))


def compose(tmp_path: Path, clips: list[Path], *extra: str) -> tuple[Path, str]:
    out = tmp_path / "out.mkv"
    process = subprocess.run(
        [BIN / "mcu", "compose", *map(str, clips), "-o", str(out), "--size", "640x360", "--fps", "15", *extra],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert process.returncode == 0, process.stderr
    return out, process.stderr


def test_three_clips_compose_into_the_grid_colours_and_the_mixed_tones(tmp_path):
    clips = [tmp_path / "red.webm", tmp_path / "green.mkv", tmp_path / "voice.mkv"]
    write_clip(clips[0], 440.0, 48000, "red", (320, 240), 15)
    write_clip(clips[1], 660.0, 44100, "green", (640, 480), 30)
    write_clip(clips[2], 880.0, 16000)  # audio only: the placeholder tile
    out, stderr = compose(tmp_path, clips)
    # The progress bar (its carriage returns read as line ends here).
    assert stderr.count("compose [") > 50 and "100%" in stderr

    with av.open(str(out)) as container:
        assert {s.type: s.codec_context.name for s in container.streams} == {"video": "vp8", "audio": "opus"}
        frames = [f for f in container.decode(video=0)]
    assert abs(len(frames) - SECONDS * 15) <= 2
    middle = frames[len(frames) // 2]
    assert (middle.width, middle.height) == (640, 360)
    red, green, placeholder = cell_colours(middle, 3, at=(0.5, 0.15))
    assert close_to(red, rgb_to_yuv(COLORS["red"])), red
    assert close_to(green, rgb_to_yuv(COLORS["green"])), green
    assert close_to(placeholder, (PLACEHOLDER_Y, 128, 128), 6), placeholder

    with av.open(str(out)) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
        decoded = container.decode(audio=0)
        heard = np.concatenate([r.to_ndarray().reshape(-1) for f in decoded for r in resampler.resample(f)])
    levels = tone_levels(heard[48000 : 48000 * 2], [440.0, 660.0, 880.0, 550.0])
    for frequency in (440.0, 660.0, 880.0):
        assert levels[frequency] - levels[550.0] >= 30, levels
    assert max(levels[f] for f in (440.0, 660.0, 880.0)) - min(levels[f] for f in (440.0, 660.0, 880.0)) <= 3, levels


def test_speaker_layout_shows_the_one_who_speaks_large(tmp_path):
    clips = [tmp_path / "quiet.webm", tmp_path / "talker.webm", tmp_path / "other.webm"]
    write_clip(clips[0], None, 48000, "red")
    write_clip(clips[1], 440.0, 48000, "green")
    write_clip(clips[2], None, 48000, "blue")
    out, _ = compose(tmp_path, clips, "--layout", "speaker")
    with av.open(str(out)) as container:
        last = [f for f in container.decode(video=0)][-3]
    large, _ = max(parse_layout("speaker").rects(3, 640, 360, speaker=1), key=lambda r: r[0].width * r[0].height)
    planes = last.to_ndarray(format="yuv444p")
    centre = tuple(int(planes[c, large.y + large.height // 3, large.x + large.width // 2]) for c in range(3))
    assert close_to(centre, rgb_to_yuv(COLORS["green"])), centre
