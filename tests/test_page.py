"""The page at / and its files under /static/, served from the checkout's client/web."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp

WEB = Path(__file__).resolve().parent.parent / "client" / "web"


async def test_the_server_serves_the_page_and_its_files(server) -> None:
    base = f"http://127.0.0.1:{server.port}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        async with session.get(f"{base}/") as response:
            assert response.status == 200
            assert await response.text() == (WEB / "index.html").read_text()
        for name in ("app.js", "share.js", "style.css"):
            async with session.get(f"{base}/static/{name}") as response:
                assert response.status == 200
                assert await response.text() == (WEB / name).read_text()


async def test_every_module_the_page_imports_is_served(server) -> None:
    """The page is plain ES modules: each `import ... from "./x.js"` must resolve under /static/."""
    base = f"http://127.0.0.1:{server.port}/static"
    imported = {match for path in WEB.glob("*.js") for match in re.findall(r'from "\./([\w-]+\.js)"', path.read_text())}
    assert {"controls.js", "devices.js", "participants.js", "quality.js", "icons.js"} <= imported
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        for name in sorted(imported):
            async with session.get(f"{base}/{name}") as response:
                assert response.status == 200, name
                assert response.content_type in ("application/javascript", "text/javascript"), name
