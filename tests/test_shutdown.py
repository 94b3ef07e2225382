"""SIGTERM: the server tells its peers, finishes its recordings, hangs up and exits within 5 s."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
from conftest import free_port, start_mcu, stop_process

from client.peer import Peer
from client.sources import COLORS, ColorTrack, ToneTrack


def two_peers(port: int, room_a: str, room_b: str) -> list[Peer]:
    """Ana (red, 500 Hz) in `room_a` and Bo (green, 700 Hz) in `room_b`."""
    url = f"ws://127.0.0.1:{port}/ws"
    return [
        Peer(url, room_a, "Ana", video=ColorTrack(COLORS["red"]), audio=ToneTrack(500)),
        Peer(url, room_b, "Bo", video=ColorTrack(COLORS["green"]), audio=ToneTrack(700)),
    ]


async def join_and_receive(peers: list[Peer]) -> None:
    for peer in peers:
        await peer.join()
    await peers[0].wait_for(lambda: all(p.video_frames > 15 for p in peers), 15)


async def told_to_go(peers: list[Peer]) -> None:
    """Each peer got `server_shutdown` and then its WebSocket closed."""
    for peer in peers:
        await peer.wait_for(lambda: peer._ws is not None and peer._ws.closed, 5)
        assert [e.code for e in peer.errors] == ["server_shutdown"]


async def hang_up(peers: list[Peer], process: subprocess.Popen) -> None:
    for peer in peers:
        await peer.close()
    if process.poll() is None:
        stop_process(process)


async def test_sigterm_is_a_graceful_shutdown(tmp_path: Path) -> None:
    port = free_port()
    process = start_mcu(port, "--size", "320x180", "--fps", "15", "--record-dir", str(tmp_path), "--auto-record")
    peers = two_peers(port, "bye", "bye")
    try:
        await join_and_receive(peers)
        await asyncio.sleep(1)

        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        while process.poll() is None and time.monotonic() - sent < 8:
            await asyncio.sleep(0.05)
        took = time.monotonic() - sent
        assert process.returncode == 0, process.communicate()[0]
        assert took < 5, f"exited {took:.1f} s after SIGTERM"
        await told_to_go(peers)
    finally:
        await hang_up(peers, process)
        process.communicate()

    # The recording was finished, not cut: its index gives the duration it ran for.
    [recording] = list(tmp_path.iterdir())
    with av.open(str(recording)) as container:
        assert container.duration is not None and container.duration / 1e6 > 1.5
        kinds = sorted(stream.type for stream in container.streams)
        assert kinds == ["audio", "video"]


#: `mcu serve` with its shutdown broken on purpose, and a non-daemon thread that never ends: a codec
#: thread whose peer connection the broken shutdown did not close (aiortc's are not daemons).
BROKEN_SHUTDOWN = """
import sys, threading
from mcu.server import cli
from mcu.rooms import conference

async def close(self):
    raise RuntimeError("shutdown broken on purpose")

conference.Conference.close = close
threading.Thread(target=threading.Event().wait, name="stuck-codec").start()
cli.main(sys.argv[1:])
"""


def test_a_shutdown_that_raises_still_ends_the_process() -> None:
    port = free_port()
    process = start_mcu(port, "--size", "320x180", program=[sys.executable, "-c", BROKEN_SHUTDOWN])
    try:
        process.send_signal(signal.SIGTERM)
        try:
            output = process.communicate(timeout=10)[0]
        except subprocess.TimeoutExpired:
            raise AssertionError("the process waited on its leftover thread after a failed shutdown") from None
        assert process.returncode == 1
        assert "the server stopped on an error" in output and "shutdown broken on purpose" in output
    finally:
        if process.poll() is None:
            stop_process(process)


async def test_a_peer_that_fails_to_leave_at_shutdown_does_not_keep_the_others(tmp_path: Path) -> None:
    """One room's close raises: the other room is still closed and its recording finished."""
    port = free_port()
    script = """
import sys
from mcu.server import cli
from mcu.rooms import room

close = room.Room.close

async def fails_in_one_room(self):
    await close(self)
    if self.name == "broken":
        raise RuntimeError("room close broken on purpose")

room.Room.close = fails_in_one_room
cli.main(sys.argv[1:])
"""
    process = start_mcu(
        port,
        "--size",
        "320x180",
        "--fps",
        "15",
        "--record-dir",
        str(tmp_path),
        "--auto-record",
        program=[sys.executable, "-c", script],
    )
    peers = two_peers(port, "broken", "fine")
    try:
        await join_and_receive(peers)
        process.send_signal(signal.SIGTERM)
        output = await asyncio.to_thread(process.communicate, timeout=10)
        assert "room close broken on purpose" in output[0]
        assert process.returncode == 0, "the failure stopped the rest of the shutdown"
        await told_to_go(peers)
    finally:
        await hang_up(peers, process)
    [recording] = tmp_path.glob("fine-*.webm")
    with av.open(str(recording)) as container:
        assert container.duration is not None and container.duration / 1e6 > 0.5
