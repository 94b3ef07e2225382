"""Hand freed heap back to the system, so that a server whose peers come and go does not grow.

Each peer connection allocates native memory (OpenSSL and libsrtp contexts, codec
state, aiortc's buffers) from glibc's malloc, which keeps an arena per thread,
up to eight a core, and keeps what is freed there for reuse. Peers that stay a
few minutes and then leave leave those pages held and fragmented: over minutes
5 to 10 of a soak (scripts/soak.py) the server grew 237 MiB an hour; with two
arenas and a trim every 10 s (set from outside, MALLOC_ARENA_MAX and a thread),
82 (docs/benchmarks.md has the 30-minute run).

Only glibc has these calls; elsewhere both functions do nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

logger = logging.getLogger(__name__)

#: mallopt's parameter for the most arenas malloc may create (glibc's malloc.h).
M_ARENA_MAX = -8
#: Arenas allowed: the main one and one more, shared by every thread.
ARENAS = 2
#: Seconds between trims; a trim takes milliseconds (8 ms for 150 MiB of scattered free blocks).
TRIM_INTERVAL = 10.0


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018  (both exist: this is glibc)
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _glibc()


def limit_arenas(count: int = ARENAS) -> bool:
    """Cap malloc's arenas; call before the threads start (arenas made before stay). False without glibc."""
    return _LIBC is not None and _LIBC.mallopt(M_ARENA_MAX, count) == 1


class Trimmer:
    """Calls `malloc_trim(0)` every `interval` seconds, on a thread: it walks every arena."""

    def __init__(self, interval: float = TRIM_INTERVAL) -> None:
        self.interval = interval
        self.trims = 0
        self.seconds = 0.0

    def trim(self) -> None:
        if _LIBC is None:
            return
        started = time.monotonic()
        _LIBC.malloc_trim(0)
        self.seconds += time.monotonic() - started
        self.trims += 1

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await asyncio.to_thread(self.trim)

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        """An aiohttp cleanup context: trims while the application runs."""
        task = asyncio.ensure_future(self.run())
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
