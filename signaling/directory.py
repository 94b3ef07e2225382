"""The room directory: which owner (a worker, or a node) hosts which room.

One interface, two implementations. :class:`MemoryDirectory` lives in one
process: a front uses it to place rooms on its worker processes.
:class:`RedisDirectory` is shared by every node of a service through Redis:
which node hosts which room, and which nodes are alive with what load.

Both hold *leases*: a room's entry and an owner's announcement expire
`lease` seconds after they were last written unless renewed (the owner's
heartbeat calls :meth:`Directory.renew` and :meth:`Directory.announce` every
`lease / 5` s or so). An owner that dies stops renewing, so within `lease`
seconds its rooms are free to be placed again and it is no longer a candidate.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

#: How long a room's entry and an owner's announcement live without renewal (seconds).
LEASE_SECONDS = 5.0


class DirectoryUnavailable(Exception):
    """The directory cannot be reached (Redis down): rooms already placed go on, new ones cannot be placed."""


@dataclass(frozen=True)
class Load:
    """An owner that may host rooms, with what it carries now."""

    #: Where its signaling is reached: a worker's internal WebSocket URL, or a node's advertised one.
    url: str
    peers: int = 0
    rooms: int = 0
    #: CPU used recently, in cores (1.0 = one core busy).
    cpu: float = 0.0


def least_loaded(candidates: Sequence[Load], prefer: str | None = None) -> Load:
    """The candidate with the fewest peers, then rooms, then CPU; `prefer` wins a tie (no extra hop)."""
    if not candidates:
        raise DirectoryUnavailable("no owner is alive to host a room")
    return min(candidates, key=lambda c: (c.peers, c.rooms, round(c.cpu, 1), c.url != prefer, c.url))


class Directory(Protocol):
    """Where rooms live, and who may host them."""

    #: Seconds an entry lives without renewal.
    lease: float

    async def owner(self, room: str) -> str | None:
        """The URL of the owner hosting `room`, or None when nobody holds its lease."""
        ...

    async def place(self, room: str, candidates: Sequence[Load], prefer: str | None = None) -> str:
        """Give `room` to the least loaded candidate unless someone holds it already; the owner's URL."""
        ...

    async def renew(self, rooms: Iterable[str], owner: str) -> list[str]:
        """Extend `owner`'s leases on `rooms` (taking back expired ones); the rooms someone else holds now."""
        ...

    async def release(self, room: str, owner: str) -> None:
        """Free `room` if `owner` still holds it."""
        ...

    async def announce(self, load: Load) -> None:
        """Say that `load.url` is alive and carries this much (renews its announcement)."""
        ...

    async def withdraw(self, url: str) -> None:
        """`url` hosts nothing any more (clean shutdown, or known dead)."""
        ...

    async def owners(self) -> list[Load]:
        """Every owner whose announcement has not expired."""
        ...

    async def close(self) -> None: ...


class MemoryDirectory:
    """The directory of one process (the embedded default): a front placing rooms on its workers."""

    def __init__(self, lease: float = LEASE_SECONDS) -> None:
        self.lease = lease
        self._rooms: dict[str, tuple[str, float]] = {}
        self._owners: dict[str, tuple[Load, float]] = {}

    async def owner(self, room: str) -> str | None:
        entry = self._rooms.get(room)
        if entry is None or entry[1] <= time.monotonic():
            self._rooms.pop(room, None)
            return None
        return entry[0]

    async def place(self, room: str, candidates: Sequence[Load], prefer: str | None = None) -> str:
        current = await self.owner(room)
        if current is not None:
            return current
        chosen = least_loaded(candidates, prefer).url
        self._rooms[room] = (chosen, time.monotonic() + self.lease)
        return chosen

    async def renew(self, rooms: Iterable[str], owner: str) -> list[str]:
        lost = []
        until = time.monotonic() + self.lease
        for room in rooms:
            current = await self.owner(room)
            if current in (None, owner):
                self._rooms[room] = (owner, until)
            else:
                lost.append(room)
        return lost

    async def release(self, room: str, owner: str) -> None:
        if await self.owner(room) == owner:
            del self._rooms[room]

    async def announce(self, load: Load) -> None:
        self._owners[load.url] = (load, time.monotonic() + self.lease)

    async def withdraw(self, url: str) -> None:
        self._owners.pop(url, None)
        for room, (owner, _) in list(self._rooms.items()):
            if owner == url:
                del self._rooms[room]

    async def owners(self) -> list[Load]:
        now = time.monotonic()
        return [load for load, until in self._owners.values() if until > now]

    async def close(self) -> None:
        self._rooms.clear()
        self._owners.clear()


# Renew each key this owner holds or that has expired; report those held by someone else.
_RENEW = """
local lost = {}
for _, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if holder == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
  elseif not holder then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
  else
    table.insert(lost, key)
  end
end
return lost
"""
# Delete a key only if this owner still holds it (another may have taken it since).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisDirectory:
    """The directory shared by the nodes of a service, in Redis.

    Keys (under `prefix`): ``room:<name>`` holds the owning node's URL with a
    TTL of `lease` (SET NX PX: the first placer wins); ``node:<url>`` holds a
    node's load as JSON with the same TTL. Every Redis error becomes
    :class:`DirectoryUnavailable`; the caller decides what still works.
    """

    def __init__(self, url: str, lease: float = LEASE_SECONDS, prefix: str = "mcu:", timeout: float = 1.0) -> None:
        import redis.asyncio  # imported here: the embedded default does not need the package

        self.url = url
        self.lease = lease
        self.prefix = prefix
        self._redis = redis.asyncio.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True
        )
        self._renew = self._redis.register_script(_RENEW)
        self._release = self._redis.register_script(_RELEASE)

    async def ping(self) -> None:
        """Raise DirectoryUnavailable unless Redis answers."""
        await self._call(self._redis.ping())

    async def owner(self, room: str) -> str | None:
        return await self._call(self._redis.get(self._room(room)))

    async def place(self, room: str, candidates: Sequence[Load], prefer: str | None = None) -> str:
        current = await self.owner(room)
        if current is not None:
            return current
        chosen = least_loaded(candidates, prefer).url
        if await self._call(self._redis.set(self._room(room), chosen, nx=True, px=self._ms)):
            return chosen
        # Another node placed it between our read and our write: theirs stands.
        return await self.owner(room) or chosen

    async def renew(self, rooms: Iterable[str], owner: str) -> list[str]:
        keys = [self._room(room) for room in rooms]
        if not keys:
            return []
        lost = await self._call(self._renew(keys=keys, args=[owner, self._ms]))
        return [key.removeprefix(self.prefix + "room:") for key in lost]

    async def release(self, room: str, owner: str) -> None:
        await self._call(self._release(keys=[self._room(room)], args=[owner]))

    async def announce(self, load: Load) -> None:
        await self._call(self._redis.set(self._node(load.url), json.dumps(asdict(load)), px=self._ms))

    async def withdraw(self, url: str) -> None:
        await self._call(self._redis.delete(self._node(url)))

    async def owners(self) -> list[Load]:
        async def scan() -> list[str]:
            return [key async for key in self._redis.scan_iter(match=self._node("*"), count=100)]

        keys = await self._call(scan())
        if not keys:
            return []
        values = await self._call(self._redis.mget(keys))
        return [Load(**json.loads(value)) for value in values if value is not None]

    async def close(self) -> None:
        try:
            await self._redis.aclose()
        except Exception:  # noqa: BLE001 - a connection already lost has nothing left to close
            pass

    @property
    def _ms(self) -> int:
        return int(self.lease * 1000)

    def _room(self, room: str) -> str:
        return f"{self.prefix}room:{room}"

    def _node(self, url: str) -> str:
        return f"{self.prefix}node:{url}"

    @staticmethod
    async def _call(awaitable):
        import redis.exceptions

        try:
            return await awaitable
        except (redis.exceptions.RedisError, OSError) as exc:
            raise DirectoryUnavailable(f"the room directory (Redis) is unreachable: {exc}") from None
