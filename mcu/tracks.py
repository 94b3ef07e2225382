"""Outbound tracks that hand pre-encoded packets to aiortc senders.

When `recv()` returns an `av.Packet`, aiortc's `RTCRtpSender` only packetizes it,
so one encode feeds every peer. The server's own senders take each packet as it
is pushed (mcu/sender.py); a consumer that calls `recv()` instead has its own small
queue: one that falls behind loses its own backlog (and asks for a keyframe),
never the room's time.
"""

from __future__ import annotations

import asyncio
from typing import Callable, Protocol

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from .encoders import Output

#: About one second of video at 30 fps, or of audio at 50 packets/s.
QUEUE_LIMIT = 32


class PacketSink(Protocol):
    """A consumer of a shared encoder's packets: a recording, or a peer's sender."""

    def push(self, packet: av.Packet) -> None: ...


class PacketTrack(MediaStreamTrack):
    """A track fed by `push()` with packets of a shared encoder."""

    def __init__(self, kind: str, keyframe_requested: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.kind = kind
        #: Where this peer's keyframe requests go: the encoder that feeds it.
        self.keyframe_requested = keyframe_requested
        #: The encoder output whose packets this track carries (video: set once the codec is negotiated).
        self.output: Output | None = None
        self._queue: asyncio.Queue[av.Packet | None] = asyncio.Queue()
        # A decoder can only start on a keyframe: deltas before it are useless.
        self._awaiting_keyframe = kind == "video"
        self.dropped = 0
        #: Where pushed packets go at once instead of the queue: the peer's sender (mcu/sender.py).
        self._direct: PacketSink | None = None
        self._ended = asyncio.Event()

    def push(self, packet: av.Packet) -> None:
        """Queue a packet for this peer; never blocks."""
        if self.readyState != "live":
            return
        if self._awaiting_keyframe:
            if not packet.is_keyframe:
                self.dropped += 1
                # Ask again until one comes: a PLI is RTCP over UDP and may be lost, and a browser
                # ignores one that comes too soon after its last keyframe. The encoder (or the
                # publisher's PLI) is rate-limited, so this costs nothing more than waiting.
                self.request_keyframe()
                return
            self._awaiting_keyframe = False
        if self._direct is not None:
            self._direct.push(packet)
            return
        if self._queue.qsize() >= QUEUE_LIMIT:
            self.dropped += self._queue.qsize()
            self.restart()
            if self.kind == "video":
                return
        self._queue.put_nowait(packet)

    def restart(self) -> None:
        """Drop the backlog; video then waits for (and requests) a keyframe."""
        while not self._queue.empty():
            self._queue.get_nowait()
        if self.kind == "video":
            self._awaiting_keyframe = True
            self.request_keyframe()

    def request_keyframe(self) -> None:
        """A PLI/FIR from this peer, or a fresh start: ask the encoder that feeds it."""
        if self.keyframe_requested is not None:
            self.keyframe_requested()

    def attach(self, direct: PacketSink) -> None:
        """Push packets straight to `direct` from now on; what was queued is dropped (video: keyframe next)."""
        self._direct = direct
        self.restart()

    def detach(self, direct: PacketSink) -> None:
        if self._direct is direct:
            self._direct = None

    async def ended(self) -> None:
        """Return once the track has stopped."""
        await self._ended.wait()

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        packet = await self._queue.get()
        if packet is None:
            raise MediaStreamError
        return packet

    def stop(self) -> None:
        super().stop()
        self._queue.put_nowait(None)
        self._ended.set()
