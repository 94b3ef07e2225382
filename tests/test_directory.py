"""The room directory's one interface, on both implementations: in memory and in a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis_server import RedisServer

from signaling.directory import DirectoryUnavailable, Load, MemoryDirectory, RedisDirectory, least_loaded

LEASE = 0.6


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["memory", "redis"])
async def directory(request, redis_server_lazy) -> AsyncIterator:
    if request.param == "memory":
        made = MemoryDirectory(lease=LEASE)
    else:
        made = RedisDirectory(redis_server_lazy().url, lease=LEASE, prefix=f"test{id(request)}:")
    yield made
    await made.close()


@pytest.fixture
def redis_server_lazy(request):
    """Start redis-server only for the Redis half of the parametrized tests."""
    return lambda: request.getfixturevalue("redis_server")


A, B = Load("ws://a/ws", peers=3, rooms=1), Load("ws://b/ws", peers=1, rooms=1)


async def test_place_picks_least_loaded_and_keeps_the_owner(directory) -> None:
    assert await directory.owner("r") is None
    assert await directory.place("r", [A, B]) == B.url
    assert await directory.owner("r") == B.url
    # Placed already: the current owner stands, whatever the loads say now.
    assert await directory.place("r", [A, Load("ws://c/ws")]) == B.url


async def test_lease_expires_without_renewal_and_renewal_keeps_it(directory) -> None:
    await directory.place("kept", [A])
    await directory.place("lost", [A])
    for _ in range(4):
        await asyncio.sleep(LEASE / 3)
        assert await directory.renew(["kept"], A.url) == []
    assert await directory.owner("kept") == A.url
    assert await directory.owner("lost") is None
    # An owner whose lease lapsed takes it back on renewal if nobody else placed it.
    assert await directory.renew(["lost"], A.url) == []
    assert await directory.owner("lost") == A.url


async def test_renew_reports_rooms_someone_else_holds(directory) -> None:
    await directory.place("r", [B])
    assert await directory.renew(["r", "s"], A.url) == ["r"]
    assert await directory.owner("r") == B.url
    assert await directory.owner("s") == A.url


async def test_release_only_by_its_owner(directory) -> None:
    await directory.place("r", [A])
    await directory.release("r", B.url)
    assert await directory.owner("r") == A.url
    await directory.release("r", A.url)
    assert await directory.owner("r") is None


async def test_announced_owners_expire_and_withdraw(directory) -> None:
    await directory.announce(A)
    await directory.announce(B)
    assert sorted(await directory.owners(), key=lambda load: load.url) == [A, B]
    await directory.withdraw(B.url)
    assert await directory.owners() == [A]
    await asyncio.sleep(LEASE * 1.5)
    assert await directory.owners() == []


async def test_concurrent_placements_agree(directory) -> None:
    """Many fronts placing one room at once: one winner, everybody told the same owner."""
    loads = [Load(f"ws://n{i}/ws", peers=i % 3) for i in range(8)]
    owners = await asyncio.gather(*(directory.place("race", [load]) for load in loads))
    assert len(set(owners)) == 1
    assert await directory.owner("race") == owners[0]


def test_least_loaded_prefers_the_asking_owner_on_a_tie() -> None:
    a, b = Load("ws://a/ws"), Load("ws://b/ws")
    assert least_loaded([a, b], prefer=b.url) == b
    assert least_loaded([a, b]) == a
    with pytest.raises(DirectoryUnavailable):
        least_loaded([])


async def test_redis_lost_and_back(redis_server) -> None:
    """Every call says DirectoryUnavailable while Redis is down, and works again when it is back."""
    directory = RedisDirectory(redis_server.url, lease=5, prefix="lost:", timeout=0.5)
    try:
        await directory.place("r", [A])
        redis_server.stop()
        for call in (
            directory.owner("r"),
            directory.place("s", [A]),
            directory.renew(["r"], A.url),
            directory.announce(A),
            directory.owners(),
            directory.release("r", A.url),
            directory.ping(),
        ):
            with pytest.raises(DirectoryUnavailable):
                await call
        redis_server.start()
        # Nothing was saved: the owner's heartbeat puts its room back.
        assert await directory.owner("r") is None
        assert await directory.renew(["r"], A.url) == []
        assert await directory.owner("r") == A.url
    finally:
        await directory.close()
        if redis_server.process is None:
            redis_server.start()


async def test_redis_unreachable() -> None:
    from conftest import free_port

    directory = RedisDirectory(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    with pytest.raises(DirectoryUnavailable, match="unreachable"):
        await directory.ping()
    await directory.close()
