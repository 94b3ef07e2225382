"""Hand freed heap back to the system, so that a server whose peers come and go does not grow.

Each peer connection allocates native memory (OpenSSL and libsrtp contexts, codec
state, aiortc's buffers) from glibc's malloc, which keeps an arena per thread,
up to eight a core, and keeps what is freed there for reuse. Peers that stay a
few minutes and then leave leave those pages held and fragmented: over minutes
5 to 10 of a soak (scripts/soak.py) the server grew 237 MiB an hour; with two
arenas and a trim every 10 s (set from outside, MALLOC_ARENA_MAX and a thread),
82 (docs/benchmarks.md has the 30-minute run).

Only glibc has these calls; elsewhere `limit_arenas` and `Trimmer` do nothing.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the video processes use the trimmer too, and need none of aiohttp
    from aiohttp import web

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
    """Calls `malloc_trim(0)` every `interval` seconds on a thread of its own: a trim walks every arena.

    The thread lives as long as the application, so that a server's thread count
    goes back to what it was when its peers go.
    """

    def __init__(self, interval: float = TRIM_INTERVAL) -> None:
        self.interval = interval
        self.trims = 0
        self.seconds = 0.0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="malloc-trim", daemon=True)

    def trim(self) -> None:
        if _LIBC is None:
            return
        started = time.monotonic()
        _LIBC.malloc_trim(0)
        self.seconds += time.monotonic() - started
        self.trims += 1

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            self.trim()

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        """An aiohttp cleanup context: trims while the application runs."""
        self.start()
        yield
        self.stop()
