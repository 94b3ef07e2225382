"""Who a moderator removed from a room, and for how long they may not join it again.

A ban is keyed by what the join proves: its token's id (``jti``) when it has one, else
its room and identity (``sub``). Without a server secret a join proves nothing (a name
is chosen freely, an address is shared behind NAT), so such a server keeps no bans:
a kick only disconnects.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

from signaling.tokens import Claims

#: At most this many bans are held; past it the oldest goes first (memory stays bounded
#: however many kicks a moderator sends).
MAX_BANS = 10_000


def ban_key(room: str, claims: Claims | None) -> Hashable | None:
    """What a ban on this join is keyed by; None when the join proves no identity (no server secret)."""
    if claims is None:
        return None
    if claims.token_id is not None:
        return ("jti", claims.token_id)
    return ("sub", room, claims.identity)


class Bans:
    """Bans that expire `seconds` after the kick."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        #: Key -> when its ban ends, in the order they were given (their ends are in that order too).
        self._until: OrderedDict[Hashable, float] = OrderedDict()

    def __len__(self) -> int:
        self._expire()
        return len(self._until)

    def ban(self, key: Hashable) -> None:
        if self.seconds <= 0:
            return
        self._until.pop(key, None)
        self._until[key] = self._clock() + self.seconds
        while len(self._until) > MAX_BANS:
            self._until.popitem(last=False)

    def remaining(self, key: Hashable) -> float:
        """Seconds left of `key`'s ban; 0 when it has none."""
        self._expire()
        until = self._until.get(key)
        return 0.0 if until is None else until - self._clock()

    def _expire(self) -> None:
        now = self._clock()
        while self._until and next(iter(self._until.values())) <= now:
            self._until.popitem(last=False)
