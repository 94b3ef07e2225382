"""Serving the rooms' live HLS (mcu/rooms/hls.py) under /hls/{room}/, to players and CDNs.

Playlists change every segment: `no-cache`, so that neither a browser nor a CDN
serves a stale window. A segment never changes once listed: cacheable. Any origin
may read them (hls.js on another site's page). They are public: whoever reaches
the server may watch a room whose HLS it writes (docs/operations.md).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

#: Content type and caching by file suffix; nothing else under the directory is served.
_FILES = {
    ".m3u8": ("application/vnd.apple.mpegurl", "no-cache"),
    ".ts": ("video/mp2t", "public, max-age=60"),
}


def add_hls(app: web.Application, directory: str) -> None:
    root = Path(directory).resolve()

    async def serve(request: web.Request) -> web.StreamResponse:
        room = request.match_info["room"]
        path = (root / room / request.match_info["path"]).resolve()
        kind = _FILES.get(path.suffix)
        if kind is None or not path.is_relative_to(root / room) or not path.is_file():
            raise web.HTTPNotFound(text="No such live file (the room is not live, or its segment has gone).")
        content_type, cache = kind
        headers = {"Content-Type": content_type, "Cache-Control": cache, "Access-Control-Allow-Origin": "*"}
        return web.FileResponse(path, headers=headers)

    app.router.add_get("/hls/{room}/{path:.+}", serve)
