"""HLS out: a room's live playlist, served at /hls/{room}/, read back by ffmpeg while the room runs."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import BIN, within
from media_checks import cell_colours, contains_colour, tone_levels

from client.peer import Peer
from client.sources import COLORS, ColorTrack, ToneTrack, rgb_to_yuv
from mcu.config import Config
from mcu.rooms import hls

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")

#: A short window, so that the test outlives it several times over in seconds.
LIST_SIZE = 3


@pytest.fixture
def config(tmp_path, monkeypatch) -> Config:
    monkeypatch.setattr(hls, "LIST_SIZE", LIST_SIZE)
    return Config(
        width=640, height=360, fps=15, video_bitrate=600_000, hls_dir=str(tmp_path / "hls"), hls_tiers=("high", "small")
    )


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def media_sequence(playlist: str) -> int:
    return next(int(line.split(":")[1]) for line in playlist.splitlines() if line.startswith("#EXT-X-MEDIA-SEQUENCE"))


async def test_a_room_is_live_over_hls_with_a_bounded_window(server, config, tmp_path):
    directory = Path(config.hls_dir or "") / "show"
    base = f"http://127.0.0.1:{server.port}/hls/show"
    alice = Peer(server.url, "show", "alice", video=ColorTrack(COLORS["red"]), audio=ToneTrack(440.0), chat=False)
    bob = Peer(server.url, "show", "bob", video=ColorTrack(COLORS["blue"]), audio=ToneTrack(660.0), chat=False)
    captured = tmp_path / "captured.ts"
    try:
        await alice.join()
        await bob.join()
        tier = directory / "high"
        # The master playlist comes once every variant it names lists the segments a player starts
        # from (three target durations): a player that read it sooner gave up (Chromium did).
        await within(20, lambda: (directory / "index.m3u8").exists())
        listed = [(directory / name / "index.m3u8").read_text().count(".ts\n") for name in ("high", "small")]
        assert all(count >= LIST_SIZE for count in listed), listed

        status, headers, body = await asyncio.to_thread(get, f"{base}/index.m3u8")
        assert status == 200 and headers["Content-Type"] == "application/vnd.apple.mpegurl", headers
        assert headers["Cache-Control"] == "no-cache"
        master = body.decode()
        assert "RESOLUTION=640x360" in master and 'CODECS="avc1.42e01f,mp4a.40.2"' in master
        # The ladder, best first: each tier's own media playlist.
        assert [line for line in master.splitlines() if not line.startswith("#")] == [
            "high/index.m3u8",
            "small/index.m3u8",
        ]
        assert "RESOLUTION=320x180" in master
        status, headers, body = await asyncio.to_thread(get, f"{base}/high/index.m3u8")
        assert status == 200 and headers["Cache-Control"] == "no-cache"
        segment = next(line for line in body.decode().splitlines() if line.endswith(".ts"))
        status, headers, _ = await asyncio.to_thread(get, f"{base}/high/{segment}")
        assert status == 200 and headers["Content-Type"] == "video/mp2t"
        (directory.parent / "other.m3u8").write_text("#EXTM3U\n")  # outside the room's directory
        for outside in ("..%2Fother.m3u8", "high%2F..%2F..%2Fother.m3u8", "nothing.m3u8", "high/x.txt"):
            assert (await asyncio.to_thread(get, f"{base}/{outside}"))[0] == 404, outside

        # A player follows the live playlist for a while, and the files on disk stay within the window.
        player = await asyncio.create_subprocess_exec(
            *["ffmpeg", "-v", "error", "-i", f"{base}/index.m3u8", "-t", "8", "-c", "copy", "-y", str(captured)],
            stdin=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        most, durations, first_sequence = 0, [], media_sequence((tier / "index.m3u8").read_text())
        deadline = time.monotonic() + 4 * LIST_SIZE * hls.SEGMENT_SECONDS
        while time.monotonic() < deadline:
            most = max(most, *(len(list((directory / name).glob("*.ts"))) for name in ("high", "small")))
            await asyncio.sleep(0.25)
        playlist = (tier / "index.m3u8").read_text()
        _, errors = await asyncio.wait_for(player.communicate(), 30)
        assert player.returncode == 0, errors
        durations = [float(line[8:].rstrip(",")) for line in playlist.splitlines() if line.startswith("#EXTINF:")]
    finally:
        await asyncio.gather(alice.close(), bob.close())
    assert media_sequence(playlist) >= first_sequence + LIST_SIZE  # the window moved on, more than its length
    assert len(durations) == LIST_SIZE, playlist
    assert all(1.9 <= d <= 2.6 for d in durations), durations  # cut on the keyframes asked for every 2 s
    assert LIST_SIZE <= most <= LIST_SIZE + 2, most

    with av.open(str(captured)) as container:
        assert (container.streams.video[0].width, container.streams.video[0].height) == (640, 360)  # the best tier
        frames = list(container.decode(video=0))
    assert len(frames) >= 60
    cells = cell_colours(frames[-1], 2)
    for colour in ("red", "blue"):
        assert contains_colour(cells, rgb_to_yuv(COLORS[colour])), (colour, cells)
    with av.open(str(captured)) as container:
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    levels = tone_levels(samples[-48000:], [440.0, 660.0, 1000.0])
    assert levels[440.0] > levels[1000.0] + 20 and levels[660.0] > levels[1000.0] + 20, levels

    # The room closed with its last peer: its files went with it.
    await within(10, lambda: not directory.exists())


async def test_one_second_segments_are_cut_on_a_keyframe_every_second(server, config, tmp_path):
    """`--hls-segment 1`: a player starts three target durations behind, so 1 s segments halve its delay."""
    config.hls_segment_seconds, config.hls_tiers = 1.0, ()  # read when the room starts
    alice = Peer(server.url, "short", "alice", video=ColorTrack(COLORS["red"]), audio=ToneTrack(440.0), chat=False)
    playlist = tmp_path / "hls" / "short" / "high" / "index.m3u8"
    try:
        await alice.join()
        await within(20, lambda: playlist.exists() and playlist.read_text().count(".ts\n") >= LIST_SIZE)
        text = playlist.read_text()
    finally:
        await alice.close()
    assert "#EXT-X-TARGETDURATION:1\n" in text, text
    durations = [float(line[8:].rstrip(",")) for line in text.splitlines() if line.startswith("#EXTINF:")]
    assert all(0.9 <= d <= 1.3 for d in durations[1:]), durations  # the first one waits for its keyframe


@pytest.mark.parametrize(
    "args, says",
    [
        (["--hls", "/nonexistent/hls"], "does not exist"),
        (["--hls-tiers", "high"], "--hls-tiers needs --hls"),
        (["--hls", ".", "--hls-tiers", "high,huge"], "no tier huge"),
        (["--hls-segment", "1"], "--hls-segment needs --hls"),
        (["--hls", ".", "--hls-segment", "0.5"], "from 1 to 6 seconds"),
    ],
)
def test_bad_hls_settings_are_refused(args, says):
    out = subprocess.run([BIN / "mcu", "serve", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and says in out.stderr, out.stderr
