"""WHIP (RFC 9725): any WebRTC encoder (OBS Studio, GStreamer, a page) publishes into a room.

`POST /whip/{room}` with a send-only SDP offer makes a participant of the room
(`Conference.publish`: a tile and a voice, nothing sent back), opening the room as a join
would, and answers 201 with its resource, `/whip/{room}/{session}`; DELETE there ends it.
Tokens as for the HTTP API (`Authorization: Bearer`, the `publish` grant). Its name: `?name=`
(checked as a join's), else the token's identity, else "WHIP".
"""

from __future__ import annotations

from aiohttp import web
from aiortc.sdp import SessionDescription

from mcu.rooms.conference import PUBLISHER_NAME
from mcu.server.api import CONFERENCE, authorize, error
from mcu.server.cors import add_cors
from mcu.server.sdp_resources import MEDIA, REFUSALS, SdpSessions, ice_server_links, preflight, read_offer
from signaling import grants, protocol, tokens

PUBLISHERS = web.AppKey("whip_publishers", SdpSessions)


def add_routes(app: web.Application) -> None:
    app[PUBLISHERS] = SdpSessions()
    app.router.add_post("/whip/{room}", _publish)
    app.router.add_route("OPTIONS", "/whip/{room}", preflight)
    app.router.add_delete("/whip/{room}/{session}", _end)
    app.router.add_patch("/whip/{room}/{session}", _trickle)
    app.router.add_route("OPTIONS", "/whip/{room}/{session}", preflight)
    add_cors(app, "/whip/")


def publisher_name(query: str | None, claims: tokens.Claims | None) -> str:
    """What its tile says: `?name=` as a join's name is checked, else who its token is for, else "WHIP"."""
    if query is not None:
        return protocol.check_name(query)
    if claims is not None:
        try:
            return protocol.check_name(claims.identity)
        except protocol.ProtocolError:
            pass  # an identity that is no name to show (too long, control characters): the tile says WHIP
    return PUBLISHER_NAME


def sent_kinds(offer: SessionDescription) -> tuple[str, ...]:
    """The kinds an offer publishes; ProtocolError unless each of its audio and video sections sends, one a kind."""
    media = [m for m in offer.media if m.kind in MEDIA]
    if not media:
        raise protocol.ProtocolError(
            protocol.INVALID_SDP,
            "The offer must have an audio or a video media section that sends (sendonly): "
            "a publisher's camera and microphone.",
        )
    if any(m.direction not in ("sendonly", "sendrecv") for m in media):
        raise protocol.ProtocolError(
            protocol.INVALID_SDP, "A WHIP offer sends: each audio and video section must be sendonly."
        )
    kinds = [m.kind for m in media]
    if len(set(kinds)) != len(kinds):
        raise protocol.ProtocolError(protocol.INVALID_SDP, "A publisher sends one audio and one video section at most.")
    return tuple(sorted(kinds))


async def _publish(request: web.Request) -> web.Response:
    room_name = request.match_info["room"]
    claims = authorize(request, grants.PUBLISH, room_name)
    conference = request.app[CONFERENCE]
    try:
        protocol.check_room(room_name)
        name = publisher_name(request.query.get("name"), claims)
    except protocol.ProtocolError as exc:
        raise error(REFUSALS[exc.code], exc.code, exc.message) from None
    offer, parsed = await read_offer(request, conference.config.limits)
    sessions = request.app[PUBLISHERS]
    session_id = sessions.new_id()
    try:
        publisher, answer = await conference.publish(
            room_name, name, claims, offer, sent_kinds(parsed), lambda: sessions.forget(session_id)
        )
    except protocol.ProtocolError as exc:
        raise error(REFUSALS[exc.code], exc.code, exc.message) from None
    assert publisher.pc is not None
    session = sessions.add(session_id, publisher.pc, offer, answer, lambda: conference.end_publisher(publisher.peer_id))
    links = ice_server_links(conference.config.ice_servers.for_user(publisher.peer_id))
    return sessions.created(session, f"/whip/{room_name}/{session_id}", answer, links)


async def _end(request: web.Request) -> web.Response:
    return await request.app[PUBLISHERS].delete(request)


async def _trickle(request: web.Request) -> web.Response:
    return await request.app[PUBLISHERS].patch(request)
