"""The two commands a user runs: `mcu serve` and `mcu-client join`, as real processes."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import av
import pytest
from conftest import free_port
from media_checks import cell_colours, contains_colour

from client.sources import COLORS, rgb_to_yuv

BIN = Path(sys.executable).parent


@pytest.fixture
def served():
    port = free_port()
    process = subprocess.Popen(
        [BIN / "mcu", "serve", "--host", "127.0.0.1", "--port", str(port), "--size", "640x360", "--fps", "15"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as reply:
                assert reply.status == 200
                break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail(f"mcu serve did not start: {process.communicate()[0]}")
            time.sleep(0.2)
    try:
        yield f"ws://127.0.0.1:{port}/ws"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def client(url: str, name: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [BIN / "mcu-client", "join", url, "--room", "cli", "--name", name, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_two_clients_through_a_served_mcu_record_the_composite(served, tmp_path):
    recording = tmp_path / "bob.webm"
    alice = client(served, "alice", "--video", "color:red", "--audio", "tone:440", "--duration", "7")
    time.sleep(1)
    bob = client(
        served, "bob", "--video", "color:green", "--audio", "tone:660", "--duration", "5", "--record", str(recording)
    )
    outputs = [p.communicate(timeout=30)[0] for p in (alice, bob)]
    assert alice.returncode == 0 and bob.returncode == 0, outputs
    assert "joined room cli" in outputs[0]
    assert "participantJoined" in outputs[0] and "bob" in outputs[0]

    with av.open(str(recording)) as container:
        kinds = {stream.type for stream in container.streams}
        assert kinds == {"video", "audio"}
        frames = [f for f in container.decode(video=0)]
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
