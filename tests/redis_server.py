"""A real `redis-server` on 127.0.0.1 for the directory tests: random port, nothing saved, stopped after."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest
from conftest import free_port, stop_process

REDIS = shutil.which("redis-server")


class RedisServer:
    """One redis-server process; `stop()` and `start()` again on the same port (Redis lost, Redis back)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        if REDIS is None:
            pytest.skip("redis-server is not installed (Debian package redis-server; scripts/test installs it)")
        self.process = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    pytest.fail("redis-server did not start")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None
