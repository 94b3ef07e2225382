"""SIGTERM: the server tells its peers, finishes its recordings, hangs up and exits within 5 s."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import av
from conftest import free_port, start_mcu, stop_process

from client.peer import Peer
from client.sources import COLORS, ColorTrack, ToneTrack


async def test_sigterm_is_a_graceful_shutdown(tmp_path: Path) -> None:
    port = free_port()
    process = start_mcu(port, "--size", "320x180", "--fps", "15", "--record-dir", str(tmp_path), "--auto-record")
    peers = [
        Peer(f"ws://127.0.0.1:{port}/ws", "bye", "Ana", video=ColorTrack(COLORS["red"]), audio=ToneTrack(500)),
        Peer(f"ws://127.0.0.1:{port}/ws", "bye", "Bo", video=ColorTrack(COLORS["green"]), audio=ToneTrack(700)),
    ]
    try:
        for peer in peers:
            await peer.join()
        await peers[0].wait_for(lambda: all(p.video_frames > 15 for p in peers), 15)
        await asyncio.sleep(1)

        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        while process.poll() is None and time.monotonic() - sent < 8:
            await asyncio.sleep(0.05)
        took = time.monotonic() - sent
        assert process.returncode == 0, process.communicate()[0]
        assert took < 5, f"exited {took:.1f} s after SIGTERM"
        for peer in peers:
            await peer.wait_for(lambda: peer._ws is not None and peer._ws.closed, 5)
            assert [e["code"] for e in peer.errors] == ["server_shutdown"]
    finally:
        for peer in peers:
            await peer.close()
        if process.poll() is None:
            stop_process(process)
        process.communicate()

    # The recording was finished, not cut: its index gives the duration it ran for.
    [recording] = list(tmp_path.iterdir())
    with av.open(str(recording)) as container:
        assert container.duration is not None and container.duration / 1e6 > 1.5
        kinds = sorted(stream.type for stream in container.streams)
        assert kinds == ["audio", "video"]
