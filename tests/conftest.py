"""Fixtures: a real MCU on 127.0.0.1 (in this process) and real aiortc peers."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from mcu.config import Config
from mcu.rooms.conference import Conference
from mcu.server.app import CONFERENCE, create_app
from signaling.ice import use_host_addresses


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


BIN = Path(sys.executable).parent


async def within(seconds: float, predicate: Callable[[], bool]) -> None:
    """Wait until `predicate()` is true, polling every 20 ms; TimeoutError after `seconds`."""

    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), seconds)


def start_mcu(
    port: int, *args: str, tls: ssl.SSLContext | None = None, program: Sequence[str] = (), **popen: Any
) -> subprocess.Popen:
    """`mcu serve --port PORT ARGS...` as a process, returned once its /healthz answers (20 s at most).

    Output goes to one text pipe unless `popen` says otherwise; `tls` trusts an HTTPS server's certificate;
    `program` replaces the `mcu` command (a Python that patches the server first, say).
    """
    options: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True, **popen}
    process = subprocess.Popen([*(program or [BIN / "mcu"]), "serve", "--port", str(port), *args], **options)
    health = f"{'https' if tls else 'http'}://127.0.0.1:{port}/healthz"
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(health, timeout=1, context=tls):
                return process
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail(f"mcu serve did not start: {process.communicate()[0]}")
            time.sleep(0.2)


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
