"""Outbound tracks that hand pre-encoded packets to aiortc senders.

When `recv()` returns an `av.Packet`, aiortc's `RTCRtpSender` only packetizes it,
so one encode feeds every peer. The server's own senders take each packet as it
is pushed (mcu/rtc/sender.py); a consumer that calls `recv()` instead has its own small
queue: one that falls behind loses its own backlog (and asks for a keyframe),
never the room's time.

A video track moves from one encoder's stream to another's (a tier switch) without
a gap: `switch` names the next output, the track goes on carrying the current one
until the next one's first keyframe comes, and then carries only that one.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable, Protocol

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from mcu.media.encoders import Output

#: About one second of video at 30 fps, or of audio at 50 packets/s.
QUEUE_LIMIT = 32
#: After a move down for congestion, the track sends nothing this long before it asks for the
#: new tier's keyframe: the bottleneck's queue drains (200 ms at most with a usual tbf or
#: router buffer), so that the keyframe is not dropped at its tail.
DRAIN_SECONDS = 0.25
#: A receiver's own keyframe request (PLI/FIR) this soon after the track sent it a keyframe, or
#: while it waits to send one, is not passed on: that keyframe is still on its way through the
#: receiver's queue. Behind a 300 kbit/s link holding 1.5 s, the Python client's PLIs during a
#: move down each brought one more keyframe burst into the full queue, whose losses then moved
#: the peer from `small` to audio only (scripts/bench_network.py, `300k`).
KEYFRAME_GRACE = 1.0


class PacketSink(Protocol):
    """A consumer of a shared encoder's packets: a recording, or a peer's sender."""

    def push(self, packet: av.Packet) -> None: ...


class PacketTrack(MediaStreamTrack):
    """A track fed by `push()` with packets of a shared encoder."""

    def __init__(
        self, kind: str, keyframe_requested: Callable[[str], None] | None = None, keyframe_grace: float = 0.0
    ) -> None:
        super().__init__()
        self.kind = kind
        #: How long after a keyframe sent a receiver's PLI is redundant (KEYFRAME_GRACE for the MCU's
        #: composite; 0 in an sfu room, whose publishers rate-limit their keyframes themselves).
        self.keyframe_grace = keyframe_grace
        #: Where this peer's keyframe requests go, with why ("start", "pli", "switch"): the encoder that feeds it.
        self.keyframe_requested = keyframe_requested
        #: The encoder output whose packets this track carries (video: set once the codec is negotiated).
        self.output: Output | None = None
        #: The output it moves to at that output's next keyframe (`switch`), if any.
        self.pending: Output | None = None
        #: Why the track waits for a keyframe: a fresh start, or a switch of output.
        self._awaiting_reason = "start"
        #: Whether the sender skips ahead at the next keyframe, and until when nothing is sent (`switch`).
        self._resync = False
        self._quiet_until = 0.0
        self._queue: asyncio.Queue[av.Packet | None] = asyncio.Queue()
        # A decoder can only start on a keyframe: deltas before it are useless.
        self._awaiting_keyframe = kind == "video"
        self.dropped = 0
        #: When the track last sent a keyframe (time.monotonic()), and receiver requests not passed on.
        self._keyframe_sent_at = float("-inf")
        self.plis_ignored = 0
        #: Where pushed packets go at once instead of the queue: the peer's sender (mcu/rtc/sender.py).
        self._direct: PacketSink | None = None
        self._ended = asyncio.Event()

    @property
    def direct(self) -> PacketSink | None:
        """The sender that takes this track's packets as they are pushed, if attached."""
        return self._direct

    def push(self, packet: av.Packet, output: Output | None = None) -> None:
        """Queue a packet for this peer (of `output`, where the caller knows it); never blocks."""
        if self.readyState != "live":
            return
        if output is not None and output != self.output:
            if output != self.pending or not packet.is_keyframe:
                return  # the stream it leaves, or the one it waits to start on a keyframe
            self.output, self.pending = output, None
        if self._awaiting_keyframe:
            if self._quiet_until:
                if time.monotonic() < self._quiet_until:
                    return
                self._quiet_until = 0.0
            if not packet.is_keyframe:
                self.dropped += 1
                # Ask again until one comes: a PLI is RTCP over UDP and may be lost, and a browser
                # ignores one that comes too soon after its last keyframe. The encoder (or the
                # publisher's PLI) is rate-limited, so this costs nothing more than waiting.
                self.request_keyframe(self._awaiting_reason)
                return
            self._awaiting_keyframe = False
            resync = getattr(self._direct, "resync", None)
            if self._resync and resync is not None:
                resync()
            self._resync = False
        if packet.is_keyframe:
            self._keyframe_sent_at = time.monotonic()
        if self._direct is not None:
            self._direct.push(packet)
            return
        if self._queue.qsize() >= QUEUE_LIMIT:
            self.dropped += self._queue.qsize()
            self.restart()
            if self.kind == "video":
                return
        self._queue.put_nowait(packet)

    def restart(self, reason: str = "start", quiet: float = 0.0) -> None:
        """Drop the backlog; video then waits for (and requests) a keyframe, after `quiet` seconds of nothing."""
        while not self._queue.empty():
            self._queue.get_nowait()
        if self.kind == "video":
            self._awaiting_keyframe = True
            self._awaiting_reason = reason
            self._quiet_until = time.monotonic() + quiet if quiet else 0.0
            if not quiet:
                self.request_keyframe(reason)

    def switch(self, output: Output | None, resync: bool = False) -> None:
        """Carry `output` from its next keyframe on (asked for now); None stops the video at once.

        `resync`: a move down for congestion. The link lost packets that will never come,
        and its queue is full: nothing is sent for DRAIN_SECONDS, then the new stream starts on
        its keyframe past a sequence gap that makes the receiver drop what it waits for.
        Video that starts again after audio only starts past that gap too: the last packets
        before the move down to audio only were lost in the congested queue, and aiortc's
        receiver held every picture of the new tier behind them (tests/test_adaptation_e2e.py:
        no picture within 10 s of the move back to `small`).
        """
        self._resync = output is not None and (resync or (self.output is None and self._direct is not None))
        if output is None or self.output is None or resync:
            self.output, self.pending = output, None
            if output is not None:
                self.restart("down" if resync else "switch", DRAIN_SECONDS if resync else 0.0)
            return
        if output == self.output:
            self.pending = None
            return
        self.pending = output
        self.request_keyframe("switch")

    def request_keyframe(self, reason: str = "pli") -> None:
        """Ask the encoder that feeds it, for a PLI/FIR ("pli"), a fresh start ("start"), a move up
        ("switch") or down for congestion ("down"). A receiver's "pli" while a keyframe is on its
        way (`keyframe_grace`) is counted and dropped."""
        if (
            reason == "pli"
            and self.keyframe_grace
            and (self._awaiting_keyframe or time.monotonic() - self._keyframe_sent_at < self.keyframe_grace)
        ):
            self.plis_ignored += 1
            return
        if self.keyframe_requested is not None:
            self.keyframe_requested(reason)

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
