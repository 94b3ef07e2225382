"""`mcu serve --workers N`: one front, N media worker processes, each room on one; a dead worker is replaced."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from conftest import BIN, free_port, start_mcu, stop_process
from media_checks import cell_colours, contains_colour

from client.peer import Peer
from client.sources import COLORS, ColorTrack, ToneTrack, rgb_to_yuv

SMALL = ("--size", "640x360", "--fps", "15")


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        return json.load(response)


def api(port: int, method: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def peer(port: int, room: str, name: str, colour: str) -> Peer:
    return Peer(f"ws://127.0.0.1:{port}/ws", room, name, video=ColorTrack(COLORS[colour]), audio=ToneTrack(440))


def sees(peers: list[Peer], colours: list[str], since: float = 0.0):
    """True once every peer's latest picture (received after `since`) holds every colour."""
    wanted = [rgb_to_yuv(COLORS[c]) for c in colours]

    def check() -> bool:
        return all(
            p.video_frame is not None
            and p.first_frame_time is not None
            and p.first_frame_time >= since
            and all(contains_colour(cell_colours(p.video_frame, len(colours)), w) for w in wanted)
            for p in peers
        )

    return check


@pytest.fixture
def front():
    port = free_port()
    process = start_mcu(port, "--workers", "2", *SMALL)
    try:
        yield port
    finally:
        stop_process(process, grace=10)
        assert process.returncode == 0, process.communicate()[0]


async def test_two_workers_host_two_rooms_one_each(front) -> None:
    port = front
    rooms = {
        "one": [peer(port, "one", "a", "red"), peer(port, "one", "b", "green")],
        "two": [peer(port, "two", "c", "blue"), peer(port, "two", "d", "yellow")],
    }
    everyone = [p for peers in rooms.values() for p in peers]
    try:
        for p in everyone:
            await p.join()
        await everyone[0].wait_for(sees(rooms["one"], ["red", "green"]), timeout=15)
        await everyone[0].wait_for(sees(rooms["two"], ["blue", "yellow"]), timeout=15)
        state = health(port)
        workers = {w["index"]: w for w in state["workers"]}
        assert len(workers) == 2 and len({w["pid"] for w in workers.values()}) == 2
        # One room per worker, each with its two peers.
        assert {state["rooms"]["one"]["worker"], state["rooms"]["two"]["worker"]} == {0, 1}
        assert all(state["rooms"][r]["peers"] == 2 for r in rooms)
        assert all(w["peers"] == 2 for w in workers.values())

        # The HTTP API at the front reaches the worker that hosts each room.
        listed = api(port, "GET", "/api/rooms")
        assert sorted((r["room"], len(r["participants"])) for r in listed["rooms"]) == [("one", 2), ("two", 2)]
        assert api(port, "PUT", "/api/rooms/two/layout", {"layout": "speaker"})["layout"] == "speaker"
        await everyone[0].wait_for(lambda: all(p.layout == "speaker" for p in rooms["two"]), timeout=5)
        assert all(p.layout == "grid" for p in rooms["one"])
        with pytest.raises(urllib.error.HTTPError) as missing:
            api(port, "GET", "/api/rooms/nowhere")
        assert missing.value.code == 404 and json.load(missing.value)["code"] == "room_not_found"

        # /metrics at the front: each worker's samples, labelled with the worker.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        for name in ("one", "two"):
            worker = state["rooms"][name]["worker"]
            assert f'mcu_room_peers{{room="{name}",worker="{worker}"}} 2.0' in metrics, metrics
        assert metrics.count("# TYPE mcu_room_peers gauge") == 1
    finally:
        await asyncio.gather(*(p.close() for p in everyone), return_exceptions=True)


async def test_a_dead_worker_is_restarted_and_its_peers_rejoin_by_themselves(front) -> None:
    port = front
    hit = [peer(port, "hit", "a", "red"), peer(port, "hit", "b", "green")]
    spared = [peer(port, "spared", "c", "blue")]
    try:
        for p in hit + spared:
            await p.join()
        await hit[0].wait_for(sees(hit, ["red", "green"]), timeout=15)
        await hit[0].wait_for(sees(spared, ["blue"]), timeout=15)
        before = health(port)
        victim = next(w for w in before["workers"] if w["index"] == before["rooms"]["hit"]["worker"])
        spared_worker = before["rooms"]["spared"]["worker"]
        spared_frames = spared[0].video_frames

        killed = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)
        await hit[0].wait_for(lambda: all(p.reconnects >= 1 for p in hit), timeout=10)
        for p in hit:
            p.first_frame_time = None  # the next picture comes from the new peer connection
        await hit[0].wait_for(sees(hit, ["red", "green"], since=killed), timeout=10 - (time.monotonic() - killed))
        back = time.monotonic() - killed
        print(f"room back {back:.1f} s after its worker was killed")
        assert back < 10, back
        assert all(p.errors[-1].code == "reconnect" for p in hit)

        # The worker is started again, and the other room never noticed.
        await hit[0].wait_for(lambda: len(health(port)["workers"]) == 2, timeout=20)
        after = health(port)
        assert after["restarts"] == 1
        assert victim["pid"] not in {w["pid"] for w in after["workers"]}
        assert after["rooms"]["hit"]["peers"] == 2
        assert after["rooms"]["spared"]["worker"] == spared_worker and spared[0].reconnects == 0
        # Its composite kept coming while the other worker died and a new one started (a CPU burst):
        # at 80 % of its rate or more over at least 3 s since the kill.
        await asyncio.sleep(max(0.0, 3 - (time.monotonic() - killed)))
        rate = (spared[0].video_frames - spared_frames) / (time.monotonic() - killed)
        assert rate >= 0.8 * int(SMALL[3]), rate
    finally:
        await asyncio.gather(*(p.close() for p in hit + spared), return_exceptions=True)


async def test_front_refuses_before_joining_and_relays_errors(front) -> None:
    """What the front answers itself (not joined, bad JSON) and what a worker answers through it (a bad offer)."""
    import aiohttp

    async with aiohttp.ClientSession() as session, session.ws_connect(f"ws://127.0.0.1:{front}/ws") as ws:
        await ws.send_str("{")
        assert (await ws.receive_json(timeout=5))["code"] == "invalid_json"
        await ws.send_json({"type": "leave"})
        assert (await ws.receive_json(timeout=5))["code"] == "not_joined"
        await ws.send_json({"type": "join", "room": "raw", "name": "raw"})
        assert (await ws.receive_json(timeout=5))["type"] == "joined"
        await ws.send_json({"type": "offer", "sdp": "not an sdp"})
        while (reply := await ws.receive_json(timeout=5))["type"] != "error":
            pass
        assert reply["code"] == "invalid_sdp"


def test_workers_flag() -> None:
    bad = subprocess.run([BIN / "mcu", "serve", "--workers", "0"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "at least 1 worker" in bad.stderr
    # The default stays one process: no front, no worker in /healthz.
    port = free_port()
    process = start_mcu(port, *SMALL)
    try:
        assert "workers" not in health(port)
    finally:
        stop_process(process)


def test_sigterm_stops_the_front_and_its_workers() -> None:
    port = free_port()
    process = start_mcu(port, "--workers", "2", *SMALL)
    pids = [w["pid"] for w in health(port)["workers"]]
    stop_process(process, grace=10)
    assert process.returncode == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
