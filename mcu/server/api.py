"""The HTTP API under /api: what operators and their tools do to rooms without joining them.

Every handler names the grant it needs (signaling/grants.py); `authorize`
checks it. Errors are JSON bodies shaped like signaling's `error` message
(`{"type": "error", "code", "message"}`) with a fitting HTTP status.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mcu.rooms.conference import Conference
from mcu.rooms.room import Room
from signaling import protocol, tokens

CONFERENCE = web.AppKey("conference", Conference)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/rooms", _rooms)
    app.router.add_get("/api/rooms/{room}", _room)
    app.router.add_get("/api/rooms/{room}/layout", _get_layout)
    app.router.add_put("/api/rooms/{room}/layout", _put_layout)
    app.router.add_patch("/api/rooms/{room}/participants/{peerId}", _moderate_participant)
    app.router.add_delete("/api/rooms/{room}/participants/{peerId}", _kick_participant)
    app.router.add_post("/api/rooms/{room}/recording", _start_recording)
    app.router.add_delete("/api/rooms/{room}/recording", _stop_recording)
    app.router.add_get("/api/rooms/{room}/streams", _streams)
    app.router.add_post("/api/rooms/{room}/streams", _start_stream)
    app.router.add_delete("/api/rooms/{room}/streams/{id}", _stop_stream)


def error(status: type[web.HTTPException], code: str, message: str) -> web.HTTPException:
    """An HTTP error whose body is a signaling-style `error` message."""
    return status(text=web.json_response(protocol.error(code, message)).text, content_type="application/json")


def authorize(request: web.Request, grant: str, room: str | None = None) -> tokens.Claims | None:
    """Allow the request if it may use `grant` (in `room`); raise 401/403 otherwise. Its token's claims
    (None without a server secret): who it is, for a WHIP publisher's name.

    With a server secret the request carries a token (`Authorization: Bearer
    <token>`) for that room, or for every room (room claim "*"), holding the
    grant. Without one every caller holds every grant, like every peer.
    """
    secret = request.app[CONFERENCE].config.secret
    if secret is None:
        return None
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise error(web.HTTPUnauthorized, protocol.UNAUTHORIZED, "Send a token: Authorization: Bearer <token>.")
    try:
        claims = tokens.verify(secret, token.strip(), room)
    except tokens.TokenError as exc:
        raise error(web.HTTPUnauthorized, protocol.UNAUTHORIZED, str(exc)) from None
    if room is None and claims.room != tokens.ANY_ROOM:
        raise error(web.HTTPForbidden, protocol.FORBIDDEN, 'This needs a token for every room (room "*").')
    if grant not in claims.grants:
        raise error(web.HTTPForbidden, protocol.FORBIDDEN, f"The token does not grant {grant!r}.")
    return claims


def room_or_404(request: web.Request) -> Room:
    room = request.app[CONFERENCE].rooms.get(request.match_info["room"])
    if room is None:
        raise error(web.HTTPNotFound, protocol.ROOM_NOT_FOUND, "There is no such room.")
    return room


async def json_body(request: web.Request) -> Any:
    """The request's JSON body, or a 400 `invalid_json`."""
    try:
        return await request.json()
    except ValueError:
        raise error(web.HTTPBadRequest, protocol.INVALID_JSON, "The body is not valid JSON.") from None


async def _moderate_participant(request: web.Request) -> web.Response:
    """Mute/unmute a participant or set its volume: the body is `{"muted": bool, "volume": 0..2}` (either or both)."""
    authorize(request, "moderate", request.match_info["room"])
    room = room_or_404(request)
    target = room.participants.get(request.match_info["peerId"])
    if target is None:
        raise error(web.HTTPNotFound, protocol.PARTICIPANT_NOT_FOUND, "There is no such participant in this room.")
    body = await json_body(request)
    if not isinstance(body, dict):
        raise error(web.HTTPBadRequest, protocol.INVALID_MESSAGE, "The body must be a JSON object.")
    try:
        change = protocol.parse_moderate_audio({**body, "peerId": target.peer_id})
    except protocol.ProtocolError as exc:
        raise error(web.HTTPBadRequest, exc.code, exc.message) from None
    request.app[CONFERENCE].set_participant_audio(room, target, change.muted, change.volume)
    return web.json_response({"peerId": target.peer_id, "muted": target.moderator_muted, "volume": target.volume})


async def _kick_participant(request: web.Request) -> web.Response:
    """Remove a participant, as signaling's `kick` does; an optional body `{"reason": "..."}` is told to it."""
    authorize(request, "moderate", request.match_info["room"])
    room = room_or_404(request)
    target = room.participants.get(request.match_info["peerId"])
    if target is None:
        raise error(web.HTTPNotFound, protocol.UNKNOWN_PEER, "There is no such participant in this room.")
    body = await json_body(request) if request.can_read_body else {}
    if not isinstance(body, dict):
        raise error(web.HTTPBadRequest, protocol.INVALID_MESSAGE, "The body must be a JSON object.")
    try:
        kick = protocol.parse_kick({**body, "peerId": target.peer_id})
    except protocol.ProtocolError as exc:
        raise error(web.HTTPBadRequest, exc.code, exc.message) from None
    banned = await request.app[CONFERENCE].remove_participant(room, target, kick.reason)
    return web.json_response({"room": room.name, "peerId": target.peer_id, "bannedSeconds": banned})


def _describe(room: Room) -> dict[str, Any]:
    return {
        "room": room.name,
        "layout": room.layout.to_json(),
        "participants": [
            {"peerId": p.peer_id, "name": p.name, "video": p.sending_video, "audio": p.sending_audio}
            for p in room.participants.values()
        ],
        "stats": room.stats(),
    }


async def _rooms(request: web.Request) -> web.Response:
    authorize(request, "moderate")
    rooms = request.app[CONFERENCE].rooms.values()
    return web.json_response({"rooms": [_describe(room) for room in rooms]})


async def _room(request: web.Request) -> web.Response:
    authorize(request, "moderate", request.match_info["room"])  # before saying whether it exists
    room = room_or_404(request)
    return web.json_response(_describe(room))


async def _get_layout(request: web.Request) -> web.Response:
    authorize(request, "layout", request.match_info["room"])
    room = room_or_404(request)
    return web.json_response({"room": room.name, "layout": room.layout.to_json()})


async def _put_layout(request: web.Request) -> web.Response:
    """Change the room's layout: the body is `{"layout": ...}`, as in signaling's `setLayout`."""
    authorize(request, "layout", request.match_info["room"])
    room = room_or_404(request)
    body = await json_body(request)
    if not isinstance(body, dict) or "layout" not in body:
        raise error(web.HTTPBadRequest, protocol.INVALID_MESSAGE, 'The body must be an object with a "layout" field.')
    try:
        request.app[CONFERENCE].change_layout(room, body["layout"])
    except protocol.ProtocolError as exc:
        raise error(web.HTTPBadRequest, exc.code, exc.message) from None
    return web.json_response({"room": room.name, "layout": room.layout.to_json()})


#: How long `POST .../recording` waits for the file's first picture, to reply with its start.
RECORDING_START_WAIT = 5.0

#: HTTP statuses of the recording errors.
_RECORDING_STATUS: dict[str, type[web.HTTPException]] = {
    protocol.ALREADY_RECORDING: web.HTTPConflict,
    protocol.NOT_RECORDING: web.HTTPConflict,
    protocol.RECORDING_FAILED: web.HTTPInternalServerError,
}


async def _start_recording(request: web.Request) -> web.Response:
    authorize(request, "record", request.match_info["room"])
    room = room_or_404(request)
    try:
        recording = request.app[CONFERENCE].begin_recording(room)
    except protocol.ProtocolError as exc:
        raise error(_RECORDING_STATUS[exc.code], exc.code, exc.message) from None
    # The reply says when the file's time 0 is: wait for its first picture (startedAt null if it is late).
    await recording.wait_started(RECORDING_START_WAIT)
    return web.json_response({"room": room.name, **recording.describe()}, status=201)


async def _stop_recording(request: web.Request) -> web.Response:
    authorize(request, "record", request.match_info["room"])
    room = room_or_404(request)
    try:
        recording = await request.app[CONFERENCE].end_recording(room)
    except protocol.ProtocolError as exc:
        raise error(_RECORDING_STATUS[exc.code], exc.code, exc.message) from None
    return web.json_response({"room": room.name, **recording.describe(), "duration": round(recording.duration, 3)})


#: HTTP statuses of the stream errors.
_STREAM_STATUS: dict[str, type[web.HTTPException]] = {
    protocol.INVALID_STREAM_URL: web.HTTPBadRequest,
    protocol.UNKNOWN_TIER: web.HTTPBadRequest,
    protocol.STREAM_FAILED: web.HTTPConflict,
    protocol.TOO_MANY_STREAMS: web.HTTPConflict,
    protocol.UNKNOWN_STREAM: web.HTTPNotFound,
}


async def _streams(request: web.Request) -> web.Response:
    authorize(request, "record", request.match_info["room"])
    room = room_or_404(request)
    return web.json_response({"room": room.name, "streams": [s.describe() for s in room.streams.values()]})


async def _start_stream(request: web.Request) -> web.Response:
    """Push the room to an RTMP(S) URL: the body is `{"url": ..., "tier"?: ...}`, as in signaling's `startStream`."""
    authorize(request, "record", request.match_info["room"])
    room = room_or_404(request)
    body = await json_body(request)
    if not isinstance(body, dict):
        raise error(web.HTTPBadRequest, protocol.INVALID_MESSAGE, "The body must be a JSON object.")
    try:
        url = protocol.typed_field(body, "url", str, "url")
        tier = protocol.typed_field(body, "tier", str, "tier", optional=True)
        stream = request.app[CONFERENCE].begin_stream(room, url, tier)
    except protocol.ProtocolError as exc:
        raise error(_STREAM_STATUS.get(exc.code, web.HTTPBadRequest), exc.code, exc.message) from None
    return web.json_response({"room": room.name, **stream.describe()}, status=201)


async def _stop_stream(request: web.Request) -> web.Response:
    authorize(request, "record", request.match_info["room"])
    room = room_or_404(request)
    try:
        stream = await request.app[CONFERENCE].end_stream(room, request.match_info["id"])
    except protocol.ProtocolError as exc:
        raise error(_STREAM_STATUS[exc.code], exc.code, exc.message) from None
    return web.json_response({"room": room.name, **stream.describe()})
