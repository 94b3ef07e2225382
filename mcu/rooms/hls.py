"""HLS out: a live playlist of each room's composite and mix, written under `--hls DIR`, served at /hls/{room}/.

libavformat's hls muxer writes MPEG-TS segments of the room's H.264 tier and
AAC mix (mcu/rooms/broadcast.py does the muxing in a thread of its own). It cuts
a segment at the first keyframe a segment's length (`--hls-segment`, 2 s by
default) after the last cut, and the broadcast asks the tier's encoder for a
keyframe as often, so segments are about that long. A player starts three target
durations behind the live edge (RFC 8216 6.3.3), so it shows the room about four
segments' length late: 8.0 s with 2 s segments, 4.4 s with 1 s (docs/benchmarks.md).
The media playlist lists the last LIST_SIZE segments and the muxer deletes older
ones: a room holds at most LIST_SIZE + 2 segment files (the listed ones, the one
being written, and one just dropped from the list for players still reading it).
The room's directory goes when the room closes.

    DIR/{room}/index.m3u8          master playlist: one variant per tier written
    DIR/{room}/{tier}/index.m3u8   media playlist (rolling window)
    DIR/{room}/{tier}/{n}.ts       segments
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

import av

from mcu.media.aac import BITRATE as AUDIO_BITRATE
from mcu.media.encoders import Tier
from mcu.rooms.broadcast import Broadcast

#: The target segment length (`--hls-segment`'s default), and how many segments the playlist lists.
SEGMENT_SECONDS = 2.0
LIST_SIZE = 6
#: The most segment files a room's tier holds on disk (see the module's docstring).
MAX_SEGMENT_FILES = LIST_SIZE + 2
PLAYLIST = "index.m3u8"
#: A player starts three target durations from the live edge (RFC 8216 6.3.3): the master playlist
#: waits for every tier to list that many segments. Chromium refused a live playlist of one or two
#: (DEMUXER_ERROR_COULD_NOT_PARSE) and never tried it again.
START_SEGMENTS = 3
#: RFC 6381 codecs of the variant: H.264 Constrained Baseline level 3.1 (mcu/media/encoders.py), AAC-LC.
CODECS = "avc1.42e01f,mp4a.40.2"


def room_directory(directory: Path, room: str) -> Path:
    return directory / room


def master_playlist(tiers: dict[str, Tier]) -> str:
    """The master playlist naming each tier's media playlist, best first."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for name, tier in sorted(tiers.items(), key=lambda item: -item[1].bitrate):
        bandwidth = round((tier.bitrate + AUDIO_BITRATE) * 1.1)  # the peak, with the TS container's share
        lines.append(
            f"#EXT-X-STREAM-INF:BANDWIDTH={bandwidth},RESOLUTION={tier.width}x{tier.height},"
            f'FRAME-RATE={tier.fps:.3f},CODECS="{CODECS}"'
        )
        lines.append(f"{name}/{PLAYLIST}")
    return "\n".join(lines) + "\n"


def write_master(directory: Path, tiers: dict[str, Tier]) -> None:
    """Write the room's master playlist whole (a player never reads half of it)."""
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / f".{PLAYLIST}.tmp"
    partial.write_text(master_playlist(tiers))
    os.replace(partial, directory / PLAYLIST)


def remove_room(directory: Path, room: str) -> None:
    """Delete a room's playlists and segments (blocking: run it off the event loop)."""
    shutil.rmtree(room_directory(directory, room), ignore_errors=True)


class HlsTier(Broadcast):
    """One tier of a room's HLS ladder: its media playlist and segments."""

    def __init__(
        self,
        room: str,
        directory: Path,
        tier_name: str,
        tier: Tier,
        audio_extradata: bytes,
        request_keyframe: Callable[[], None],
        on_change: Callable[[Broadcast], None],
        segment_seconds: float = SEGMENT_SECONDS,
    ) -> None:
        super().__init__(room, tier.width, tier.height, tier.fps, audio_extradata, request_keyframe, on_change)
        self.keyframe_seconds = segment_seconds  # each segment starts on one
        self.tier = tier_name
        self.directory = room_directory(directory, room) / tier_name
        self.directory.mkdir(parents=True, exist_ok=True)
        self.label = f"HLS {tier_name} in {self.directory}"

    def _open(self) -> Any:
        options = {
            "hls_time": f"{self.keyframe_seconds:g}",
            "hls_list_size": str(LIST_SIZE),
            "hls_flags": "delete_segments+independent_segments",
            # A container opened again (after a write failed) numbers on from the clock: no name is reused.
            "hls_start_number_source": "epoch",
            "hls_segment_filename": str(self.directory / "%d.ts"),
        }
        return av.open(str(self.directory / PLAYLIST), "w", format="hls", options=options)

    def segments(self) -> list[Path]:
        return sorted(self.directory.glob("*.ts"))

    def playable(self) -> bool:
        """Whether its media playlist lists enough segments for a player to start (blocking: a file read)."""
        try:
            listed = (self.directory / PLAYLIST).read_text().count(".ts\n")
        except OSError:
            return False
        return listed >= min(START_SEGMENTS, LIST_SIZE)
