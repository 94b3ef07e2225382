"""What the WHEP and WHIP tests share: plain HTTP requests to the server, their status, body and headers."""

from __future__ import annotations

import aiohttp
from multidict import CIMultiDict

from client.sdp_resource import SDP


async def post(
    url: str, body: str, content_type: str = SDP, token: str | None = None
) -> tuple[int, str, CIMultiDict[str]]:
    headers = {"Content-Type": content_type, **({"Authorization": f"Bearer {token}"} if token else {})}
    async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers) as response:
        return response.status, await response.text(), response.headers.copy()


async def request(method: str, url: str, **kwargs) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.request(method, url, **kwargs) as response:
        return response.status, await response.text()
