"""The front holds a room's lease while its worker hosts it, with or without WebSockets through the front.

A room kept open by a WHIP publisher, WHEP viewers or a stream after its last
WebSocket left must keep its worker: a later join placed elsewhere would open it
a second time. These drive `Front` against a pool of stand-in workers whose
`/healthz` rooms the test sets (the real workers: tests/test_whip.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from mcu.config import Config
from mcu.server import front as front_module
from mcu.server.front import Front

BUSY, IDLE = "ws://127.0.0.1:1001/ws", "ws://127.0.0.1:1002/ws"


@dataclass
class StandInWorker:
    url: str
    cpu: float = 0.0
    index: int = 0
    #: What its /healthz lists, or None when it does not answer.
    rooms: list[str] | None = field(default_factory=list)

    def measure(self) -> None:
        pass


class StandInPool:
    def __init__(self, *workers: StandInWorker) -> None:
        self.workers = list(workers)

    def live(self) -> list[StandInWorker]:
        return self.workers

    def by_url(self, url: str) -> StandInWorker | None:
        return next((w for w in self.workers if w.url == url), None)

    async def health(self, brief: bool = False) -> list[dict]:
        assert brief, "the heartbeat asks for the brief form"
        return [
            {"url": w.url, "status": "ok", "rooms": {r: {"peers": 1} for r in w.rooms}}
            if w.rooms is not None
            else {"url": w.url, "status": "unreachable", "rooms": {}}
            for w in self.workers
        ]


def make_front() -> tuple[Front, StandInWorker, StandInWorker]:
    busy, idle = StandInWorker(BUSY), StandInWorker(IDLE, index=1)
    front = Front(Config(), StandInPool(busy, idle))  # type: ignore[arg-type]
    front.sessions["other"] = 3  # three connections to a room on `busy`: new rooms go to `idle`
    front._room_worker["other"] = BUSY
    busy.rooms = ["other"]
    return front, busy, idle


async def settle(front: Front) -> None:
    await front._beat()
    for task in list(front._releasing):
        await task


async def test_a_room_its_worker_hosts_keeps_its_lease_after_its_last_websocket():
    front, busy, idle = make_front()
    url, local = await front.route("stage", relayed=False)
    assert (url, local) == (IDLE, True)
    front._enter("stage", url)
    idle.rooms = ["stage"]
    front._leave("stage")  # the last WebSocket goes; a WHIP publisher keeps the room open on `idle`
    front.sessions["third"] = 9
    front._room_worker["third"] = IDLE  # `idle` is now the busier worker
    idle.rooms = ["stage", "third"]
    await settle(front)
    assert await front.local.owner("stage") == IDLE
    assert await front.route("stage", relayed=False) == (IDLE, True)

    idle.rooms = ["third"]  # the publisher left: the room closed
    await settle(front)
    assert await front.local.owner("stage") is None
    assert "stage" not in front._room_worker


async def test_a_room_placed_for_a_request_is_held_until_its_worker_lists_it(monkeypatch):
    front, busy, idle = make_front()
    assert await front._place("stage", relayed=False) == IDLE
    await settle(front)  # its worker's list was taken before the publisher's room opened
    assert await front.local.owner("stage") == IDLE

    now = time.monotonic()
    monkeypatch.setattr(front_module.time, "monotonic", lambda: now + front_module.PLACED_SECONDS + 1)
    await settle(front)  # the request never opened it (a refused offer): the placement lapses
    assert await front.local.owner("stage") is None


async def test_a_worker_that_does_not_answer_keeps_its_rooms():
    front, busy, idle = make_front()
    await front._place("stage", relayed=False)
    idle.rooms = ["stage"]
    await settle(front)
    front._placed.clear()
    idle.rooms = None  # too busy to answer /healthz in time
    await settle(front)
    assert await front.local.owner("stage") == IDLE
    idle.rooms = []
    await settle(front)
    assert await front.local.owner("stage") is None
