"""A media clock that ticks on a thread of its own: the room's audio clock.

A task on the event loop that handed each tick to a codec thread cost the loop a
thread wake-up per tick (a `run_in_executor`, about 50 µs with the GIL held on
these machines, 50 times a second). Here the codec thread keeps the time itself,
sleeping on a timer, and the loop is woken only to deliver what a tick made.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Callable

logger = logging.getLogger(__name__)


class AudioClock:
    """Calls `tick(index)` every `period` seconds on a thread named `name`.

    Ticks are never bunched beyond `max_behind`: after a stall (the machine, a
    long tick) the missed ticks run back to back so that no media is skipped,
    but when more than `max_behind` are missed the oldest are dropped, counted
    in `dropped`, and the clock goes on from now.
    """

    def __init__(self, name: str, period: float, tick: Callable[[int], None], max_behind: int) -> None:
        self.period = period
        self.dropped = 0
        self._tick = tick
        self._max_behind = max_behind
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    async def stop(self) -> None:
        """Stop ticking; returns once a tick in progress has ended."""
        self._stopped.set()
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, 5.0)

    def _run(self) -> None:
        start = time.monotonic()
        index = 0
        while not self._stopped.is_set():
            due = int((time.monotonic() - start) / self.period)
            if due - index > self._max_behind:
                self.dropped += due - index - self._max_behind
                index = due - self._max_behind
            while index <= due and not self._stopped.is_set():
                try:
                    self._tick(index)
                except Exception:
                    logger.exception("%s: a tick failed", self._thread.name)
                index += 1
            self._stopped.wait(start + index * self.period - time.monotonic())
