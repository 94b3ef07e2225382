"""A front's media workers: N `mcu serve` processes on loopback ports, each started again when it dies.

A worker is the in-process MCU of one core (a room never spans processes); the
front (mcu/server/front.py) places rooms on them and relays their signaling.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

logger = logging.getLogger(__name__)

#: How long a worker may take to answer /healthz after it is spawned.
WORKER_START_SECONDS = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Worker:
    """One media worker process on a loopback port."""

    index: int
    port: int
    process: asyncio.subprocess.Process
    #: CPU seconds at the last heartbeat and the cores used since the one before.
    cpu_seconds: float = 0.0
    cpu: float = 0.0
    measured: float = field(default_factory=time.monotonic)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def measure(self) -> None:
        """Update `cpu` (cores) from /proc: utime + stime since the last call."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return
        seconds = (int(fields[11]) + int(fields[12])) / CLK_TCK
        now = time.monotonic()
        if now > self.measured:
            self.cpu = (seconds - self.cpu_seconds) / (now - self.measured)
        self.cpu_seconds, self.measured = seconds, now


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class WorkerPool:
    """N worker processes running `mcu serve ARGV --worker-port P`; a worker that dies is started again."""

    def __init__(self, argv: list[str], count: int, on_exit) -> None:
        self.argv = argv
        self.count = count
        self.workers: list[Worker | None] = [None] * count
        self.restarts = 0
        self._on_exit = on_exit
        self._closing = False
        self._watchers: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._http = aiohttp.ClientSession()
        await asyncio.gather(*(self._spawn(index) for index in range(self.count)))

    def live(self) -> list[Worker]:
        return [w for w in self.workers if w is not None and w.alive]

    def by_url(self, url: str) -> Worker | None:
        return next((w for w in self.live() if w.url == url), None)

    async def _spawn(self, index: int) -> None:
        port = _free_port()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mcu.server.cli", *self.argv, "--worker-port", str(port)
        )
        worker = Worker(index, port, process)
        deadline = time.monotonic() + WORKER_START_SECONDS
        while process.returncode is None and time.monotonic() < deadline:
            try:
                assert self._http is not None
                async with self._http.get(f"http://127.0.0.1:{port}/healthz", timeout=aiohttp.ClientTimeout(1)):
                    break
            except (aiohttp.ClientError, asyncio.TimeoutError):
                await asyncio.sleep(0.1)
        else:
            process.kill()
            raise RuntimeError(f"worker {index} did not start (exit status {process.returncode})")
        worker.measure()
        self.workers[index] = worker
        logger.info("worker %d: pid %d on port %d", index, process.pid, port)
        watcher = asyncio.ensure_future(self._watch(worker))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _watch(self, worker: Worker) -> None:
        status = await worker.process.wait()
        if self._closing:
            return
        logger.error(
            "worker %d (pid %d) exited with status %s: starting it again", worker.index, worker.process.pid, status
        )
        await self._on_exit(worker)
        self.restarts += 1
        while not self._closing:
            try:
                await self._spawn(worker.index)
                return
            except RuntimeError as exc:
                logger.error("%s; retrying", exc)
                await asyncio.sleep(1)

    async def health(self, brief: bool = False) -> list[dict]:
        """Each live worker's /healthz (`brief`: each room's peers only), with its index, pid, port and URL."""
        assert self._http is not None

        async def one(worker: Worker) -> dict:
            url = f"http://127.0.0.1:{worker.port}/healthz{'?brief' if brief else ''}"
            try:
                async with self._http.get(url, timeout=aiohttp.ClientTimeout(2)) as response:  # type: ignore[union-attr]
                    body = await response.json()
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                body = {"status": "unreachable", "rooms": {}, "peers": 0}
            return {"index": worker.index, "pid": worker.process.pid, "port": worker.port, "url": worker.url, **body}

        return list(await asyncio.gather(*(one(w) for w in self.live())))

    async def stop(self) -> None:
        """SIGTERM to every worker (each says server_shutdown to its peers), SIGKILL after 6 s."""
        self._closing = True
        live = self.live()
        for worker in live:
            worker.process.terminate()
        for worker in live:
            try:
                await asyncio.wait_for(worker.process.wait(), 6)
            except asyncio.TimeoutError:
                worker.process.kill()
                await worker.process.wait()
        for watcher in list(self._watchers):
            watcher.cancel()
        if self._http is not None:
            await self._http.close()


def end_with_parent() -> None:
    """A worker ends (SIGTERM) when its front dies, even by SIGKILL: no orphan keeps a room's media (Linux)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        logger.warning("this system cannot end a worker with its front")
