"""Nodes sharing a room directory in a real Redis: a join at any node reaches the room's node; a dead node's
rooms come back elsewhere; Redis lost and back."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time

import pytest
import redis
from conftest import BIN, free_port, start_mcu, stop_process
from redis_server import RedisServer
from test_workers import SMALL, health, peer, sees

from client.peer import Peer, PeerError


@pytest.fixture
def redis_server():
    server = RedisServer()
    server.start()
    yield server
    server.stop()


class Node:
    def __init__(self, redis_url: str) -> None:
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.process = start_mcu(self.port, "--redis", redis_url, *SMALL)

    def stop(self) -> None:
        if self.process.poll() is None:
            stop_process(self.process, grace=10)


@pytest.fixture
def nodes(redis_server):
    made = [Node(redis_server.url), Node(redis_server.url)]
    try:
        yield made
    finally:
        for node in made:
            node.stop()


def directory(redis_server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url, decode_responses=True)


async def wait_until(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_join_through_a_reaches_b_and_the_room_comes_back_on_a_when_b_dies(redis_server, nodes) -> None:
    a, b = nodes
    keys = directory(redis_server)
    # A carries a room already, so the least loaded node for the next room is B.
    filler = peer(a.port, "filler", "f", "white")
    p1, p2 = peer(a.port, "r", "p1", "red"), peer(a.port, "r", "p2", "green")
    try:
        await filler.join()
        await wait_until(lambda: json.loads(keys.get(f"mcu:node:{a.url}") or "{}").get("peers") == 1, 5)
        await p1.join()
        await p2.join()
        assert keys.get("mcu:room:r") == b.url and keys.get("mcu:room:filler") == a.url
        await p1.wait_for(sees([p1, p2], ["red", "green"]), timeout=15)
        # The media ran on B's worker (relayed signaling through A), not on A.
        assert health(b.port)["rooms"]["r"]["peers"] == 2 and "r" not in health(a.port)["rooms"]
        b_worker = health(b.port)["workers"][0]["pid"]

        killed = time.monotonic()
        b.process.send_signal(signal.SIGKILL)
        b.process.wait(5)
        await p1.wait_for(lambda: p1.reconnects >= 1 and p2.reconnects >= 1, timeout=10)
        for p in (p1, p2):
            p.first_frame_time = None  # the next picture comes from the new peer connection
        await p1.wait_for(sees([p1, p2], ["red", "green"], since=killed), timeout=10)
        back = time.monotonic() - killed
        print(f"room back on node A {back:.1f} s after node B was killed")
        assert back < 10, back
        assert p1.reconnects == p2.reconnects == 1
        assert keys.get("mcu:room:r") == a.url
        assert health(a.port)["rooms"]["r"]["peers"] == 2
        # B's worker ended with its front; B's announcement is gone from the directory.
        # It ends on SIGTERM, which shuts it down gracefully: up to 5 s (test_shutdown), then its picture
        # processes end and it is reaped; on a loaded 2-core machine that took 8.1 s once.
        await wait_until(lambda: _gone(b_worker), 12)
        await wait_until(lambda: keys.get(f"mcu:node:{b.url}") is None, 6)
        assert filler.reconnects == 0
    finally:
        await asyncio.gather(filler.close(), p1.close(), p2.close(), return_exceptions=True)


def _gone(pid: int) -> bool:
    """The process has exited: no longer there, or a zombie its new parent has not reaped yet."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def frames(port: int, room: str) -> int:
    return health(port)["rooms"][room]["videoFrames"]


async def frame_rate(port: int, room: str, seconds: float = 3.0) -> float:
    start = frames(port, room)
    await asyncio.sleep(seconds)
    return (frames(port, room) - start) / seconds


async def test_redis_lost_keeps_rooms_running_refuses_new_ones_and_recovers(redis_server, nodes) -> None:
    a = nodes[0]
    nodes[1].stop()
    kept = [peer(a.port, "kept", "k1", "red"), peer(a.port, "kept", "k2", "green")]
    late: list[Peer] = []
    try:
        for p in kept:
            await p.join()
        await kept[0].wait_for(sees(kept, ["red", "green"]), timeout=15)
        before = await frame_rate(a.port, "kept")

        redis_server.stop()
        refused = peer(a.port, "new", "n", "blue")
        late.append(refused)
        with pytest.raises(PeerError):
            await refused.join()
        assert refused.errors[-1].code == "directory_unavailable"
        # A room in progress goes on at its rate, and still takes joins.
        during = await frame_rate(a.port, "kept")
        assert during >= 0.9 * before, (before, during)
        third = peer(a.port, "kept", "k3", "blue")
        late.append(third)
        await third.join()
        await third.wait_for(sees([third], ["red", "green", "blue"]), timeout=15)
        assert health(a.port)["directory"] == "unreachable"

        redis_server.start()
        await wait_until(lambda: health(a.port)["directory"] == "ok", 10)
        again = peer(a.port, "new", "n2", "yellow")
        late.append(again)
        await again.join()
        await again.wait_for(sees([again], ["yellow"]), timeout=15)
        # The node put its room back in the restarted (empty) Redis.
        assert directory(redis_server).get("mcu:room:kept") == a.url
    finally:
        await asyncio.gather(*(p.close() for p in kept + late), return_exceptions=True)


def test_redis_unreachable_at_start_is_a_clear_error() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = subprocess.run(
        [BIN / "mcu", "serve", "--port", str(free_port()), "--redis", url], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert f"cannot start with --redis {url}" in result.stderr and "unreachable" in result.stderr
