"""Logs as JSON lines tagged with the room and peer they concern (`mcu serve --log-format json`)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from conftest import free_port, stop_process

from client.peer import Peer
from client.sources import COLORS, ColorTrack, ToneTrack

BIN = Path(sys.executable).parent


async def test_json_logs_carry_room_and_peer() -> None:
    port = free_port()
    process = subprocess.Popen(
        [BIN / "mcu", "serve", "--port", str(port), "--size", "320x180", "--fps", "10", "--log-format", "json",
         "--log-level", "DEBUG"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    peer = Peer(f"ws://127.0.0.1:{port}/ws", "logged", "Ana", video=ColorTrack(COLORS["red"]), audio=ToneTrack(500))
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None, "mcu serve did not start"
                time.sleep(0.2)
        await peer.join()
        await peer.wait_for(lambda: peer.video_frames > 5, 15)
        peer_id = peer.peer_id
    finally:
        await peer.close()
        stop_process(process, grace=10)
    lines = process.communicate()[1].splitlines()
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message", "room", "peer"} <= entry.keys() for entry in entries)
    mine = [e for e in entries if e["room"] == "logged" and e["peer"] == peer_id]
    assert any("joined" in e["message"] for e in mine)
    # Records from the tasks started for this peer (its media connection) carry its ids too.
    assert len({e["logger"] for e in mine}) >= 2, {e["logger"] for e in mine}
