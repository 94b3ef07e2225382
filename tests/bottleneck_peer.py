"""A decoding peer for tests behind a bottleneck (run in a namespace): one JSON line of counts every 0.25 s.

`python tests/bottleneck_peer.py URL ROOM NAME SECONDS [--codec h264] [--tier low]`: it sends the
load peers' moving, noisy 320x240@15 VP8 clip and a tone, offers only `--codec` to receive (all
by default) and asks for `--tier` as its ceiling, decodes what it receives, and prints {"t": its
monotonic clock (the same clock as the test's, on Linux), "frames": pictures decoded, "errors":
video frames aiortc failed to decode, "size": [w, h] of the last picture, "tier": the last tier
the server announced, "audio" and "audioLost": RTP packets of the mix received and lost}.
"""

from __future__ import annotations

import argparse
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


async def main(url: str, room: str, name: str, seconds: float, codec: str | None, tier: str | None) -> None:
    errors = DecodeErrors()
    logging.getLogger("aiortc.rtcrtpreceiver").addHandler(errors)
    peer = Peer(url, room, name, video=PreEncodedVideoTrack((200, 60, 60)), audio=PreEncodedAudioTrack(500.0),
                chat=False, video_codec=codec, tier=tier)  # fmt: skip
    await peer.join()
    assert peer.pc is not None
    # The mix's receiver has one stream (no RTX): its inbound-rtp count is the packets that came.
    audio = next(t.receiver for t in peer.pc.getTransceivers() if t.kind == "audio")
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            inbound = [s for s in (await audio.getStats()).values() if s.type == "inbound-rtp"]
            frame = peer.video_frame
            line = {
                "t": time.monotonic(),
                "frames": peer.video_frames,
                "errors": errors.count,
                "size": None if frame is None else [frame.width, frame.height],
                "tier": peer.received_tier,
                "audio": inbound[0].packetsReceived if inbound else 0,
                "audioLost": inbound[0].packetsLost if inbound else 0,
            }
            print(json.dumps(line), flush=True)
            await asyncio.sleep(0.25)
    finally:
        await peer.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for argument in ("url", "room", "name"):
        parser.add_argument(argument)
    parser.add_argument("seconds", type=float)
    parser.add_argument("--codec", help="the only video codec to offer (vp8, h264)")
    parser.add_argument("--tier", help="the ceiling asked for at join")
    args = parser.parse_args()
    asyncio.run(main(args.url, args.room, args.name, args.seconds, args.codec, args.tier))
