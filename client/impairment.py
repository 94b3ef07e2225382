"""A seeded, userspace impaired network: loss, bursts, delay, jitter, reordering, a rate limit.

The kernel this project is tested on has no netem qdisc (nor tc actions or classifiers), and
libwebrtc's fake-network field trials do not take effect in Debian's Chromium (below), so the
impairment is done here, in userspace, per datagram:
`Model` decides whether a datagram is lost and when it arrives, from one random generator per
direction seeded so that a run can be repeated; `Link` applies those decisions to real datagrams,
delivering them from the asyncio loop's timers (never blocking it).

Two ways to put it on a media path:
- `Relay`, a UDP relay in front of a TURN server (coturn): a client given
  `turn:127.0.0.1:<relay port>` with a relay-only ICE policy (a browser's
  `iceTransportPolicy: "relay"`, `mcu-client join --relay-only`) sends and receives all its media
  through it. Runnable: `python -m client.impairment relay --listen 127.0.0.1:3479
  --target 127.0.0.1:3478 --loss 5 --jitter 30 --seed 1`.
- `client.impaired_ice.impair_ice`, a wrapper around a Python peer connection's own sockets:
  `Peer(..., impairment=parse_spec("loss=5,jitter=30,seed=1"))`, `mcu-client join --impair ...`.

The order of a path's stages is a bottleneck's: random loss first (the access link), then the
rate limit (serialization at `rate` bit/s behind a queue of `queue` datagrams; one that finds the
queue full is dropped, tail drop), then the propagation delay plus jitter. Jitter is a uniform
extra delay in [0, jitter] ms drawn per datagram, so datagrams overtake each other unless `order`
is set; `reorder` % of datagrams skip the delay altogether (netem's reordering).

Relay clients are kept until the relay closes: it is made for a test's or a benchmark's lifetime.

Chromium's own fake network, checked on 2026-12-05 with Debian's Chromium 156.0.8078.114 driven
by Playwright: two peer connections in one page, over 127.0.0.1 in a network namespace of their
own, sending the fake camera for 10 s (about 370 video packets). With
`--force-fieldtrials=WebRTC-FakeNetworkReceiveConfig/loss_percent:20/`, with
`WebRTC-FakeNetworkSendConfig/loss_percent:20/` and without any, the receiver's inbound
`packetsLost` and `nackCount` were 0 and its `jitter` 0-1 ms; `queue_delay_ms:200` in either
trial changed nothing either. Those trials do not take effect in this build: put a browser
behind the relay instead (the page's `?relay=1`).
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import logging
import random
import signal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

logger = logging.getLogger(__name__)

Address = tuple[Any, ...]
#: Why a datagram was not delivered (`Model.decide`), the names of their `Counters`.
LOST = "lost"
TAIL_DROPPED = "tail_dropped"


@dataclass(frozen=True)
class Impairment:
    """What one direction of a path does to datagrams (all zero: nothing)."""

    #: Datagrams lost at random, in percent of those offered.
    loss: float = 0.0
    #: Mean length of a loss burst in datagrams (Gilbert-Elliott); 1: independent losses.
    burst: float = 1.0
    #: Fixed one-way delay and the most random extra delay of a datagram, in milliseconds.
    delay: float = 0.0
    jitter: float = 0.0
    #: Keep the order datagrams came in (jitter then only spreads them out).
    order: bool = False
    #: Datagrams sent at once, ahead of those delayed, in percent.
    reorder: float = 0.0
    #: Bottleneck rate in bit/s (0: none), and how many datagrams wait for it before tail drop.
    rate: float = 0.0
    queue: int = 50
    #: Seeds the direction's random generator (with the direction's name).
    seed: int = 0

    def __post_init__(self) -> None:
        if not (0 <= self.loss <= 100 and 0 <= self.reorder <= 100):
            raise ValueError("loss and reorder are percentages, 0 to 100")
        if self.burst < 1:
            raise ValueError("burst is a mean number of datagrams, 1 or more")
        if min(self.delay, self.jitter, self.rate) < 0 or self.queue < 1:
            raise ValueError("delay, jitter and rate cannot be negative, queue is at least 1")

    @property
    def active(self) -> bool:
        return any((self.loss, self.delay, self.jitter, self.reorder, self.rate))


@dataclass(frozen=True)
class Impairments:
    """Both directions of a client's path: `up` what it sends, `down` what it receives."""

    up: Impairment = field(default_factory=Impairment)
    down: Impairment = field(default_factory=Impairment)


class Model:
    """Decides, per datagram, whether it is lost and when it arrives.

    Each datagram draws the same four random numbers whatever happens to it, so the
    decisions of one seed are the same datagram for datagram in every run (the rate
    limit's tail drops also depend on when datagrams come, which the caller gives).
    """

    def __init__(self, impairment: Impairment, direction: str, departures: deque[float] | None = None) -> None:
        self.impairment = impairment
        self.direction = direction
        self._random = random.Random(f"{impairment.seed}:{direction}")
        loss = impairment.loss / 100
        # Gilbert-Elliott with a lossless good state and a lossy bad one: leaving the bad state with
        # probability 1/burst makes bursts `burst` long on average; entering it with the
        # probability below makes the bad state's share of the time `loss`.
        self._leave_bad = 1 / impairment.burst
        self._enter_bad = 1.0 if loss >= 1 else loss * self._leave_bad / (1 - loss)
        self._bad = False
        #: When each datagram queued or on the bottleneck leaves it (kept when the link changes).
        self.departures: deque[float] = deque() if departures is None else departures

    def decide(self, size: int, now: float) -> float | str:
        """When a datagram of `size` bytes offered at `now` (seconds) arrives, or why not (LOST, TAIL_DROPPED)."""
        imp = self.impairment
        draw = self._random.random
        lost_draw, jitter_draw, reorder_draw = draw(), draw(), draw()
        if imp.burst == 1 or imp.loss >= 100:
            lost = lost_draw < imp.loss / 100
        else:
            self._bad = lost_draw >= self._leave_bad if self._bad else lost_draw < self._enter_bad
            lost = self._bad
        if lost:
            return LOST
        departure = now
        if imp.rate:
            while self.departures and self.departures[0] <= now:
                self.departures.popleft()
            if len(self.departures) >= imp.queue:
                return TAIL_DROPPED
            start = self.departures[-1] if self.departures else now
            departure = start + size * 8 / imp.rate
            self.departures.append(departure)
        if reorder_draw < imp.reorder / 100:
            return departure
        return departure + (imp.delay + jitter_draw * imp.jitter) / 1000


@dataclass
class Counters:
    """What a path did: datagrams offered, lost at random, dropped by the full queue, delivered, reordered."""

    offered: int = 0
    lost: int = 0
    tail_dropped: int = 0
    delivered: int = 0
    #: Delivered after a datagram offered later than them.
    reordered: int = 0


class Link:
    """One direction: takes datagrams, hands each survivor to its `deliver` at the time the model says."""

    def __init__(self, impairment: Impairment, direction: str) -> None:
        self.model = Model(impairment, direction)
        self.counters = Counters()
        self._loop = asyncio.get_running_loop()
        # A heap by (arrival time, order offered): ties leave in the order they came.
        self._pending: list[tuple[float, int, bytes, Callable[[bytes], Any]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._offered = 0
        self._latest_delivered = -1
        self._last_arrival = 0.0
        self._closed = False

    def send(self, data: bytes, deliver: Callable[[bytes], Any]) -> None:
        """Offer one datagram: `deliver(data)` is called later, or never (and never once closed)."""
        if self._closed:
            return
        counters = self.counters
        counters.offered += 1
        arrival = self.model.decide(len(data), self._loop.time())
        if isinstance(arrival, str):
            setattr(counters, arrival, getattr(counters, arrival) + 1)
            return
        if self.model.impairment.order:
            arrival = self._last_arrival = max(arrival, self._last_arrival)
        heapq.heappush(self._pending, (arrival, self._offered, data, deliver))
        self._offered += 1
        if self._timer is None or arrival < self._timer.when():
            self._arm(arrival)

    def change(self, impairment: Impairment) -> None:
        """From now on, impair as `impairment` says (a link whose capacity changes: a phone moving, Wi-Fi
        contention); what is queued or in flight arrives as decided, and the bottleneck stays as busy."""
        self.model = Model(impairment, self.model.direction, self.model.departures)

    def close(self) -> None:
        """Drop what is still in flight, and whatever comes next."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending.clear()

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._flush)

    def _flush(self) -> None:
        self._timer = None
        now = self._loop.time()
        while self._pending and self._pending[0][0] <= now:
            _, number, data, deliver = heapq.heappop(self._pending)
            self.counters.delivered += 1
            if number < self._latest_delivered:
                self.counters.reordered += 1
            self._latest_delivered = max(self._latest_delivered, number)
            try:
                deliver(data)
            except Exception:
                logger.exception("an impaired datagram could not be delivered")
        if self._pending:
            self._arm(self._pending[0][0])


# --- the spec a command line or a test gives -------------------------------------------------------

_UNITS = {"k": 1e3, "m": 1e6, "g": 1e9}


def _number(text: str) -> float:
    text = text.strip().lower()
    if text and text[-1] in _UNITS:
        return float(text[:-1]) * _UNITS[text[-1]]
    return float(text)


def parse_spec(spec: str, base: Impairment = Impairment()) -> Impairments:
    """Both directions from "loss=5,jitter=30,seed=1"; `up.`/`down.` before a key sets one direction only.

    What the spec does not set is `base`'s.

    Keys are `Impairment`'s fields: loss and reorder in %, delay and jitter in ms, rate in
    bit/s (`500k`, `2m`), burst and queue in datagrams, order 0/1, seed an integer.
    """
    names = {f.name: f.type for f in fields(Impairment)}
    both: dict[str, Any] = {}
    one: dict[str, dict[str, Any]] = {"up": {}, "down": {}}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, sep, value = item.partition("=")
        direction, dot, name = key.strip().rpartition(".")
        if not sep or name not in names or (dot and direction not in one):
            raise ValueError(f"impairment: cannot read {item!r} (keys: {', '.join(names)}; up./down. for one way)")
        try:
            number = _number(value)
        except ValueError:
            raise ValueError(f"impairment: {item!r} is not a number") from None
        parsed = int(number) if name in ("queue", "seed") else bool(number) if name == "order" else number
        (one[direction] if dot else both)[name] = parsed
    base = replace(base, **both)
    return Impairments(replace(base, **one["up"]), replace(base, **one["down"]))


# --- a UDP relay, for a TURN server or any UDP service -----------------------------------------------


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.relay._from_client(data, addr)


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, client: RelayClient) -> None:
        self.client = client

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.client.down.send(data, self.client.to_client)


class RelayClient:
    """One client of the relay: its own socket towards the target, its own impaired directions."""

    def __init__(self, relay: Relay, address: Address, number: int) -> None:
        self.address = address
        assert relay._transport is not None
        self._listener = relay._transport
        self.upstream: asyncio.DatagramTransport | None = None
        # Each client its own generators, named after the order clients came in.
        self.up = Link(relay.impairments.up, f"client {number} up")
        self.down = Link(relay.impairments.down, f"client {number} down")
        #: What came before the socket towards the target was open.
        self.waiting: list[bytes] = []

    def to_client(self, data: bytes) -> None:
        if not self._listener.is_closing():
            self._listener.sendto(data, self.address)

    def to_target(self, data: bytes) -> None:
        if self.upstream is None:
            self.waiting.append(data)
        elif not self.upstream.is_closing():
            self.upstream.sendto(data)

    def close(self) -> None:
        self.up.close()
        self.down.close()
        if self.upstream is not None:
            self.upstream.close()


class Relay:
    """A UDP relay from `listen` to `target`, each client's directions impaired; `await Relay.start(...)`."""

    def __init__(self, target: Address, impairments: Impairments) -> None:
        self.target = target
        self.impairments = impairments
        self.clients: dict[Address, RelayClient] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._connecting: set[asyncio.Task[None]] = set()  # referenced until done (the loop keeps weak ones)

    @classmethod
    async def start(cls, target: Address, impairments: Impairments, listen: Address = ("127.0.0.1", 0)) -> Relay:
        relay = cls(target, impairments)
        loop = asyncio.get_running_loop()
        relay._transport, _ = await loop.create_datagram_endpoint(lambda: _Listener(relay), local_addr=listen)
        return relay

    @property
    def address(self) -> Address:
        assert self._transport is not None
        return self._transport.get_extra_info("sockname")

    def totals(self, direction: str) -> Counters:
        """The counters of one direction ("up" or "down") summed over the clients."""
        total = Counters()
        for client in self.clients.values():
            for name, value in vars(getattr(client, direction).counters).items():
                setattr(total, name, getattr(total, name) + value)
        return total

    def close(self) -> None:
        for task in self._connecting:
            task.cancel()
        for client in self.clients.values():
            client.close()
        self.clients.clear()
        if self._transport is not None:
            self._transport.close()

    def _from_client(self, data: bytes, addr: Address) -> None:
        client = self.clients.get(addr)
        if client is None:
            client = self.clients[addr] = RelayClient(self, addr, len(self.clients))
            task = asyncio.ensure_future(self._connect(client))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)
        client.up.send(data, client.to_target)

    async def _connect(self, client: RelayClient) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(lambda: _Upstream(client), remote_addr=self.target)
        except OSError as exc:
            logger.warning("relay: no socket towards %s for %s: %s", self.target, client.address, exc)
            return
        if self.clients.get(client.address) is not client:
            transport.close()  # the relay closed meanwhile
            return
        client.upstream = transport
        for data in client.waiting:
            transport.sendto(data)
        client.waiting.clear()


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return (host.strip("[]") or "127.0.0.1", int(port))


_HELP = {
    "loss": "%% of datagrams lost at random",
    "burst": "mean length of a loss burst, in datagrams (1: independent losses)",
    "delay": "one-way delay, ms",
    "jitter": "most random extra delay of a datagram, ms (datagrams then reorder unless --order)",
    "reorder": "%% of datagrams sent at once, ahead of the delayed ones",
    "rate": "bottleneck rate in bit/s, e.g. 1m (0: none)",
    "queue": "datagrams waiting for the rate before tail drop",
    "seed": "seeds the random generators",
}


def _impairment_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per `Impairment` field, for both directions."""
    parser.add_argument("--order", action="store_true", help="keep the order datagrams came in")
    for item in fields(Impairment):
        if item.name in _HELP:
            kind = int if item.name in ("queue", "seed") else _number
            parser.add_argument(
                f"--{item.name}", type=kind, default=item.default, help=f"{_HELP[item.name]} (default {item.default})"
            )
    parser.add_argument("--spec", default="", help='settings over those, as "up.loss=2,down.jitter=40" (parse_spec)')


async def _serve_relay(listen: Address, target: Address, impairments: Impairments) -> None:
    relay = await Relay.start(target, impairments, listen)
    print(f"relay {relay.address[0]}:{relay.address[1]} -> {target[0]}:{target[1]}: {impairments}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for direction in ("up", "down"):
            print(f"{direction}: {relay.totals(direction)}", flush=True)
        relay.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m client.impairment", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    relay = commands.add_parser("relay", help="a UDP relay whose two directions are impaired")
    relay.add_argument("--listen", default="127.0.0.1:3479", help="HOST:PORT the clients send to")
    relay.add_argument("--target", required=True, help="HOST:PORT forwarded to, e.g. coturn's listening port")
    _impairment_arguments(relay)
    args = parser.parse_args(argv)
    try:
        given = Impairment(**{f.name: getattr(args, f.name) for f in fields(Impairment)})
        impairments = parse_spec(args.spec, given)
        listen, target = _address(args.listen), _address(args.target)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_serve_relay(listen, target, impairments))


if __name__ == "__main__":
    main()
