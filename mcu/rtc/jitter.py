"""A video jitter buffer that gives up on a lost packet, and NACKs that do not flood a congested uplink.

aiortc's video receiver holds frames behind a missing packet until 512 more have come: on a
publisher's 300 kbit/s uplink (about 30 packets a second) a packet lost for good, tail-dropped
by the bottleneck with its retransmissions, froze that publisher's tile for 8-10 s (measured,
tests/test_uplink.py). And its NACK generator, at every new gap, asks again for every packet
still missing (up to 128): each congestion loss brought a burst of retransmissions back into
the same full queue, the publisher offering 150-340 datagrams a second to a link that carries 30.

`VideoJitterBuffer` lets a frame out as soon as its packets are in (the marker bit ends it);
when a hole has waited `MAX_WAIT` it drops what it holds and waits for a keyframe, asking for
one (the receiver sends a PLI) at most every `PLI_INTERVAL`, counting those asked for otherwise
(`mcu.rtc.receiver.send_pli`), until it comes: inter frames after a lost one would only decode
into garbage. `PacedNacks` asks for each
missing packet at most `NACK_TRIES` times, `NACK_RETRY` apart. Both stand in for the aiortc
receiver's private ones (mcu/rtc/receiver.py installs them; tests/test_aiortc_internals.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiortc.codecs.h264 import H264PayloadDescriptor
from aiortc.codecs.vpx import VpxPayloadDescriptor
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_add, uint16_gt

#: How long a hole may hold the frames behind it (retransmissions come within a round trip or two).
MAX_WAIT = 0.5
#: While it waits for a keyframe, the buffer asks for one at most this often: a keyframe takes a while
#: through a congested uplink, and each one asked for too early is one more burst into the full queue
#: (every 0.5 s, a 300 kbit/s publisher's tile stayed frozen 13 s; every 1 s, it was live again in 6).
PLI_INTERVAL = 1.0
#: Packets held at most: beyond, the oldest hole is given up at once.
CAPACITY = 512
#: This many packets in a row from more than CAPACITY before the next one expected are a new stream
#: (a sender that started again), not late ones. Nearer ones are copies of packets already let out
#: or given up: retransmissions asked for again while the first came (NACKs are sent every
#: NACK_RETRY), or a reordered packet that was asked for. On a path with 5 % loss and 20 ms of
#: jitter a keyframe's copies came 10 in a row 9 to 29 behind, and taken for a new stream they
#: froze a client's picture 1 to 2 s (tests/test_impairment.py). A sender that starts again
#: within CAPACITY behind (1 chance in 128) loses the packets it sends until it passes the point.
LATE_RUN = 10
#: Each missing packet is asked for at most this many times, this many seconds apart.
NACK_TRIES = 2
NACK_RETRY = 0.2
#: Missing packets further back than this (in sequence numbers) are no longer asked for.
NACK_HISTORY = 128
#: A client receiving the room's composite waits longer for a retransmission, and asks more
#: often: its keyframe requests reach an encoder that other peers share at most every 10 s
#: (mcu/media/video_pipeline.py SHARED_PLI_INTERVAL), so a frame given up at 0.5 s froze its picture up to
#: 6.4 s on a path with 5 % loss and 30 ms of jitter (tests/test_lossy_link.py). The server
#: retransmits a packet up to 1 s after it sent it (mcu/rtc/sender.py RETRANSMIT_AGE). Asked again
#: every 0.1 s rather than 0.2: a retransmission lost twice then costs 0.2 s, not 0.4, and the
#: test's bound on a freeze is 0.5 s.
DOWNLINK_MAX_WAIT = 1.0
DOWNLINK_NACK_TRIES = 6
DOWNLINK_NACK_RETRY = 0.1

#: The codec of a payload type ("vp8", "h264"), None when unknown.
CodecOf = Callable[[int], str | None]


def starts_keyframe(codec: str | None, payload: bytes) -> bool:
    """Whether an RTP payload (with its payload descriptor) is the first packet of a keyframe."""
    try:
        if codec == "vp8":
            vp8, data = VpxPayloadDescriptor.parse(payload)
            # The VP8 frame tag's first bit: 0 for a key frame (RFC 6386, 9.1).
            return bool(vp8.partition_start and vp8.partition_id == 0 and data and not data[0] & 1)
        if codec == "h264":
            h264, data = H264PayloadDescriptor.parse(payload)
            # An IDR slice (5) or a sequence parameter set (7) after any Annex B start code.
            units = data.split(b"\x00\x00\x01")[1:]
            return bool(h264.first_fragment and any(unit and unit[0] & 0x1F in (5, 7) for unit in units))
    except ValueError:
        return False
    return False


class VideoJitterBuffer:
    """Complete frames in order, a lost one given up after `max_wait`, then nothing until a keyframe.

    Has the interface of aiortc's `JitterBuffer`: `add(packet)` gives (ask for a keyframe, a frame or None).
    """

    def __init__(
        self, codec_of: CodecOf, clock: Callable[[], float] = time.monotonic, max_wait: float = MAX_WAIT
    ) -> None:
        self._codec_of = codec_of
        self._clock = clock
        self._max_wait = max_wait
        self._packets: dict[int, RtpPacket] = {}  # by unwrapped sequence number
        self._highest: int | None = None
        #: The first packet of the next frame to let out, and the last packet let out.
        self._next = 0
        self._last_out = float("-inf")
        self._waiting_keyframe = True
        self._late_run = 0
        self._hole_since: float | None = None
        # A stream starts on a keyframe: ask for one only if none has come within PLI_INTERVAL.
        self._last_pli = clock()
        #: Frames given up (behind a hole waited out), and keyframes asked for (PLIs sent).
        self.frames_dropped = 0
        self.keyframes_asked = 0

    @property
    def capacity(self) -> int:
        return CAPACITY

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        now = self._clock()
        number = self._unwrap(packet.sequence_number)
        # While waiting for a keyframe, anything after the last frame let out may be its first packet.
        late = number < self._next and not (self._waiting_keyframe and number > self._last_out)
        if not late:
            self._late_run = 0
        elif self._next - number > CAPACITY:
            self._late_run += 1
        if self._late_run >= LATE_RUN:
            self._restart(number)
            late = False
        if not late:
            self._packets[number] = packet
            if self._waiting_keyframe:
                self._seek_keyframe(number, packet)
        frame = None if self._waiting_keyframe else self._take_frame()
        if frame is None and not self._waiting_keyframe and self._packets:
            # Packets held behind a missing one (not a frame still coming in): since when, and whether to give up.
            if (span := max(self._packets) - self._next + 1) > len(self._packets):
                self._hole_since = now if self._hole_since is None else self._hole_since
                if now - self._hole_since >= self._max_wait or span > CAPACITY:
                    self._give_up()
                    frame = None if self._waiting_keyframe else self._take_frame()
            else:
                self._hole_since = None
        pli = self._waiting_keyframe and now - self._last_pli >= PLI_INTERVAL
        if pli:
            self._last_pli = now
            self.keyframes_asked += 1
        return pli, frame

    def keyframe_asked_elsewhere(self) -> None:
        """A keyframe was just asked for otherwise (a decode error, a subscriber): the buffer waits
        PLI_INTERVAL before asking again, so that the two do not double the requests."""
        self._last_pli = self._clock()

    def _unwrap(self, sequence_number: int) -> int:
        if self._highest is None:
            self._highest = self._next = sequence_number
            return sequence_number
        delta = (sequence_number - self._highest + 0x8000) % 0x10000 - 0x8000
        number = self._highest + delta
        self._highest = max(self._highest, number)
        return number

    def _take_frame(self) -> JitterFrame | None:
        """The frame starting at `_next` if all its packets are in (up to the marker bit)."""
        packets = []
        number = self._next
        while (packet := self._packets.get(number)) is not None:
            packets.append(packet)
            if packet.marker:
                for done in range(self._next, number + 1):
                    del self._packets[done]
                self._next = number + 1
                self._last_out = number
                self._hole_since = None
                data = b"".join(p._data for p in packets)  # type: ignore[attr-defined]
                return JitterFrame(data, packets[0].timestamp)
            number += 1
        return None

    def _restart(self, number: int) -> None:
        """A new stream from packet `number` on: what is held is dropped, and it starts on a keyframe."""
        self._packets.clear()
        self._highest = self._next = number
        self._last_out = float("-inf")
        self._hole_since = None
        self._late_run = 0
        self._waiting_keyframe = True

    def _give_up(self) -> None:
        """Drop the frames held behind the hole (they follow a lost one) and start again at a keyframe.

        One already held starts the stream at once: a move down's keyframe comes past a sequence
        gap longer than CAPACITY (mcu/rtc/sender.py RESYNC_GAP), and its first packet is the one
        that shows the gap; dropped with the rest, the keyframe was lost, and the receiver waited
        for the next one (10 s and more from a rate-limited encoder: tests/test_adaptation_e2e.py).
        Else the buffer waits for the next keyframe, asking for one.
        """
        # Past the hole: a keyframe starting at `_next` is the frame that waited for a missing packet.
        keyframes = [
            number
            for number, packet in self._packets.items()
            if number > self._next and starts_keyframe(self._codec_of(packet.payload_type), packet.payload)
        ]
        start = max(keyframes, default=None)
        before = [p.timestamp for n, p in self._packets.items() if start is None or n < start]
        self.frames_dropped += len(set(before)) or 1
        self._hole_since = None
        if start is None:
            self._packets.clear()
            self._next = (self._highest or 0) + 1
            self._waiting_keyframe = True  # and asks at once, unless a keyframe was asked for within PLI_INTERVAL
            return
        for number in [n for n in self._packets if n < start]:
            del self._packets[number]
        self._next = start

    def _seek_keyframe(self, number: int, packet: RtpPacket) -> None:
        """While waiting: start again at `packet` if it begins a keyframe, dropping what came before it.

        Packets are kept meanwhile (CAPACITY at most), so that a keyframe whose first packet comes
        late (a retransmission) still starts the stream.
        """
        if starts_keyframe(self._codec_of(packet.payload_type), packet.payload):
            for earlier in [n for n in self._packets if n < number]:
                del self._packets[earlier]
            self._next = number
            self._waiting_keyframe = False
            self._hole_since = None
        elif len(self._packets) > CAPACITY:
            oldest = min(self._packets)
            del self._packets[oldest]
            self._next = oldest + 1


class PacedNacks:
    """Stands in for aiortc's `NackGenerator`: `add` says whether to send a NACK, `missing` for which packets.

    Only the packets due are listed: newly missing ones, and those asked for NACK_RETRY ago
    at most NACK_TRIES times in all, so that one loss brings at most that many retransmissions.
    """

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, tries: int = NACK_TRIES, retry: float = NACK_RETRY
    ) -> None:
        self._clock = clock
        self._tries = tries
        self._retry = retry
        self.max_seq: int | None = None
        #: Missing sequence number -> (times asked, when last asked).
        self._asked: dict[int, tuple[int, float]] = {}
        self._due: set[int] = set()

    @property
    def missing(self) -> set[int]:
        """The packets to ask for now (read by the receiver right after `add` returned True)."""
        return self._due

    def add(self, packet: RtpPacket) -> bool:
        seq = packet.sequence_number
        if self.max_seq is None:
            self.max_seq = seq
            return False
        if uint16_gt(seq, self.max_seq):
            # A gap longer than the history (a sender that started again) is not walked through.
            gap = uint16_add(self.max_seq, 1)
            if (seq - gap) % 0x10000 > NACK_HISTORY:
                gap = uint16_add(seq, -NACK_HISTORY)
            while uint16_gt(seq, gap):
                self._asked[gap] = (0, float("-inf"))
                gap = uint16_add(gap, 1)
            self.max_seq = seq
        else:
            self._asked.pop(seq, None)  # a retransmission, or a late packet
        oldest = uint16_add(self.max_seq, -NACK_HISTORY)
        now = self._clock()
        self._due = set()
        for missing, (tries, last) in list(self._asked.items()):
            if tries >= self._tries or uint16_gt(oldest, missing):
                del self._asked[missing]
            elif now - last >= self._retry:
                self._asked[missing] = (tries + 1, now)
                self._due.add(missing)
        return bool(self._due)
