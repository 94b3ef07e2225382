"""The front: one HTTP/WebSocket address before media worker processes, and a node of a service.

A room lives in one worker process (`mcu serve` on a loopback port, the
in-process MCU of one core). The front reads a connection's first `join`, asks
the directory who owns the room (placing it if nobody does), then relays that
WebSocket's messages both ways to the owner's internal `/ws`. Media does not
pass here: the owner's answer carries its own ICE candidates, so RTP flows
between the client and the worker directly.

With Redis (`--redis`) the front is also a node: rooms are first placed on a
node (signaling/directory.py, RedisDirectory); a join reaching another node is
relayed to the owning node's front, which relays it to its worker. Proxying,
not redirecting: clients keep one URL (one TLS endpoint, one origin for the
page), at the cost of one hop for signaling messages only.

When an owner goes away (a worker dies, a node dies) its clients get an
`error` with code `reconnect` and the socket closes; they join again, and the
directory places the room on a live owner.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import aiohttp
from aiohttp import WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from mcu.config import Config
from mcu.server.api import error
from mcu.server.cors import add_cors
from mcu.server.hls import add_hls
from mcu.server.page import add_page
from mcu.server.workers import Worker, WorkerPool
from signaling import protocol
from signaling.directory import Directory, DirectoryUnavailable, Load, MemoryDirectory
from signaling.protocol import Join, ProtocolError

logger = logging.getLogger(__name__)

#: Set on the connections a front opens to an owner: a relayed join is never relayed again.
RELAYED_HEADER = "X-MCU-Relayed"
#: Request headers passed on to a worker, and the response headers of its answer passed back (WHEP's).
_REQUEST_HEADERS = {"authorization", "content-type", "if-match"}
_RESPONSE_HEADERS = {"location", "etag", "link", "accept-patch", "accept-post"}
#: A join waits at most this long for its owner to become reachable (a dead node's lease to expire).
ROUTE_SECONDS = 12.0
#: The lease of a room on one of this front's workers.
LOCAL_LEASE_SECONDS = 60.0
#: How often the front measures its workers, renews its leases and announces its load.
HEARTBEAT_SECONDS = 1.0
#: A room placed for an HTTP request (a WHIP publisher opening it) is held this long before its worker must list
#: it: a list asked for before the room opened does not release it.
PLACED_SECONDS = 10.0


class Front:
    """Routes each connection's join to the room's owner and relays its signaling."""

    def __init__(
        self, config: Config, pool: WorkerPool, cluster: Directory | None = None, advertise: str | None = None
    ) -> None:
        self.config = config
        self.pool = pool
        #: Rooms on this node's workers (the embedded directory). A worker's death is seen at once (its exit),
        #: so this lease only guards against a front that stops renewing: long, never splitting a live room.
        self.local: Directory = MemoryDirectory(lease=LOCAL_LEASE_SECONDS)
        #: Rooms on the service's nodes (Redis), if this front is a node of one.
        self.cluster = cluster
        self.advertise = advertise
        #: Connections relayed to this node's workers, by room.
        self.sessions: dict[str, int] = {}
        self.cluster_reachable = True
        #: The rooms this front holds the lease of, by worker: those with connections here, and those a worker
        #: hosts without any (kept open by WHIP publishers, WHEP viewers or streams).
        self._room_worker: dict[str, str] = {}
        #: The rooms each worker said it hosts when last asked, by worker.
        self._hosted: dict[str, str] = {}
        #: Rooms placed for an HTTP request, until when they are held without their worker listing them.
        self._placed: dict[str, float] = {}
        #: Owners (nodes) this front could not reach lately: not chosen for a new room until their lease is over.
        self._unreachable: dict[str, float] = {}
        self._releasing: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        self._http = aiohttp.ClientSession()
        await self.pool.start()
        await self._beat()
        self._heartbeat = asyncio.ensure_future(self._beat_forever())

    async def close(self) -> None:
        self._closing = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        await self.pool.stop()
        if self.cluster is not None:
            try:
                for room in list(self._room_worker):
                    await self.cluster.release(room, self.advertise)  # type: ignore[arg-type]
                await self.cluster.withdraw(self.advertise)  # type: ignore[arg-type]
            except DirectoryUnavailable:
                pass
            await self.cluster.close()
        if self._http is not None:
            await self._http.close()

    # --- routing ---------------------------------------------------------------------------

    async def route(self, room: str, relayed: bool) -> tuple[str, bool]:
        """The URL to relay `room`'s join to, and whether it is one of this node's workers."""
        if self.cluster is not None:
            try:
                owner = await self.cluster.owner(room)
                if owner is None:
                    now = time.monotonic()
                    live = [c for c in await self.cluster.owners() if self._unreachable.get(c.url, 0) < now]
                    owner = await self.cluster.place(room, live, prefer=self.advertise)
            except DirectoryUnavailable:
                if room not in self._room_worker:
                    raise
                owner = self.advertise  # a room in progress here goes on without the directory
            if owner != self.advertise:
                if relayed:
                    raise ProtocolError(protocol.RECONNECT, "The room moved while joining; join again.")
                return owner, False  # type: ignore[return-value]
        url = await self.local.owner(room)
        if url is None or self.pool.by_url(url) is None:
            if url is not None:
                await self.local.release(room, url)  # a worker that died: its exit is being handled
            await self._announce_workers()
            url = await self.local.place(room, await self.local.owners())
        return url, True

    def _loads(self) -> list[Load]:
        loads = []
        for worker in self.pool.live():
            rooms = [r for r, url in self._room_worker.items() if url == worker.url]
            loads.append(Load(worker.url, sum(self.sessions.get(r, 0) for r in rooms), len(rooms), worker.cpu))
        return loads

    async def _announce_workers(self) -> None:
        for load in self._loads():
            await self.local.announce(load)

    def _enter(self, room: str, worker_url: str) -> None:
        self._room_worker[room] = worker_url
        self.sessions[room] = self.sessions.get(room, 0) + 1

    def _leave(self, room: str) -> None:
        """One connection fewer; the room's lease goes at the next heartbeat if its worker no longer hosts it."""
        self.sessions[room] -= 1
        if self.sessions[room] == 0:
            del self.sessions[room]

    async def _reconcile(self) -> None:
        """Hold the lease of every room a worker hosts, and let go of the rooms nothing holds any more.

        A room outlives its last WebSocket while a WHIP publisher, a WHEP viewer or a stream keeps it open: its
        lease stays, so that the next join goes to it rather than opening the room a second time elsewhere.
        """
        for health in await self.pool.health(brief=True):
            if health["status"] != "ok":
                continue  # a busy worker keeps what it held; a dead one's exit is handled apart
            self._hosted = {r: url for r, url in self._hosted.items() if url != health["url"]}
            self._hosted.update((room, health["url"]) for room in health["rooms"])
        for room, url in self._hosted.items():
            self._room_worker.setdefault(room, url)
        now = time.monotonic()
        for room, url in list(self._room_worker.items()):
            if room in self.sessions or room in self._hosted or self._placed.get(room, 0.0) > now:
                continue
            del self._room_worker[room]
            self._placed.pop(room, None)
            task = asyncio.ensure_future(self._release(room, url))
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)

    async def _release(self, room: str, worker: str) -> None:
        if room in self._room_worker:  # held again meanwhile
            return
        await self.local.release(room, worker)
        if self.cluster is not None:
            try:
                await self.cluster.release(room, self.advertise)  # type: ignore[arg-type]
            except DirectoryUnavailable:
                pass  # its lease expires by itself

    async def worker_exited(self, worker: Worker) -> None:
        """Its rooms are free at once: the clients' next joins place them on a live worker."""
        await self.local.withdraw(worker.url)
        self._room_worker = {r: w for r, w in self._room_worker.items() if w != worker.url}
        self._hosted = {r: w for r, w in self._hosted.items() if w != worker.url}
        self._placed = {r: t for r, t in self._placed.items() if r in self._room_worker}

    # --- heartbeat -------------------------------------------------------------------------

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self._beat()
            except Exception:
                logger.exception("heartbeat failed")

    async def _beat(self) -> None:
        """Measure the workers, renew this node's leases and say what it carries."""
        for worker in self.pool.live():
            worker.measure()
        await self._reconcile()
        await self._announce_workers()
        for url in set(self._room_worker.values()):
            await self.local.renew([r for r, w in self._room_worker.items() if w == url], url)
        if self.cluster is None:
            return
        loads = self._loads()
        node = Load(
            self.advertise,  # type: ignore[arg-type]
            sum(x.peers for x in loads),
            sum(x.rooms for x in loads),
            round(sum(x.cpu for x in loads), 3),
        )
        try:
            await self.cluster.announce(node)
            lost = await self.cluster.renew(list(self._room_worker), self.advertise)  # type: ignore[arg-type]
        except DirectoryUnavailable as exc:
            if self.cluster_reachable:
                logger.error("%s: rooms in progress go on, new rooms are refused", exc)
            self.cluster_reachable = False
            return
        if not self.cluster_reachable:
            logger.warning("the room directory (Redis) is back")
        self.cluster_reachable = True
        for room in lost:
            logger.error("room %s: another node took it while the directory was unreachable", room)

    # --- the WebSocket endpoint -----------------------------------------------------------

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        limits = self.config.limits
        ws = web.WebSocketResponse(heartbeat=20, max_msg_size=4 * limits.max_message_bytes)
        await ws.prepare(request)
        relayed = RELAYED_HEADER in request.headers
        deadline = time.monotonic() + limits.join_timeout
        while not ws.closed:
            try:
                msg = await ws.receive(timeout=max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                await self._send(
                    ws,
                    protocol.error(
                        protocol.JOIN_TIMEOUT, f"No join within {limits.join_timeout:g} seconds of connecting: closing."
                    ),
                )
                break
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                break
            try:
                message = protocol.parse_client_message(msg.data, limits.max_message_bytes)
                if not isinstance(message, Join):
                    raise ProtocolError(protocol.NOT_JOINED, "Join a room before sending this message.")
                lost = await self._join(ws, message, msg.data, relayed)
            except ProtocolError as exc:
                await self._send(ws, protocol.error(exc.code, exc.message))
                continue
            except DirectoryUnavailable as exc:
                await self._send(ws, protocol.error(protocol.DIRECTORY_UNAVAILABLE, str(exc)))
                continue
            if lost and not self._closing:
                await self._send(
                    ws,
                    protocol.error(
                        protocol.RECONNECT, "The room's media server went away; join again to get the room back."
                    ),
                )
            break
        await ws.close()
        return ws

    async def _join(self, ws: web.WebSocketResponse, join: Join, first: str | bytes, relayed: bool) -> bool:
        """Relay this connection to the room's owner until either side closes; True if the owner was lost."""
        deadline = time.monotonic() + ROUTE_SECONDS
        while True:
            url, local = await self.route(join.room, relayed)
            try:
                assert self._http is not None
                upstream = await self._http.ws_connect(url, headers={RELAYED_HEADER: "1"}, max_msg_size=0, heartbeat=20)
                break
            except (aiohttp.ClientError, OSError) as exc:
                # A worker just died (its exit is being handled) or a dead node still holds the lease.
                if time.monotonic() > deadline:
                    raise ProtocolError(protocol.RECONNECT, "The room's media server cannot be reached; join again.")
                logger.warning("room %s: owner %s unreachable (%s); waiting for the directory", join.room, url, exc)
                if not local and self.cluster is not None:
                    self._unreachable[url] = time.monotonic() + self.cluster.lease
                await asyncio.sleep(0.5)
        if local:
            self._enter(join.room, url)
        try:
            await (upstream.send_str(first) if isinstance(first, str) else upstream.send_bytes(first))
            return await _relay(ws, upstream)
        finally:
            await upstream.close()
            if local:
                self._leave(join.room)

    @staticmethod
    async def _send(ws: web.WebSocketResponse, message: dict) -> None:
        try:
            await ws.send_json(message)
        except (ConnectionError, RuntimeError):
            pass

    # --- the HTTP API, served by the room's owner ---------------------------------------

    async def api_room(self, request: web.Request) -> web.StreamResponse:
        """/api/rooms/{room}/..., /whep/{room}/... and /whip/{room}/...: forwarded to the worker (or node) hosting
        the room, which authorizes it.

        A WHIP publisher may open a room: one hosted nowhere is placed as a join places it. Any other request
        for a room hosted nowhere goes to any worker: it checks the token first, then says 404.
        """
        room = request.match_info["room"]
        base = None
        url = await self.local.owner(room)
        if url is None and request.method == "POST" and request.path == f"/whip/{room}":
            url = await self._place(room, RELAYED_HEADER in request.headers)
            if self.pool.by_url(url) is None:
                base = _http_base(url)  # another node's
        elif url is None and self.cluster is not None:
            try:
                owner = await self.cluster.owner(room)
            except DirectoryUnavailable:
                owner = None
            if owner not in (None, self.advertise) and RELAYED_HEADER not in request.headers:
                base = _http_base(owner)
        if base is None:
            worker = self.pool.by_url(url) if url else None
            live = self.pool.live()
            if worker is None and not live:
                raise web.HTTPServiceUnavailable(text="no worker is running")
            base = _http_base((worker or live[0]).url)
        status, body, content_type, headers = await self._forward(request, base)
        response = web.Response(status=status, body=body or None, content_type=content_type if body else None)
        response.headers.extend(headers)
        return response

    async def _place(self, room: str, relayed: bool) -> str:
        """Where a request that opens `room` goes: placed as a join is; held until its worker lists the room."""
        try:
            url, local = await self.route(room, relayed)
        except DirectoryUnavailable as exc:
            raise error(web.HTTPServiceUnavailable, protocol.DIRECTORY_UNAVAILABLE, str(exc)) from None
        except ProtocolError as exc:
            raise error(web.HTTPServiceUnavailable, exc.code, exc.message) from None
        if local:
            self._room_worker.setdefault(room, url)
            self._placed[room] = time.monotonic() + PLACED_SECONDS
        return url

    async def api_rooms(self, request: web.Request) -> web.Response:
        """GET /api/rooms: every room of this node's workers (each worker authorizes the request)."""
        rooms = []
        for worker in self.pool.live():
            status, body, content_type, _ = await self._forward(request, _http_base(worker.url))
            if status != 200:
                return web.Response(status=status, body=body, content_type=content_type)
            rooms += json.loads(body)["rooms"]
        return web.json_response({"rooms": rooms})

    async def _forward(self, request: web.Request, base: str) -> tuple[int, bytes, str, list[tuple[str, str]]]:
        """The worker's status, body, content type and the response headers of _RESPONSE_HEADERS."""
        assert self._http is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() in _REQUEST_HEADERS}
        headers[RELAYED_HEADER] = "1"
        async with self._http.request(
            request.method,
            base + request.rel_url.path_qs,
            headers=headers,
            data=await request.read(),
            timeout=aiohttp.ClientTimeout(10),
        ) as response:
            kept = [(k, v) for k, v in response.headers.items() if k.lower() in _RESPONSE_HEADERS]
            return response.status, await response.read(), response.content_type, kept

    async def metrics(self, request: web.Request) -> web.Response:
        """/metrics: every worker's metrics in one scrape, each sample labelled with its worker's index."""
        assert self._http is not None
        texts: dict[int, str] = {}
        for worker in self.pool.live():
            try:
                async with self._http.get(
                    f"{_http_base(worker.url)}/metrics", timeout=aiohttp.ClientTimeout(5)
                ) as response:
                    texts[worker.index] = await response.text()
            except (aiohttp.ClientError, asyncio.TimeoutError):
                logger.warning("worker %d: no metrics", worker.index)
        return web.Response(body=merge_metrics(texts), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        workers = await self.pool.health()
        rooms = {name: {**stats, "worker": w["index"]} for w in workers for name, stats in w["rooms"].items()}
        return web.json_response(
            {
                "status": "ok",
                "peers": sum(w["peers"] for w in workers),
                "rooms": rooms,
                "workers": [{k: w[k] for k in ("index", "pid", "port", "status", "peers")} for w in workers],
                "restarts": self.pool.restarts,
                "node": self.advertise,
                "directory": None if self.cluster is None else ("ok" if self.cluster_reachable else "unreachable"),
            }
        )


async def _relay(client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse) -> bool:
    """Copy messages both ways until one side closes; True if the upstream went away uncleanly."""

    async def down() -> None:
        async for msg in upstream:
            if msg.type != WSMsgType.TEXT:
                break
            await client.send_str(msg.data)

    async def up() -> None:
        async for msg in client:
            if msg.type == WSMsgType.TEXT:
                await upstream.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await upstream.send_bytes(msg.data)
            else:
                break

    tasks = {asyncio.ensure_future(down()): "down", asyncio.ensure_future(up()): "up"}
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    first = next(iter(done))
    if tasks[first] == "up" or client.closed:
        return False
    # The owner closed: a clean close (join_timeout, server_shutdown) is passed on; a lost one asks to reconnect.
    return upstream.close_code not in (1000, 1001)


def merge_metrics(texts: dict[int, str]) -> bytes:
    """Prometheus text expositions of several workers as one, with a `worker` label on every sample."""
    families: dict[str, Metric] = {}
    for index, text in texts.items():
        for family in text_string_to_metric_families(text):
            merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            for sample in family.samples:
                merged.add_sample(sample.name, {**sample.labels, "worker": str(index)}, sample.value, sample.timestamp)

    class Gathered:
        def collect(self):
            return iter(families.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Gathered())
    return generate_latest(registry)


def _http_base(ws_url: str) -> str:
    """http(s)://host:port of a signaling URL ws(s)://host:port/ws."""
    scheme, rest = ws_url.split("://", 1)
    return f"{'https' if scheme == 'wss' else 'http'}://{rest.split('/', 1)[0]}"


def create_front_app(
    config: Config, argv: list[str], workers: int, cluster: Directory | None = None, advertise: str | None = None
) -> web.Application:
    """The front's application: /ws relayed to the workers (and nodes), /healthz over all of them, the page."""
    app = web.Application()
    front: Front  # the pool's callback reaches it once it exists
    front = Front(config, WorkerPool(argv, workers, lambda worker: front.worker_exited(worker)), cluster, advertise)
    app.router.add_get("/ws", front.handle)
    app.router.add_get("/healthz", front.healthz)
    app.router.add_get("/api/rooms", front.api_rooms)
    app.router.add_get("/metrics", front.metrics)
    app.router.add_route("*", "/api/rooms/{room}{tail:(/.*)?}", front.api_room)
    app.router.add_route("*", "/whep/{room}{tail:(/.*)?}", front.api_room)
    app.router.add_route("*", "/whip/{room}{tail:(/.*)?}", front.api_room)
    add_cors(app, "/whep/")
    add_cors(app, "/whip/")
    if config.hls_dir is not None:
        add_hls(app, config.hls_dir)  # every worker writes its rooms' HLS in the same directory

    add_page(app)

    async def start(app: web.Application) -> None:
        await front.start()

    async def stop(app: web.Application) -> None:
        await front.close()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    return app
