"""Logs as JSON lines tagged with the room and peer they concern (`mcu serve --log-format json`)."""

from __future__ import annotations

import json
import subprocess

from conftest import free_port, start_mcu, stop_process

from client.peer import Peer
from client.sources import COLORS, ColorTrack, ToneTrack


async def test_json_logs_carry_room_and_peer() -> None:
    port = free_port()
    process = start_mcu(
        port,
        "--size",
        "320x180",
        "--fps",
        "10",
        "--log-format",
        "json",
        "--log-level",
        "DEBUG",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    peer = Peer(f"ws://127.0.0.1:{port}/ws", "logged", "Ana", video=ColorTrack(COLORS["red"]), audio=ToneTrack(500))
    try:
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
