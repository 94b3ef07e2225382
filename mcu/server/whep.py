"""WHEP (draft-ietf-wish-whep): any WebRTC player watches a room's composite and hears its whole mix.

`POST /whep/{room}` with a receive-only SDP offer makes a viewer of the room
(`Conference.watch`: one more sink of the room's shared encoders, no encode of its
own) and answers 201 with its resource, `/whep/{room}/{session}`; DELETE there ends
it. Tokens as for the HTTP API (`Authorization: Bearer`, the `subscribe` grant).
"""

from __future__ import annotations

from aiohttp import web

from mcu.server.api import CONFERENCE, authorize, error, room_or_404
from mcu.server.cors import add_cors
from mcu.server.sdp_resources import MEDIA, REFUSALS, SdpSessions, ice_server_links, preflight, read_offer
from signaling import grants, protocol

VIEWERS = web.AppKey("whep_viewers", SdpSessions)


def add_routes(app: web.Application) -> None:
    app[VIEWERS] = SdpSessions()
    app.router.add_post("/whep/{room}", _watch)
    app.router.add_route("OPTIONS", "/whep/{room}", preflight)
    app.router.add_delete("/whep/{room}/{session}", _end)
    app.router.add_patch("/whep/{room}/{session}", _trickle)
    app.router.add_route("OPTIONS", "/whep/{room}/{session}", preflight)
    add_cors(app, "/whep/")


async def _watch(request: web.Request) -> web.Response:
    room_name = request.match_info["room"]
    authorize(request, grants.SUBSCRIBE, room_name)
    room_or_404(request)
    conference = request.app[CONFERENCE]
    offer, parsed = await read_offer(request, conference.config.limits)
    receiving = [m for m in parsed.media if m.kind in MEDIA and m.direction in ("recvonly", "sendrecv")]
    if not receiving:
        raise error(
            web.HTTPBadRequest,
            protocol.INVALID_SDP,
            "The offer must have an audio or a video media section that receives (recvonly): "
            "a viewer is sent the room's composite and mix.",
        )
    sessions = request.app[VIEWERS]
    session_id = sessions.new_id()
    try:
        viewer, answer = await conference.watch(
            room_name,
            offer,
            tuple(sorted({m.kind for m in receiving})),
            request.query.get("tier"),
            lambda: sessions.forget(session_id),
        )
    except protocol.ProtocolError as exc:
        raise error(REFUSALS[exc.code], exc.code, exc.message) from None
    assert viewer.pc is not None
    session = sessions.add(session_id, viewer.pc, offer, answer, lambda: conference.unwatch(room_name, viewer.peer_id))
    links = ice_server_links(conference.config.ice_servers.for_user(viewer.peer_id))
    return sessions.created(session, f"/whep/{room_name}/{session_id}", answer, links)


async def _end(request: web.Request) -> web.Response:
    return await request.app[VIEWERS].delete(request)


async def _trickle(request: web.Request) -> web.Response:
    return await request.app[VIEWERS].patch(request)
