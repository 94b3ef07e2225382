"""Running aiortc's coroutines at once, from a callback, without a task per call.

aiortc's RTP paths are coroutines that, on a plain UDP pair, never wait: their
sends end in `sendto`. The server's senders (mcu/rtc/sender.py) and its receiving
in the sockets' callbacks (mcu/rtc/intake.py) run them to their end where they are
called, a packet at a time. They may wait, though: a TURN relay binds or
refreshes its channel for the peer before it sends, every few minutes. Then
what is left runs as a task (Python 3.12's eager tasks, on 3.11).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

logger = logging.getLogger(__name__)


def run_eagerly(coroutine: Coroutine[Any, Any, None]) -> asyncio.Future[None] | None:
    """Run `coroutine` now, as far as it goes without waiting; what is left after a wait becomes a task.

    Returns None when the coroutine finished at once; what it raises before it
    waits is raised here. After a wait it goes on as the returned task, whose
    failure is logged (a ConnectionError, the connection going away, only at debug level).
    """
    try:
        waited = coroutine.send(None)
    except StopIteration:
        return None
    task = asyncio.ensure_future(_resume(coroutine, waited))
    task.add_done_callback(_log_failure)
    return task


async def _resume(coroutine: Coroutine[Any, Any, None], waited: Any) -> None:
    """Drive a started coroutine on: wait for what it waits for, then let it read the outcome itself."""
    while True:
        try:
            if waited is None:
                await asyncio.sleep(0)  # a bare yield
            else:
                # What a task does with a future its coroutine yields: it is now waited for.
                waited._asyncio_future_blocking = False
                await waited
        except (Exception, asyncio.CancelledError):
            pass  # the coroutine reads the future's outcome (result, error, cancellation) when resumed
        try:
            waited = coroutine.send(None)
        except StopIteration:
            return


def _log_failure(task: asyncio.Future[None]) -> None:
    if task.cancelled():
        return
    failure = task.exception()
    if isinstance(failure, ConnectionError):
        logger.debug("a packet was lost with its connection: %s", failure)
    elif failure is not None:
        logger.error("an RTP/RTCP send or receive failed after a wait", exc_info=failure)
