"""CORS for the endpoints a page of another origin may call: WHEP's (a player on a CDN's page, say).

Its own module so that the front (mcu/server/front.py) gives its answers the same headers without
importing the media stack.
"""

from __future__ import annotations

from aiohttp import web

#: What a page on any origin may send and read.
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "OPTIONS, POST, PATCH, DELETE",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, ETag, Link, Accept-Patch",
    "Access-Control-Max-Age": "600",
}


def add_cors(app: web.Application, prefix: str) -> None:
    """Give every response under `prefix` (errors included) the CORS headers."""

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        if request.path.startswith(prefix):
            response.headers.update(CORS_HEADERS)

    app.on_response_prepare.append(on_prepare)
