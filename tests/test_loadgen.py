"""scripts/loadgen.py as a process against `mcu serve`: rates in its summary, and a clean stop on SIGTERM."""

from __future__ import annotations

import inspect
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from client.peer import Peer
from tests.conftest import free_port, start_mcu, stop_process

LOADGEN = Path(__file__).resolve().parent.parent / "scripts" / "loadgen.py"
#: The composite rate of the server under test, and the rate of the clip each load peer sends.
SERVER_FPS, CLIP_FPS = 15, 15
MODES = ["mcu", "sfu", "mesh"]


def _supported(mode: str) -> bool:
    return mode == "mcu" or "mode" in inspect.signature(Peer).parameters


def _expected_fps(mode: str, peers_in_room: int) -> float:
    """What one peer should receive: the composite, or every other peer's clip."""
    return SERVER_FPS if mode == "mcu" else CLIP_FPS * (peers_in_room - 1)


def _loadgen(port: int, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(LOADGEN), f"ws://127.0.0.1:{port}/ws", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _room(port: int, name: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/rooms/{name}", timeout=2) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


@pytest.mark.parametrize("mode", MODES)
def test_every_peer_receives_at_the_expected_rate(mode: str, tmp_path: Path) -> None:
    if not _supported(mode):
        pytest.skip(f"the Python client has no {mode} mode yet")
    port = free_port()
    server = start_mcu(port, "--size", "320x240", "--fps", str(SERVER_FPS), "--log-level", "WARNING")
    summary = tmp_path / "summary.json"
    try:
        load = _loadgen(port, "--peers", "3", "--mode", mode, "--duration", "9", "--ramp", "0.1",
                        "--interval", "2", "--json", str(summary))  # fmt: skip
        output, _ = load.communicate(timeout=60)
    finally:
        stop_process(server)
    assert load.returncode == 0, output
    # Not a terminal: plain progress lines, then the summary.
    assert "ready: all 3 joined peers receive media" in output, output
    assert "room load-1 (" in output and "summary: 3/3 peers joined" in output, output
    result = json.loads(summary.read_text())
    assert result["mode"] == mode and result["joined"] == 3 and result["errors"] == 0, result
    assert result["stopped_by"] == "duration" and result["window_s"] > 3, result
    expected = _expected_fps(mode, 3)
    for peer in result["peer_rates"]:
        assert expected * 0.8 <= peer["fps_in"] <= expected * 1.1, peer
        assert peer["streams"] == (1 if mode == "mcu" else 2), peer
        assert peer["audio_in"] >= 0.8 * (50 if mode == "mcu" else 100), peer
        # Each peer sends its clip (≈300 kbit/s), to the server or to each other peer in a mesh.
        sent = 250 * (2 if mode == "mesh" else 1)
        assert peer["kbps_out"] >= sent and peer["kbps_in"] > 0.5 * sent, peer


@pytest.mark.parametrize("mode", MODES)
def test_sigterm_stops_it_cleanly(mode: str, tmp_path: Path) -> None:
    """Two rooms; SIGTERM: exit 0 within a bound, a summary, and every peer has left the server's rooms."""
    if not _supported(mode):
        pytest.skip(f"the Python client has no {mode} mode yet")
    port = free_port()
    server = start_mcu(port, "--size", "320x240", "--fps", str(SERVER_FPS), "--log-level", "WARNING")
    summary = tmp_path / "summary.json"
    load = None
    try:
        load = _loadgen(port, "--peers", "4", "--rooms", "2", "--mode", mode, "--ramp", "0.1",
                        "--interval", "1", "--json", str(summary))  # fmt: skip
        assert load.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 40
        while not any(line.startswith("ready:") for line in lines):
            assert time.monotonic() < deadline and load.poll() is None, "".join(lines)
            lines.append(load.stdout.readline())
        assert {len(_room(port, name)["participants"]) for name in ("load-1", "load-2")} == {2}
        load.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        rest, _ = load.communicate(timeout=20)
        took = time.monotonic() - stopped
        assert load.returncode == 0, rest
        assert took < 12, f"SIGTERM took {took:.1f} s"
        assert "summary: 4/4 peers joined" in rest, rest
        result = json.loads(summary.read_text())
        assert result["stopped_by"] == "SIGTERM" and set(result["rooms"]) == {"load-1", "load-2"}, result
        # Every peer said leave: the rooms are gone (or empty) at once, not after an ICE timeout.
        deadline = time.monotonic() + 3
        while any(_room(port, name) and _room(port, name)["participants"] for name in ("load-1", "load-2")):
            assert time.monotonic() < deadline, [_room(port, name) for name in ("load-1", "load-2")]
            time.sleep(0.1)
    finally:
        if load is not None and load.poll() is None:
            stop_process(load)
        stop_process(server)


def test_upload_is_reported_on_and_off_screen(tmp_path: Path) -> None:
    """One tile for four talking peers: the three off screen pause their video, and the summary shows it."""
    port = free_port()
    server = start_mcu(
        port, "--size", "320x240", "--fps", str(SERVER_FPS), "--max-tiles", "2", "--log-level", "WARNING"
    )
    summary = tmp_path / "summary.json"
    try:
        load = _loadgen(port, "--peers", "4", "--duration", "10", "--ramp", "0.1", "--json", str(summary))
        output, _ = load.communicate(timeout=60)
    finally:
        stop_process(server)
    assert load.returncode == 0, output
    room = json.loads(summary.read_text())["rooms"]["load-1"]
    assert room["kbps_out_on_screen_mean"] >= 250, room  # the one shown sends its clip
    # The others are off screen all along; after the server's 2 s hold they send audio only.
    assert room["kbps_out_off_screen_mean"] <= 0.5 * room["kbps_out_on_screen_mean"], room
    assert "on screen" in output and "off screen" in output, output
