"""HTTP sessions made by POSTing an SDP offer, as WHEP (and WHIP) define them.

A POST of `application/sdp` creates a session resource; its URL comes back in
`Location`, its ICE session in `ETag`, the ICE servers in `Link` headers. PATCH
with `application/trickle-ice-sdpfrag` trickles the client's candidates (RFC 8840),
DELETE ends it. What a session does with its media is the caller's: here is only
what the HTTP exchange needs, shared by WHEP egress (whep.py) and WHIP ingest (whip.py).
"""

from __future__ import annotations

import inspect
import re
import secrets
from dataclasses import dataclass
from typing import Any, Callable

from aiohttp import web
from aiortc import RTCIceCandidate, RTCPeerConnection
from aiortc.sdp import SessionDescription, candidate_from_sdp

from mcu.server.api import error
from signaling import protocol
from signaling.ice import is_turn_url
from signaling.limits import Limits

SDP = "application/sdp"
TRICKLE = "application/trickle-ice-sdpfrag"

#: The most a trickle PATCH may carry: a fragment has a few candidates (each one more pair for ICE to check).
MAX_FRAGMENT_BYTES = 16 * 1024

_UFRAG_RE = re.compile(r"^a=ice-ufrag:(\S+)", re.MULTILINE)

#: The mid of the media section a fragment's candidates belong to, and each candidate line's value.
_FRAGMENT_LINE_RE = re.compile(r"^a=(mid|candidate|end-of-candidates)(?::(.*))?$")


#: The HTTP status of each code a WHEP or WHIP resource's creation may be refused with.
REFUSALS: dict[str, type[web.HTTPException]] = {
    protocol.ROOM_NOT_FOUND: web.HTTPNotFound,
    protocol.INVALID_ROOM: web.HTTPBadRequest,
    protocol.INVALID_NAME: web.HTTPBadRequest,
    protocol.UNKNOWN_TIER: web.HTTPBadRequest,
    protocol.INVALID_SDP: web.HTTPBadRequest,
    protocol.BANNED: web.HTTPForbidden,
    protocol.WRONG_MODE: web.HTTPConflict,
    protocol.TOO_MANY_ROOMS: web.HTTPServiceUnavailable,
    protocol.ROOM_FULL: web.HTTPServiceUnavailable,
}
#: The media sections a WHEP or WHIP offer may carry: the composite and the mix, a camera and a microphone.
MEDIA = ("audio", "video")


def too_large(code: str, message: str, limit: int, size: int) -> web.HTTPException:
    """A 413 whose body is a signaling-style `error`, as `api.error` makes the others."""
    body = web.json_response(protocol.error(code, message)).text
    return web.HTTPRequestEntityTooLarge(limit, size, text=body, content_type="application/json")


async def preflight(request: web.Request) -> web.Response:
    """OPTIONS: what the resource accepts (and, through `add_cors`, the CORS preflight's answer)."""
    return web.Response(status=204, headers={"Accept-Post": SDP, "Accept-Patch": TRICKLE})


async def read_offer(request: web.Request, limits: Limits) -> tuple[str, SessionDescription]:
    """The request's SDP offer, parsed; 415 for another content type, 400 or 413 for a bad offer."""
    if request.content_type != SDP:
        raise error(web.HTTPUnsupportedMediaType, protocol.INVALID_SDP, f"Send the offer as {SDP}.")
    raw = await request.read()
    try:
        sdp = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise error(web.HTTPBadRequest, protocol.INVALID_SDP, "The offer is not UTF-8 text.") from None
    try:
        limits.check_offer(sdp)
    except protocol.ProtocolError as exc:
        if exc.code == protocol.SDP_TOO_LARGE:
            raise too_large(exc.code, exc.message, limits.max_sdp_bytes, len(raw)) from None
        raise error(web.HTTPBadRequest, exc.code, exc.message) from None
    if not sdp.startswith("v=0"):
        raise error(web.HTTPBadRequest, protocol.INVALID_SDP, 'The offer is not SDP: it must start with "v=0".')
    try:
        return sdp, SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser raises what it meets, asserts included, on malformed lines
        raise error(web.HTTPBadRequest, protocol.INVALID_SDP, f"The offer could not be parsed: {exc!r}") from None


def ice_server_links(ice_servers: list[dict[str, Any]]) -> list[str]:
    """`Link` header values for the ICE servers a client is handed (draft-ietf-wish-whep, RFC 9725 4.6)."""
    links = []
    for server in ice_servers:
        for url in server["urls"]:
            link = f'<{url}>; rel="ice-server"'
            if is_turn_url(url):
                link += f'; username="{server["username"]}"; credential="{server["credential"]}"'
                link += '; credential-type="password"'
            links.append(link)
    return links


def ice_ufrag(sdp: str) -> str | None:
    """The first ICE username fragment of an SDP description or fragment: what names its ICE session."""
    match = _UFRAG_RE.search(sdp)
    return match.group(1).strip() if match else None


@dataclass
class SdpSession:
    """One live session resource: its peer connection, the client's ICE session, and how to end it."""

    id: str
    pc: RTCPeerConnection
    #: The client's ICE username fragment: a fragment naming another one asks for an ICE restart.
    remote_ufrag: str | None
    #: The entity tag of the server's ICE session (its answer's username fragment).
    etag: str
    #: Ends what the session runs (now, or in the awaitable it returns).
    end: Callable[[], object]


class SdpSessions:
    """The live sessions of one kind (WHEP viewers, WHIP publishers), by resource id: unguessable, a capability."""

    def __init__(self) -> None:
        self.sessions: dict[str, SdpSession] = {}

    @staticmethod
    def new_id() -> str:
        return secrets.token_urlsafe(16)

    def add(
        self, session_id: str, pc: RTCPeerConnection, offer: str, answer: str, end: Callable[[], object]
    ) -> SdpSession:
        session = SdpSession(session_id, pc, ice_ufrag(offer), f'"{ice_ufrag(answer) or session_id}"', end)
        self.sessions[session_id] = session
        return session

    def forget(self, session_id: str) -> None:
        self.sessions.pop(session_id, None)

    def created(self, session: SdpSession, location: str, answer: str, links: list[str]) -> web.Response:
        """201 Created: the answer, where the session lives, its ICE session and the ICE servers."""
        response = web.Response(status=201, body=answer.encode(), content_type=SDP)
        response.headers["Location"] = location
        response.headers["ETag"] = session.etag
        response.headers["Accept-Patch"] = TRICKLE
        for link in links:
            response.headers.add("Link", link)
        return response

    def get_or_404(self, request: web.Request) -> SdpSession:
        session = self.sessions.get(request.match_info["session"])
        if session is None:
            raise error(
                web.HTTPNotFound, protocol.SESSION_NOT_FOUND, "There is no such session (it ended, or never was)."
            )
        return session

    async def delete(self, request: web.Request) -> web.Response:
        """DELETE: end the session; a second DELETE finds nothing (404)."""
        session = self.get_or_404(request)
        self.forget(session.id)
        ended = session.end()
        if inspect.isawaitable(ended):
            await ended
        return web.Response(status=200)

    async def patch(self, request: web.Request) -> web.Response:
        """PATCH: the client's trickled candidates (RFC 8840 fragment), 204 once added.

        An ICE restart (another ufrag, or `If-Match: *`) is refused with 422: aiortc cannot restart ICE.
        """
        session = self.get_or_404(request)
        if request.content_type != TRICKLE:
            raise error(web.HTTPUnsupportedMediaType, protocol.INVALID_CANDIDATE, f"Send candidates as {TRICKLE}.")
        match = request.headers.get("If-Match")
        if match == "*":
            raise error(web.HTTPUnprocessableEntity, protocol.INVALID_CANDIDATE, "ICE restarts are not supported.")
        if match is not None and match != session.etag:
            raise error(web.HTTPPreconditionFailed, protocol.INVALID_CANDIDATE, "That is not the current ICE session.")
        raw = await request.read()
        if len(raw) > MAX_FRAGMENT_BYTES:
            message = f"A fragment is at most {MAX_FRAGMENT_BYTES} bytes."
            raise too_large(protocol.INVALID_CANDIDATE, message, MAX_FRAGMENT_BYTES, len(raw))
        fragment = raw.decode("utf-8", "replace")
        ufrag = ice_ufrag(fragment)
        if ufrag is not None and ufrag != session.remote_ufrag:
            raise error(web.HTTPUnprocessableEntity, protocol.INVALID_CANDIDATE, "ICE restarts are not supported.")
        try:
            for candidate in parse_fragment(fragment):
                await session.pc.addIceCandidate(candidate)
        except ValueError as exc:
            raise error(web.HTTPBadRequest, protocol.INVALID_CANDIDATE, f"A candidate was refused: {exc}") from None
        return web.Response(status=204)


def parse_fragment(fragment: str) -> list[RTCIceCandidate | None]:
    """The candidates of a trickle-ice-sdpfrag, each with the mid of its section; None for end-of-candidates.

    :raises ValueError: a candidate line aiortc cannot read.
    """
    candidates: list[RTCIceCandidate | None] = []
    mid: str | None = None
    for line in fragment.splitlines():
        found = _FRAGMENT_LINE_RE.match(line.strip())
        if found is None:
            continue
        name, value = found.groups()
        if name == "mid":
            mid = (value or "").strip()
        elif name == "end-of-candidates":
            candidates.append(None)
        else:
            text = f"candidate:{(value or '').strip()}"
            if not protocol.is_candidate_line(text):
                raise ValueError(f"not an ICE candidate line: {text[:80]!r}")
            candidate = candidate_from_sdp(text.removeprefix("candidate:"))
            candidate.sdpMid = mid
            if mid is None:
                candidate.sdpMLineIndex = 0
            candidates.append(candidate)
    return candidates
