"""The HTTP side of a WHEP or WHIP client: POST the offer, keep the resource it makes, DELETE it to end.

What the two have in common (mcu/server/sdp_resources.py is the server's side); what they do
with their peer connection is theirs (client/whep.py plays, client/whip.py publishes).
"""

from __future__ import annotations

from urllib.parse import urljoin, urlparse

import aiohttp

from signaling.ice import is_loopback_host, use_host_addresses

SDP = "application/sdp"


class SdpRefused(Exception):
    """The endpoint refused the offer: its HTTP status and its body."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status
        self.body = body


class SdpResource:
    """One session resource at an endpoint: `create` it with an offer, `close` to DELETE it."""

    def __init__(self, endpoint: str, token: str | None = None) -> None:
        self.endpoint = endpoint
        self.token = token
        #: The session's resource, once created (absolute URL), and the headers that came with it.
        self.resource: str | None = None
        self.etag: str | None = None
        self.links: list[str] = []
        self._session: aiohttp.ClientSession | None = None
        if is_loopback_host(urlparse(endpoint).hostname or ""):
            use_host_addresses(["127.0.0.1"])  # as `Peer`: a server on this machine is reached on loopback

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        return headers

    async def create(self, offer: str) -> str:
        """POST the offer; the answer (SdpRefused if the endpoint says no)."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._session.post(self.endpoint, data=offer, headers=self._headers(SDP)) as response:
            status, body = response.status, await response.text()
            if status == 201:
                self.resource = urljoin(self.endpoint, response.headers["Location"])
                self.etag = response.headers.get("ETag")
                self.links = response.headers.getall("Link", [])
        if status != 201:
            raise SdpRefused(status, body)
        return body

    async def delete(self) -> int:
        """DELETE the session's resource; the HTTP status (200 once, 404 after)."""
        assert self._session is not None and self.resource is not None
        async with self._session.delete(self.resource, headers=self._headers()) as response:
            return response.status

    async def close(self) -> None:
        """End the session on the server (DELETE), if it was made, and close the HTTP client."""
        if self._session is None:
            return
        if self.resource is not None:
            try:
                await self.delete()
            except aiohttp.ClientError:
                pass  # the server is gone: nothing left to end there
        await self._session.close()
