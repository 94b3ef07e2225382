"""The RFC 6464 audio level of packets a track hands aiortc already encoded.

aiortc measures the level only of the frames it encodes itself; for packets it builds its
`RTCEncodedFrame` with no level. It reads the frame's `audio_level` when it packetizes
it, right after its private `_next_encoded_frame` returns: setting it there sends the
header (tests/test_aiortc_internals.py).
"""

from __future__ import annotations

from typing import Callable

from aiortc import RTCRtpSender
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpsender import RTCEncodedFrame


def send_levels(sender: RTCRtpSender, level: Callable[[], int | None]) -> None:
    """Make `sender` put `level()` (-dBov, 0..127) in the header of each packet it sends from now on."""
    next_encoded_frame = sender._next_encoded_frame

    async def with_level(codec: RTCRtpCodecParameters) -> RTCEncodedFrame | None:
        frame = await next_encoded_frame(codec)
        if frame is not None:
            # aiortc types it int; None (no level known) sends no header, as for its own frames.
            frame.audio_level = level()  # type: ignore[assignment]
        return frame

    sender._next_encoded_frame = with_level  # type: ignore[method-assign]
