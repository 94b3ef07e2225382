"""The HTTP application: signaling at /ws, WHEP at /whep, WHIP at /whip, the pages, health at /healthz."""

from __future__ import annotations

from aiohttp import web

from mcu.config import Config
from mcu.media.allocator import Trimmer
from mcu.media.video_pipeline import prepare_process
from mcu.rooms.conference import Conference
from mcu.server import api, whep, whip
from mcu.server.api import CONFERENCE
from mcu.server.hls import add_hls
from mcu.server.metrics import add_metrics
from mcu.server.page import add_page
from signaling.websocket import websocket_handler


def create_app(config: Config) -> web.Application:
    """An aiohttp application serving one in-process conference."""
    conference = Conference(config)
    if config.mode == "mcu":
        prepare_process()  # the first room's video process, started ahead of it
    app = web.Application()
    app[CONFERENCE] = conference
    app.router.add_get("/ws", websocket_handler(conference, config.limits))
    app.router.add_get("/healthz", _healthz)
    api.add_routes(app)
    whep.add_routes(app)
    whip.add_routes(app)
    add_metrics(app, conference)
    add_page(app)
    if config.hls_dir is not None:
        add_hls(app, config.hls_dir)

    async def close_conference(app: web.Application) -> None:
        await conference.close()

    app.on_shutdown.append(close_conference)
    app.cleanup_ctx.append(Trimmer().context)
    return app


async def _healthz(request: web.Request) -> web.Response:
    """The worker's rooms with their stats; `?brief` gives only each room's peers (a front asks every second)."""
    conference = request.app[CONFERENCE]
    if "brief" in request.query:
        rooms = {name: {"peers": len(room.participants)} for name, room in conference.rooms.items()}
    else:
        rooms = {name: room.stats() for name, room in conference.rooms.items()}
    peers = sum(room["peers"] for room in rooms.values())
    return web.json_response({"status": "ok", "peers": peers, "rooms": rooms})
