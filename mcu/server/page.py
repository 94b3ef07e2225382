"""The web client's page: web/ inside the `client` package, wherever that package is installed.

Found through the import system rather than from this file's path, so that a checkout, an
editable install and an installed wheel (where client/web is package data) serve the same page.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from aiohttp import web


def find_web_root() -> Path | None:
    """The folder holding index.html and its scripts, or None where the client is not installed."""
    spec = find_spec("client")
    # `client` is a namespace package: its search locations may also hold an editable install's
    # placeholder, which is no folder.
    for location in (spec.submodule_search_locations or []) if spec else []:
        root = Path(location) / "web"
        if (root / "index.html").is_file():
            return root
    return None


WEB_ROOT = find_web_root()


def add_page(app: web.Application) -> None:
    """Serve the page at /, the watch page at /watch/{room}, and their files under /static/ (a 404 that says
    why where they are missing)."""
    app.router.add_get("/", _index)
    app.router.add_get("/watch/{room}", _watch)
    if WEB_ROOT is not None:
        app.router.add_static("/static/", WEB_ROOT)


async def _index(request: web.Request) -> web.StreamResponse:
    if WEB_ROOT is None:
        raise web.HTTPNotFound(text="The web client is not installed.")
    return web.FileResponse(WEB_ROOT / "index.html")


async def _watch(request: web.Request) -> web.StreamResponse:
    """A player of one room's composite over WHEP (watch.js reads the room from the path)."""
    if WEB_ROOT is None:
        raise web.HTTPNotFound(text="The web client is not installed.")
    return web.FileResponse(WEB_ROOT / "watch.html")
