"""The WebSocket endpoint: one :class:`Session` per connection.

A session validates every inbound message, enforces the join-first order and
hands the message to a :class:`Conference` (the MCU implements it). Whatever goes
wrong with one message ends in an ``error`` reply; the connection and the room
go on. Outbound messages go through a bounded queue and a writer task, so a
slow client never stalls whoever is broadcasting to it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from typing import Any, Protocol

from aiohttp import WSMsgType, web

from . import protocol
from .chat import TokenBucket
from .limits import Limits
from .protocol import (
    Answer,
    Candidate,
    Join,
    Leave,
    Offer,
    ProtocolError,
    SetLayout,
    SetMedia,
    StartRecording,
    StopRecording,
)

logger = logging.getLogger(__name__)

#: A client this many messages behind is too slow to keep: it is disconnected.
SEND_QUEUE_LIMIT = 256

_session_ids = itertools.count(1)


class Conference(Protocol):
    """What the signaling endpoint needs from the media side."""

    async def join(self, session: Session, message: Join) -> None: ...

    async def offer(self, session: Session, message: Offer) -> None: ...

    async def answer(self, session: Session, message: Answer) -> None: ...

    async def candidate(self, session: Session, message: Candidate) -> None: ...

    async def leave(self, session: Session, reason: str = protocol.LEFT) -> None: ...

    async def set_media(self, session: Session, message: SetMedia) -> None: ...

    async def set_layout(self, session: Session, message: SetLayout) -> None: ...

    async def moderate_audio(self, session: Session, message: protocol.ModerateAudio) -> None: ...

    async def kick(self, session: Session, message: protocol.Kick) -> None: ...

    async def start_recording(self, session: Session, message: StartRecording) -> None: ...

    async def stop_recording(self, session: Session, message: StopRecording) -> None: ...

    async def share(self, session: Session, message: protocol.Share) -> None: ...

    async def stop_share(self, session: Session, message: protocol.StopShare) -> None: ...

    async def start_stream(self, session: Session, message: protocol.StartStream) -> None: ...

    async def stop_stream(self, session: Session, message: protocol.StopStream) -> None: ...


class Session:
    """One signaling connection and, once joined, one participant."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.id = next(_session_ids)
        self.ws = ws
        #: Set by the conference when the join succeeds.
        self.peer_id: str | None = None
        self.room: str | None = None
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._writer = asyncio.ensure_future(self._write())

    @property
    def joined(self) -> bool:
        return self.peer_id is not None

    def send(self, message: dict[str, Any]) -> None:
        """Queue a message for the client; never blocks."""
        if self._writer.done():
            return
        if self._queue.qsize() >= SEND_QUEUE_LIMIT:
            logger.warning("session %s: client too slow, disconnecting", self.id)
            self._writer.cancel()
            asyncio.ensure_future(self.ws.close())
            return
        self._queue.put_nowait(message)

    def send_error(self, code: str, message: str) -> None:
        self.send(protocol.error(code, message))

    async def close(self) -> None:
        """Flush what is queued, then stop the writer."""
        if not self._writer.done():
            self._queue.put_nowait(None)
            try:
                await asyncio.wait_for(asyncio.shield(self._writer), 2)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._writer.cancel()

    async def _write(self) -> None:
        while True:
            message = await self._queue.get()
            if message is None or self.ws.closed:
                return
            try:
                await self.ws.send_str(json.dumps(message))
            except (ConnectionError, RuntimeError):
                return


async def dispatch(conference: Conference, session: Session, text: str | bytes, limits: Limits = Limits()) -> None:
    """Validate one inbound message and hand it to the conference."""
    message = protocol.parse_client_message(text, limits.max_message_bytes)
    if isinstance(message, Join):
        if session.joined:
            raise ProtocolError(protocol.ALREADY_JOINED, "This connection has already joined a room.")
        await conference.join(session, message)
        return
    if not session.joined:
        raise ProtocolError(protocol.NOT_JOINED, "Join a room before sending this message.")
    if isinstance(message, Offer):
        limits.check_offer(message.sdp)
        await conference.offer(session, message)
    elif isinstance(message, Answer):
        # Its sections mirror the server's own offer: only the message size bounds it.
        await conference.answer(session, message)
    elif isinstance(message, Candidate):
        await conference.candidate(session, message)
    elif isinstance(message, Leave):
        await conference.leave(session)
    elif isinstance(message, SetMedia):
        await conference.set_media(session, message)
    elif isinstance(message, SetLayout):
        await conference.set_layout(session, message)
    elif isinstance(message, protocol.ModerateAudio):
        await conference.moderate_audio(session, message)
    elif isinstance(message, protocol.Kick):
        await conference.kick(session, message)
    elif isinstance(message, StartRecording):
        await conference.start_recording(session, message)
    elif isinstance(message, StopRecording):
        await conference.stop_recording(session, message)
    elif isinstance(message, protocol.Share):
        await conference.share(session, message)
    elif isinstance(message, protocol.StopShare):
        await conference.stop_share(session, message)
    elif isinstance(message, protocol.StartStream):
        await conference.start_stream(session, message)
    elif isinstance(message, protocol.StopStream):
        await conference.stop_stream(session, message)


def websocket_handler(conference: Conference, limits: Limits = Limits()):
    """An aiohttp handler serving the signaling protocol for `conference` within `limits`."""

    async def handle(request: web.Request) -> web.WebSocketResponse:
        # aiohttp enforces the size limit itself; keep it just above ours so an
        # oversized message gets our error reply instead of a closed socket.
        ws = web.WebSocketResponse(heartbeat=20, max_msg_size=4 * limits.max_message_bytes)
        await ws.prepare(request)
        session = Session(ws)
        loop = asyncio.get_running_loop()
        bucket = TokenBucket(limits.messages_per_second, limits.message_burst, loop.time())
        # A connection that never joins holds a socket and a task for nothing.
        join_timer = loop.call_later(limits.join_timeout, _join_timeout, session, limits.join_timeout)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    data: str | bytes = msg.data
                elif msg.type == WSMsgType.BINARY:
                    data = msg.data
                else:
                    break
                if not bucket.take(loop.time()):
                    session.send_error(
                        protocol.RATE_LIMITED,
                        f"Too many messages: at most {limits.messages_per_second:g} per second; this one was dropped.",
                    )
                    continue
                try:
                    await dispatch(conference, session, data, limits)
                    if session.joined:
                        join_timer.cancel()
                except ProtocolError as exc:
                    session.send_error(exc.code, exc.message)
                except Exception:
                    logger.exception("session %s: failed to handle a message", session.id)
                    session.send_error(protocol.INTERNAL_ERROR, "The server failed to handle this message.")
        finally:
            join_timer.cancel()
            if session.joined:
                await conference.leave(session, protocol.DISCONNECTED)
            await session.close()
        return ws

    return handle


def _join_timeout(session: Session, seconds: float) -> None:
    if not session.joined:
        session.send_error(protocol.JOIN_TIMEOUT, f"No join within {seconds:g} seconds of connecting: closing.")
        asyncio.ensure_future(_close_after_flush(session))


async def _close_after_flush(session: Session) -> None:
    await session.close()
    await session.ws.close()
