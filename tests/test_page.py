"""The page at / and its files under /static/, served from the checkout's client/web."""

from __future__ import annotations

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
