"""Fixtures: a real MCU on 127.0.0.1 (in this process) and real aiortc peers."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from mcu.app import CONFERENCE, create_app
from mcu.conference import Conference
from mcu.config import Config
from signaling.ice import use_host_addresses


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(process: subprocess.Popen, grace: float = 5) -> None:
    """End a process this test started: SIGTERM, then SIGKILL after `grace` seconds."""
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


class Server:
    """An MCU listening on 127.0.0.1 with its conference at hand for inspection."""

    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self.runner = runner
        self.port = port
        self.url = f"ws://127.0.0.1:{port}/ws"
        self.conference: Conference = runner.app[CONFERENCE]


@pytest.fixture
def config() -> Config:
    """Small and light by default; a test may override it."""
    return Config(width=640, height=360, fps=15, video_bitrate=600_000)


@pytest.fixture
async def server(config: Config) -> AsyncIterator[Server]:
    use_host_addresses(["127.0.0.1"])
    runner = web.AppRunner(create_app(config), shutdown_timeout=2)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield Server(runner, port)
    finally:
        await runner.cleanup()
