"""Receiving encoded frames: an aiortc receiver that skips its decoder.

Both ends need it: the MCU decodes audio itself on the room's audio thread, and
load peers count what they receive without paying for a decode. It relies on
aiortc internals (tests/test_aiortc_internals.py covers it).
"""

from __future__ import annotations

import asyncio
import threading

from aiortc import RTCRtpReceiver
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters


class _EncodedHandoff:
    """Stands in for an RTCRtpReceiver's decoder queue.

    `put()` runs on the event loop (from the receiver's RTP handler): frames go
    straight to the remote track. `get()` runs on aiortc's decoder thread: it
    blocks until the receiver stops (puts None) and then returns None, so the
    thread ends the track and exits as it would after decoding.
    """

    def __init__(self, track_queue: asyncio.Queue) -> None:
        self._track_queue = track_queue
        self._stopped = threading.Event()

    def put(self, item: tuple[RTCRtpCodecParameters, JitterFrame] | None) -> None:
        if item is None:
            self._stopped.set()
        elif not self._stopped.is_set():
            self._track_queue.put_nowait(item[1])

    def get(self) -> None:
        self._stopped.wait()
        return None


def install_encoded_receiver(receiver: RTCRtpReceiver) -> None:
    """Make `receiver`'s track yield encoded `JitterFrame`s instead of decoded frames.

    Call it before the receiver starts, i.e. in the peer connection's "track"
    event. The jitter buffer, NACK, REMB and receiver reports still run; the
    receiver no longer sends PLIs on decode errors, since there are none.
    """
    if receiver._RTCRtpReceiver__decoder_thread is not None:  # type: ignore[attr-defined]
        raise RuntimeError("the receiver has already started decoding")
    if receiver._track is None:
        raise RuntimeError("the receiver has no remote track yet")
    receiver._RTCRtpReceiver__decoder_queue = _EncodedHandoff(receiver._track._queue)  # type: ignore[attr-defined]
