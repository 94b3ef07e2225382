"""The two commands a user runs: `mcu serve` and `mcu-client` (join, watch), as real processes."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import BIN, free_port, start_mcu, stop_process
from media_checks import cell_colours, contains_colour, tone, tone_levels

from client.sources import COLORS, rgb_to_yuv


@pytest.fixture
def served():
    port = free_port()
    process = start_mcu(port, "--size", "640x360", "--fps", "15")
    try:
        yield f"ws://127.0.0.1:{port}/ws"
    finally:
        stop_process(process, grace=10)


def client(url: str, name: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [BIN / "mcu-client", "join", url, "--room", "cli", "--name", name, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def write_clip(path: Path, rgb: tuple[int, int, int], frequency: float, seconds: int = 3) -> None:
    """A small WebM file: a solid colour and a tone, as a user's media file would be."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libvpx", rate=15)
        video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
        audio = container.add_stream("libopus", rate=48000)
        picture = np.zeros((240, 320, 3), np.uint8)
        picture[:] = rgb
        for i in range(seconds * 15):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        samples = tone(frequency, 48000 * seconds)
        for i in range(0, len(samples), 960):
            frame = av.AudioFrame.from_ndarray(samples[i : i + 960].reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate, frame.pts = 48000, i
            container.mux(audio.encode(frame))
        container.mux(video.encode(None))
        container.mux(audio.encode(None))


def test_two_clients_through_a_served_mcu_record_the_composite(served, tmp_path):
    recording = tmp_path / "bob.webm"
    clip = tmp_path / "alice.webm"
    write_clip(clip, COLORS["red"], 440.0)
    # Alice sends a media file (looped), Bob a test pattern and a tone.
    alice = client(
        served, "alice", "--video", str(clip), "--audio", str(clip), "--duration", "7", "--ignore-visibility"
    )
    time.sleep(1)
    media = ("--video", "color:green", "--audio", "tone:660", "--record", str(recording))
    bob = client(served, "bob", *media, "--duration", "5", "--chat", "hi from bob")
    outputs = [p.communicate(timeout=30)[0] for p in (alice, bob)]
    assert alice.returncode == 0 and bob.returncode == 0, outputs
    assert "joined room cli" in outputs[0]
    assert "participantJoined" in outputs[0] and "bob" in outputs[0]
    # Both are tiles: each is told it is on screen and its video is wanted.
    assert all("{'type': 'visibility', 'onScreen': True, 'sendVideo': True}" in output for output in outputs), outputs
    # Bob's chat reaches Alice, printed as a chat line; Bob sees the room's copy of it too.
    assert re.search(r"^\[\d\d:\d\d:\d\d\] bob: hi from bob$", outputs[0], re.MULTILINE), outputs[0]
    assert "] bob: hi from bob" in outputs[1], outputs[1]

    with av.open(str(recording)) as container:
        kinds = {stream.type for stream in container.streams}
        assert kinds == {"video", "audio"}
        frames = [f for f in container.decode(video=0)]
    with av.open(str(recording)) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
        heard = np.concatenate(
            [r.to_ndarray().reshape(-1) for f in container.decode(audio=0) for r in resampler.resample(f)]
        )
    # Bob's file carries Alice's tone (from her media file) and not his own.
    levels = tone_levels(heard[-48000 * 2 :], [440.0, 660.0])
    assert levels[440.0] - levels[660.0] >= 30, levels
    assert len(frames) > 20
    colours = cell_colours(frames[-1].reformat(width=640, height=360), 2)
    assert contains_colour(colours, rgb_to_yuv(COLORS["red"])), colours
    assert contains_colour(colours, rgb_to_yuv(COLORS["green"])), colours


def test_client_reports_a_refused_join(served):
    process = subprocess.run(
        [BIN / "mcu-client", "join", served, "--room", "bad room!", "--name", "x", "--duration", "1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert process.returncode == 1, process
    assert "room" in process.stderr.lower(), process.stderr


def test_client_watches_a_room_over_whep(served):
    whep = served.replace("ws://", "http://").removesuffix("/ws") + "/whep/cli"
    watch = [BIN / "mcu-client", "watch", whep, "--duration", "3"]
    refused = subprocess.run(watch, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 1 and "HTTP 404" in refused.stderr, refused  # no such room yet
    alice = client(served, "alice", "--video", "color:red", "--audio", "tone:440", "--duration", "8")
    try:
        time.sleep(2)
        watched = subprocess.run(watch, capture_output=True, text=True, timeout=30)
        assert watched.returncode == 0, watched
        assert "watching: " + whep + "/" in watched.stdout
        frames = re.search(r"received (\d+) video frames, (\d+) audio frames", watched.stdout)
        assert frames is not None and int(frames[1]) > 10 and int(frames[2]) > 50, watched.stdout
    finally:
        alice.communicate(timeout=30)
