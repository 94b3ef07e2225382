"""Server settings, gathered in one place so the CLI, the app and tests agree."""

from __future__ import annotations

from dataclasses import dataclass, field

from mcu.media.encoders import Tier
from signaling.ice import IceServers
from signaling.limits import Limits

#: The name of the tier described by `Config.width`, `height`, `fps` and `video_bitrate`.
DEFAULT_TIER = "high"


@dataclass
class Config:
    """What a room's media clock produces and what clients are told."""

    #: The default tier ("high"): peers that name no tier get this composite.
    width: int = 1280
    height: int = 720
    fps: int = 30
    #: The default tier's bitrate, shared by every peer of that tier and codec.
    video_bitrate: int = 1_500_000
    #: The other tiers a peer may choose at join (`mcu serve --tier NAME=WxH@FPS:BITRATE`); with the
    #: default one and audio only, the ladder a receiver moves down and up as its link allows.
    tiers: dict[str, Tier] = field(
        default_factory=lambda: {"low": Tier(640, 360, 15, 400_000), "small": Tier(320, 180, 15, 150_000)}
    )
    #: Move each receiver between tiers as its link allows (mcu/rooms/adaptation.py); its join's tier is its ceiling.
    adapt: bool = True
    #: Ask a publisher on no canvas to pause its video, and decode none of what it still sends
    #: (mcu/rooms/visibility.py); off, every publisher is asked to send and everything is decoded.
    sender_control: bool = True
    #: A participant silent on video this long shows its placeholder tile.
    stale_video_seconds: float = 2.0
    #: At most this many tiles in a composite: a larger room shows the most recent
    #: speakers and one "+N" tile for the others (`mcu serve --max-tiles`).
    max_tiles: int = 16
    #: The layout of a new room (compositor/layout.py): grid, speaker, pip or presentation.
    layout: str = "grid"
    #: Shared screens a room shows at once (`share`; more get `share_limit`).
    max_shares: int = 1
    #: The loudest this many talkers get a personal mix-minus; every other listener
    #: shares one mix of them. None: every listener gets a personal mix.
    audio_talkers: int | None = 3
    #: Benchmark baseline only: hand each peer the raw composite so that aiortc
    #: encodes it once per peer, as a naive MCU would.
    encode_per_peer: bool = False
    #: STUN/TURN servers handed to clients in `joined` (with per-client TURN
    #: credentials) and used by the server itself; none by default (host candidates only).
    ice_servers: IceServers = field(default_factory=IceServers)
    #: Where recordings are written (mcu/rooms/recording.py); None: this server does not record.
    record_dir: str | None = None
    #: Record every room from its creation to its end (needs record_dir).
    auto_record: bool = False
    #: Where every mcu room's live HLS is written (mcu/rooms/hls.py), served at /hls/; None: no HLS.
    hls_dir: str | None = None
    #: The tiers of the HLS ladder (each one more H.264 encode unless H.264 peers use it); empty: the default tier.
    hls_tiers: tuple[str, ...] = ()
    #: The HLS segments' length, s: a player starts three of them behind the live edge (mcu/rooms/hls.py).
    hls_segment_seconds: float = 2.0
    #: The key that signs join tokens (signaling/tokens.py). None: anyone who
    #: reaches the server may join any room with every grant.
    secret: str | None = field(default=None, repr=False)
    #: What one server, room and connection may use (signaling/limits.py).
    limits: Limits = field(default_factory=Limits)
    #: How long a participant a moderator removed may not join its room again (0: no ban; needs
    #: a secret: without tokens a join proves no identity to ban, mcu/rooms/bans.py).
    kick_ban_seconds: float = 300.0
    #: The mode of a room whose first join names none: mcu, sfu or mesh (signaling/protocol.py MODES).
    mode: str = "mcu"

    def output_tiers(self) -> dict[str, Tier]:
        """Every tier by name, the default one included."""
        return {**self.tiers, DEFAULT_TIER: Tier(self.width, self.height, self.fps, self.video_bitrate)}
