"""A decoding peer for tests behind a bottleneck (run in a namespace): one JSON line of counts every 0.25 s.

`python tests/bottleneck_peer.py URL ROOM NAME SECONDS`: it sends the load
peers' moving, noisy 320x240@15 VP8 clip and a tone, decodes what it receives,
and prints {"t": its monotonic clock (the same clock as the test's, on Linux),
"frames": pictures decoded, "errors": VP8 frames aiortc failed to decode,
"size": [w, h] of the last picture, "tier": the last tier the server announced}.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from client.encoded import PreEncodedAudioTrack, PreEncodedVideoTrack  # noqa: E402
from client.peer import Peer  # noqa: E402


class DecodeErrors(logging.Handler):
    """Counts aiortc's "failed to decode" warnings: its decoder thread's only trace of a bad frame."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "failed to decode" in record.getMessage():
            self.count += 1


async def main(url: str, room: str, name: str, seconds: float) -> None:
    errors = DecodeErrors()
    logging.getLogger("aiortc.rtcrtpreceiver").addHandler(errors)
    peer = Peer(url, room, name, video=PreEncodedVideoTrack((200, 60, 60)), audio=PreEncodedAudioTrack(500.0),
                chat=False)  # fmt: skip
    await peer.join()
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            frame = peer.video_frame
            line = {
                "t": time.monotonic(),
                "frames": peer.video_frames,
                "errors": errors.count,
                "size": None if frame is None else [frame.width, frame.height],
                "tier": peer.received_tier,
            }
            print(json.dumps(line), flush=True)
            await asyncio.sleep(0.25)
    finally:
        await peer.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])))
