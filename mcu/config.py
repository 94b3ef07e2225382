"""Server settings, gathered in one place so the CLI, the app and tests agree."""

from __future__ import annotations

from dataclasses import dataclass, field

from signaling.ice import IceServers


@dataclass
class Config:
    """What a room's media clock produces and what clients are told."""

    width: int = 1280
    height: int = 720
    fps: int = 30
    #: The composite's VP8 bitrate, shared by every peer of the room.
    video_bitrate: int = 1_200_000
    #: A participant silent on video this long shows its placeholder tile.
    stale_video_seconds: float = 2.0
    #: The loudest this many talkers get a personal mix-minus; every other listener
    #: shares one mix of them. None: every listener gets a personal mix.
    audio_talkers: int | None = 3
    #: Benchmark baseline only: hand each peer the raw composite so that aiortc
    #: encodes it once per peer, as a naive MCU would.
    encode_per_peer: bool = False
    #: STUN/TURN servers handed to clients in `joined` (with per-client TURN
    #: credentials) and used by the server itself; none by default (host candidates only).
    ice_servers: IceServers = field(default_factory=IceServers)
    #: The key that signs join tokens (signaling/tokens.py). None: anyone who
    #: reaches the server may join any room with every grant.
    secret: str | None = field(default=None, repr=False)
