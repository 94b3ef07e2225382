"""Coroutines run at once from a callback, and on as a task only once they wait (mcu/rtc/eager.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from mcu.rtc.eager import run_eagerly


def test_run_eagerly_runs_a_coroutine_that_does_not_wait_at_once() -> None:
    done: list[int] = []

    async def quick() -> None:
        done.append(1)

    assert run_eagerly(quick()) is None
    assert done == [1]


async def test_run_eagerly_finishes_after_a_wait_in_a_task_that_sees_the_outcomes() -> None:
    loop = asyncio.get_running_loop()
    first, second = loop.create_future(), loop.create_future()
    seen: list[Any] = []

    async def waits() -> None:
        seen.append("started")
        seen.append(await first)
        try:
            await second
        except KeyError as exc:
            seen.append(repr(exc))
        await asyncio.sleep(0)
        seen.append("ended")

    task = run_eagerly(waits())
    assert task is not None and seen == ["started"]
    first.set_result(7)
    await asyncio.sleep(0.01)
    assert seen == ["started", 7]
    second.set_exception(KeyError("gone"))
    await asyncio.wait_for(task, 1)
    assert seen == ["started", 7, "KeyError('gone')", "ended"]


async def test_a_failure_after_a_wait_is_logged_and_a_lost_connection_is_not_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fails_later(error: Exception) -> None:
        await asyncio.sleep(0)
        raise error

    caplog.set_level(logging.DEBUG, logger="mcu.rtc.eager")
    tasks = [run_eagerly(fails_later(ValueError("broken"))), run_eagerly(fails_later(ConnectionError("gone")))]
    await asyncio.wait([t for t in tasks if t is not None], timeout=1)
    await asyncio.sleep(0)  # the done callbacks
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and isinstance(errors[0].exc_info[1], ValueError)
    assert any(r.levelno == logging.DEBUG and "gone" in r.getMessage() for r in caplog.records)


def test_what_a_coroutine_raises_before_it_waits_is_raised_at_once() -> None:
    async def refuses() -> None:
        raise ConnectionError("not connected")

    with pytest.raises(ConnectionError):
        run_eagerly(refuses())
