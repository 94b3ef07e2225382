"""What the room's video and audio clocks share: a ticking task and a codec thread."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor


class MediaClock:
    """A task on the event loop that ticks, and the one thread its codec work runs on.

    Subclasses implement `_run()`; the thread is their own so that one kind of
    media never waits behind the other's codec.
    """

    def __init__(self, thread_name: str) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=thread_name)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self) -> None:
        raise NotImplementedError
