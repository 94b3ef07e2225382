"""What the end-to-end adaptation tests share: a server on the host end of a veth pair, and a slow peer
(tests/bottleneck_peer.py) in the namespace behind it whose downstream a tc tbf shapes (tests/netns.py).

Used by tests/test_bottleneck.py and tests/test_adaptation_e2e.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web
from conftest import free_port
from netns import Unavailable, Veth, veth_namespace

from mcu.config import Config
from mcu.media.encoders import Output
from mcu.media.video_channel import KeyframeRequest, ToProcess
from mcu.rooms.adaptation import Switch
from mcu.rooms.participant import Participant
from mcu.rooms.room import Room
from mcu.server.app import CONFERENCE, create_app
from signaling import ice

HERE = Path(__file__).resolve().parent


async def poll(predicate: Callable[[], bool], seconds: float, step: float = 0.1) -> float | None:
    """The time `predicate` first held (time.monotonic()), or None after `seconds`."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return time.monotonic()
        await asyncio.sleep(step)
    return None


def at(lines: list[dict], when: float) -> dict:
    """The slow peer's last report at or before `when`."""
    return [line for line in lines if line["t"] <= when][-1]


class BottleneckServer:
    """The MCU listening on the host end of `veth`: peers on the host join `url` as the slow one does."""

    def __init__(self, veth: Veth, runner: web.AppRunner, url: str) -> None:
        self.veth = veth
        self.runner = runner
        self.url = url

    def room(self, name: str) -> Room:
        return self.runner.app[CONFERENCE].rooms[name]

    def participant(self, room: str, name: str) -> Participant | None:
        rooms = self.runner.app[CONFERENCE].rooms
        found = rooms.get(room)
        return None if found is None else next((p for p in found.participants.values() if p.name == name), None)


@contextlib.asynccontextmanager
async def bottleneck_server(tag: str, config: Config) -> AsyncIterator[BottleneckServer]:
    """A namespace behind a veth pair whose tbf works, and the MCU on its host end; skips where this
    machine cannot make them. Everything is removed afterwards."""
    try:
        context = veth_namespace(tag)
        veth = context.__enter__()
    except Unavailable as exc:
        pytest.skip(str(exc))
    previous = ice._host_addresses
    ice.use_host_addresses([veth.host])
    runner = web.AppRunner(create_app(config))
    try:
        try:
            veth.limit("50mbit")
            veth.unlimit()
        except Unavailable as exc:
            pytest.skip(f"this kernel has no usable tbf qdisc: {exc}")
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, veth.host, port).start()
        yield BottleneckServer(veth, runner, f"ws://{veth.host}:{port}/ws")
    finally:
        await runner.cleanup()
        ice.use_host_addresses(previous)
        context.__exit__(None, None, None)


class SlowPeer:
    """tests/bottleneck_peer.py running in the namespace, and the JSON lines it printed so far."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process = process
        self.log = log
        self.lines: list[dict] = []
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            self.lines.append(json.loads(raw))

    @property
    def last(self) -> dict | None:
        return self.lines[-1] if self.lines else None

    def size(self) -> list[int] | None:
        """The size of the last picture it decoded."""
        return self.lines[-1]["size"] if self.lines else None

    def describe(self) -> str:
        """Its last line and its log, for an assertion's message."""
        return f"{self.lines[-1:]}\n{self.log.read_text()}"

    async def stop(self) -> None:
        self._reader.cancel()
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except asyncio.TimeoutError:
                self.process.kill()
                await self.process.wait()


@contextlib.asynccontextmanager
async def slow_peer(
    server: BottleneckServer, room: str, name: str, log: Path, *options: str
) -> AsyncIterator[SlowPeer]:
    """Run tests/bottleneck_peer.py (with `options`: --codec, --tier) in the namespace for up to 100 s."""
    process = await asyncio.create_subprocess_exec(
        *server.veth.command(sys.executable, str(HERE / "bottleneck_peer.py"), server.url, room, name, "100", *options),
        stdout=asyncio.subprocess.PIPE, stderr=log.open("w"),
    )  # fmt: skip
    peer = SlowPeer(process, log)
    try:
        yield peer
    finally:
        await peer.stop()


def record_keyframes(room: Room) -> list[tuple[float, Output]]:
    """From now on, when (time.monotonic()) each encoder of `room` is asked for a keyframe, as the
    video process is told (requests gated by the room never get there)."""
    asked: list[tuple[float, Output]] = []
    write = room.video._write

    def counted(message: ToProcess) -> None:
        if isinstance(message, KeyframeRequest) and message.output is not None:
            asked.append((time.monotonic(), message.output))
        write(message)

    room.video._write = counted  # type: ignore[method-assign]
    return asked


def record_switches(room: Room) -> list[tuple[float, Participant, Switch]]:
    """From now on, each tier switch of a receiver of `room`, when (time.monotonic()) it was announced."""
    switches: list[tuple[float, Participant, Switch]] = []
    announce = room.on_tier

    def switched(who: Participant, switch: Switch) -> None:
        switches.append((time.monotonic(), who, switch))
        if announce is not None:
            announce(who, switch)

    room.on_tier = switched
    return switches
