"""Recording a room's composite: real peers, a real server, files checked with ffprobe/ffmpeg."""

from __future__ import annotations

import asyncio
import datetime
import fractions
import json
import re
import resource
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import free_port, start_mcu, stop_process
from media_checks import cell_colours, close_to, contains_colour

from client.peer import Peer
from client.sources import COLORS, ColorTrack, FlashBeep, ToneTrack, rgb_to_yuv
from mcu.config import Config
from mcu.media.encoders import VideoEncoder
from mcu.rooms.recording import Recording

FILE_NAME = re.compile(r"^rec-\d{8}T\d{6}Z(-\d+)?\.webm$")
#: EBML ids of the Matroska elements a finished file has and a killed one lacks.
CUES_ID = bytes.fromhex("1C53BB6B")
DURATION_ID = bytes.fromhex("4489")

needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffprobe") is None or shutil.which("ffmpeg") is None, reason="ffmpeg/ffprobe not installed"
)


@pytest.fixture
def config(tmp_path) -> Config:
    return Config(width=640, height=360, fps=15, video_bitrate=600_000, record_dir=str(tmp_path))


def ffprobe(path: Path) -> dict:
    """ffprobe's view of a file: its format and streams (fails the test if ffprobe cannot read it)."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-of", "json", "-show_format", "-show_streams", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def decoded_until(path: Path) -> tuple[float, float]:
    """The last video and audio times that ffmpeg decodes from the file, in seconds."""
    ends = []
    for stream in ("v", "a"):
        out = subprocess.run(
            [
                "ffprobe",
                "-v",
                "error",
                "-select_streams",
                stream,
                "-show_entries",
                "frame=pts_time",
                "-of",
                "csv=p=0",
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        times = [float(t) for t in out.stdout.split() if t.strip() not in ("", "N/A")]
        ends.append(max(times, default=0.0))
    decode = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"], capture_output=True, text=True, timeout=120
    )
    assert decode.returncode == 0, decode.stderr
    return ends[0], ends[1]


def events(peer: Peer, kind: str) -> list[dict]:
    return [e for e in peer.events if e["type"] == kind]


def error_codes(peer: Peer) -> list[str]:
    return [e.code for e in peer.errors]


def make_peer(url: str, name: str, colour: str, frequency: float, room: str = "rec") -> Peer:
    return Peer(url, room, name, video=ColorTrack(COLORS[colour]), audio=ToneTrack(frequency), chat=False)


@needs_ffmpeg
async def test_start_stop_by_signaling_gives_a_finished_webm_of_the_recorded_length(server, tmp_path):
    alice = make_peer(server.url, "alice", "red", 440.0)
    bob = make_peer(server.url, "bob", "blue", 660.0)
    try:
        await alice.join()
        await alice.wait_for(lambda: alice.video_frames > 0, 20)
        await alice.send({"type": "startRecording"})
        await alice.wait_for(lambda: events(alice, "recordingStarted"), 10)
        started = time.monotonic()
        await bob.join()
        # A late joiner learns that the room is being recorded.
        joined = events(bob, "joined")[0]
        started_event = events(alice, "recordingStarted")[0]
        assert joined["recording"] == {"file": started_event["file"], "startedAt": started_event["startedAt"]}
        await asyncio.sleep(4)
        await alice.send({"type": "stopRecording"})
        await alice.wait_for(lambda: events(alice, "recordingStopped"), 10)
        recorded = time.monotonic() - started
        await bob.wait_for(lambda: events(bob, "recordingStopped"), 10)
    finally:
        await asyncio.gather(alice.close(), bob.close())
    stopped = events(alice, "recordingStopped")[0]
    assert stopped["reason"] == "stopped" and "message" not in stopped
    assert FILE_NAME.match(stopped["file"]), stopped
    path = tmp_path / stopped["file"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [stopped["file"]]

    probe = ffprobe(path)
    codecs = {s["codec_type"]: s for s in probe["streams"]}
    assert codecs["video"]["codec_name"] == "vp8" and codecs["audio"]["codec_name"] == "opus"
    assert (codecs["video"]["width"], codecs["video"]["height"]) == (640, 360)
    assert int(codecs["audio"]["sample_rate"]) == 48000
    duration = float(probe["format"]["duration"])
    assert abs(duration - recorded) <= 0.5, (duration, recorded)
    assert abs(stopped["duration"] - duration) <= 0.2, (stopped, duration)
    data = path.read_bytes()
    assert CUES_ID in data and DURATION_ID in data  # finalized: an index and a duration

    # The file opens on a picture: its first packet is a keyframe, decodable at once.
    with av.open(str(path)) as container:
        first = next(container.demux(video=0))
        assert first.is_keyframe
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        # Alice's picture, whether Bob's tile was there yet or not.
        assert contains_colour(cell_colours(frame, 1) + cell_colours(frame, 2), rgb_to_yuv(COLORS["red"]))


@needs_ffmpeg
async def test_started_at_is_the_wall_clock_time_of_the_files_first_picture(tmp_path):
    """Asked for before the room has a picture, a recording starts, and says so, at that picture."""
    epoch = time.monotonic() - 10  # a room whose clock started 10 s ago
    announced: list[Recording] = []
    recording = Recording("rec", tmp_path, 64, 64, epoch, announced.append, lambda *_: pytest.fail("failed"))
    assert recording.describe()["startedAt"] is None
    # The first picture was composed at 8.5 s on the room's clock, 1.5 s ago, and reaches the file now.
    grey = av.VideoFrame.from_ndarray(np.full((96, 64), 128, np.uint8), format="yuv420p")
    [(data, keyframe)] = VideoEncoder(64, 64, 30, 100_000).encode(grey, 0)  # the room's encoder
    assert keyframe
    packet = av.Packet(data)
    packet.pts, packet.time_base, packet.is_keyframe = 8500, fractions.Fraction(1, 1000), True
    now = time.time()
    recording.video.push(packet)
    assert await recording.wait_started(5)
    assert announced == [recording]
    started_at = recording.describe()["startedAt"] / 1000
    assert abs(started_at - (now - 1.5)) <= 0.05, (started_at, now)
    await recording.stop()
    tags = ffprobe(recording.path)["format"]["tags"]
    created = datetime.datetime.fromisoformat(tags["creation_time"].replace("Z", "+00:00")).timestamp()
    assert abs(created - started_at) <= 0.001, (created, started_at)

    # Stopped before any picture came: it never started, and says so at once.
    never = Recording("rec", tmp_path, 64, 64, epoch, announced.append, lambda *_: pytest.fail("failed"))
    waiting = asyncio.ensure_future(never.wait_started(30))
    await never.stop()
    assert await asyncio.wait_for(waiting, 1) is False
    assert never.describe()["startedAt"] is None and never.duration == 0
    assert not never.path.exists()  # nothing to play: no empty file left
    assert announced == [recording]


async def test_recording_errors_are_clear_and_the_room_goes_on(server, tmp_path):
    alice = make_peer(server.url, "alice", "red", 440.0)
    try:
        await alice.join()
        await alice.wait_for(lambda: alice.video_frames > 0, 20)
        await alice.send({"type": "stopRecording"})
        await alice.wait_for(lambda: "not_recording" in error_codes(alice), 10)
        await alice.send({"type": "startRecording"})
        await alice.send({"type": "startRecording"})
        await alice.wait_for(lambda: "already_recording" in error_codes(alice), 10)
        await alice.wait_for(lambda: events(alice, "recordingStarted"), 10)
        await alice.send({"type": "stopRecording"})
        await alice.wait_for(lambda: events(alice, "recordingStopped"), 10)
        # A directory that does not exist, and one that no one may write in (not even root).
        for directory in (tmp_path / "missing", Path("/proc")):
            server.conference.config.record_dir = str(directory)
            before = error_codes(alice).count("recording_failed")
            await alice.send({"type": "startRecording"})
            await alice.wait_for(lambda: error_codes(alice).count("recording_failed") > before, 10)
            assert str(directory) in alice.errors[-1].message
        server.conference.config.record_dir = None
        await alice.send({"type": "startRecording"})
        await alice.wait_for(lambda: error_codes(alice).count("recording_failed") == 3, 10)
        assert "--record-dir" in alice.errors[-1].message
        # The session and the media go on.
        frames = alice.video_frames
        await alice.wait_for(lambda: alice.video_frames > frames + 10, 10)
        assert len(events(alice, "recordingStarted")) == 1
        assert server.conference.rooms["rec"].recording is None
    finally:
        await alice.close()


async def test_http_api_starts_and_stops_a_recording(server, tmp_path):
    base = f"http://127.0.0.1:{server.port}/api/rooms"
    alice = make_peer(server.url, "alice", "red", 440.0)

    def call(method: str, room: str = "rec") -> tuple[int, dict]:
        request = urllib.request.Request(f"{base}/{room}/recording", method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    loop = asyncio.get_running_loop()
    try:
        await alice.join()
        await alice.wait_for(lambda: alice.video_frames > 0, 20)
        status, body = await loop.run_in_executor(None, call, "POST", "nobody")
        assert status == 404 and body["code"] == "room_not_found"
        status, body = await loop.run_in_executor(None, call, "DELETE")
        assert status == 409 and body["code"] == "not_recording"
        status, body = await loop.run_in_executor(None, call, "POST")
        assert status == 201 and FILE_NAME.match(body["file"]), body
        await alice.wait_for(lambda: events(alice, "recordingStarted"), 10)
        started = events(alice, "recordingStarted")[0]
        # The reply waited for the file's first picture: it says when its time 0 was.
        assert (started["file"], started["startedAt"]) == (body["file"], body["startedAt"]), (started, body)
        status, again = await loop.run_in_executor(None, call, "POST")
        assert status == 409 and again["code"] == "already_recording"
        await asyncio.sleep(2)
        status, stopped = await loop.run_in_executor(None, call, "DELETE")
        assert status == 200 and stopped["file"] == body["file"] and stopped["duration"] > 1.5, stopped
        await alice.wait_for(lambda: events(alice, "recordingStopped"), 10)
    finally:
        await alice.close()
    assert (tmp_path / body["file"]).stat().st_size > 10_000


def start_server(tmp_path: Path, *extra: str, file_limit: int | None = None) -> tuple[subprocess.Popen, str]:
    """`mcu serve --record-dir tmp_path --auto-record` as a process (optionally with a file size limit)."""
    port = free_port()

    def limit() -> None:
        if file_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    process = start_mcu(
        port,
        "--size",
        "640x360",
        "--fps",
        "15",
        "--record-dir",
        str(tmp_path),
        "--auto-record",
        *extra,
        preexec_fn=limit,
    )
    return process, f"ws://127.0.0.1:{port}/ws"


@needs_ffmpeg
async def test_kill_9_leaves_a_file_that_plays_to_within_2_seconds_of_the_kill(tmp_path):
    process, url = start_server(tmp_path)
    peer = make_peer(url, "alice", "red", 440.0)
    try:
        await peer.join()
        await peer.wait_for(lambda: peer.video_frames > 0 and events(peer, "recordingStarted"), 20)
        recording = events(peer, "recordingStarted")[0]
        assert FILE_NAME.match(recording["file"]), recording
        await asyncio.sleep(6)
        # Killed while the peer is still in the room: nothing gets to finish the file.
        killed_at = time.time()
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        stop_process(process)
        await asyncio.wait_for(peer.close(), 15)
    path = tmp_path / recording["file"]
    data = path.read_bytes()
    assert CUES_ID not in data  # really cut short: no index was written
    codecs = {s["codec_type"]: s["codec_name"] for s in ffprobe(path)["streams"]}
    assert codecs == {"video": "vp8", "audio": "opus"}
    video_end, audio_end = decoded_until(path)
    recorded = killed_at - recording["startedAt"] / 1000
    assert video_end >= recorded - 2 and audio_end >= recorded - 2, (video_end, audio_end, recorded)


@needs_ffmpeg
async def test_sigterm_finalizes_the_file_with_its_duration_and_index(tmp_path):
    process, url = start_server(tmp_path)
    try:
        peer = make_peer(url, "alice", "red", 440.0)
        await peer.join()
        await peer.wait_for(lambda: peer.video_frames > 0 and events(peer, "recordingStarted"), 20)
        recording = events(peer, "recordingStarted")[0]
        # The room was created by this join: its recording was asked for before it had a picture.
        assert events(peer, "joined")[0]["recording"] is None
        await asyncio.sleep(4)
        terminated_at = time.time()
        process.send_signal(signal.SIGTERM)
        output = await asyncio.get_running_loop().run_in_executor(None, lambda: process.communicate(timeout=20)[0])
        assert process.returncode == 0, output
        await asyncio.wait_for(peer.close(), 15)
    finally:
        stop_process(process)
    path = tmp_path / recording["file"]
    data = path.read_bytes()
    assert CUES_ID in data and DURATION_ID in data
    probe = ffprobe(path)["format"]
    duration = float(probe["duration"])
    # startedAt is the file's time 0, also in the file itself (Matroska's DateUTC).
    created = datetime.datetime.fromisoformat(probe["tags"]["creation_time"].replace("Z", "+00:00"))
    assert abs(created.timestamp() * 1000 - recording["startedAt"]) <= 1, (created, recording)
    recorded = terminated_at - recording["startedAt"] / 1000
    print(f"file {duration:.3f} s, from startedAt to SIGTERM {recorded:.3f} s")
    assert abs(duration - recorded) <= 0.25, (duration, recorded)
    assert "recording" in output and "stopped after" in output, output


@needs_ffmpeg
async def test_a_full_disk_stops_the_recording_the_room_goes_on_and_the_file_stays_readable(tmp_path):
    limit = 150_000
    process, url = start_server(tmp_path, file_limit=limit)
    peer = make_peer(url, "alice", "red", 440.0)
    try:
        await peer.join()
        await peer.wait_for(lambda: events(peer, "recordingStopped"), 60)
        stopped = events(peer, "recordingStopped")[0]
        assert stopped["reason"] == "failed" and "message" in stopped, stopped
        # The room goes on: media still flows and another peer can join.
        frames = peer.video_frames
        await peer.wait_for(lambda: peer.video_frames > frames + 15, 10)
        bob = make_peer(url, "bob", "blue", 660.0)
        await bob.join()
        await bob.wait_for(lambda: bob.video_frames > 0, 20)
        await bob.close()
        assert process.poll() is None
    finally:
        await asyncio.wait_for(peer.close(), 15)
        stop_process(process)
    path = tmp_path / stopped["file"]
    assert 0 < path.stat().st_size <= limit
    video_end, audio_end = decoded_until(path)
    assert video_end > 1 and audio_end > 1


def onsets(times: np.ndarray, on: np.ndarray) -> np.ndarray:
    """The times at which `on` turns true (after being false)."""
    rising = np.flatnonzero(on[1:] & ~on[:-1]) + 1
    return times[rising]


@needs_ffmpeg
async def test_audio_and_video_are_in_sync_within_80_ms(server, tmp_path):
    source = FlashBeep(period=1.0, length=0.2, fps=15)
    peer = Peer(server.url, "rec", "flash", video=source.video, audio=source.audio, chat=False)
    try:
        await peer.join()
        await peer.wait_for(lambda: peer.video_frames > 0, 20)
        await peer.send({"type": "startRecording"})
        await peer.wait_for(lambda: events(peer, "recordingStarted"), 10)
        await asyncio.sleep(8)
        await peer.send({"type": "stopRecording"})
        await peer.wait_for(lambda: events(peer, "recordingStopped"), 10)
    finally:
        await peer.close()
    path = tmp_path / events(peer, "recordingStopped")[0]["file"]
    with av.open(str(path)) as container:
        frames = [(f.time, f.to_ndarray(format="gray").mean()) for f in container.decode(video=0)]
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
        decoded = container.decode(audio=0)
        chunks = [(f.time, r.to_ndarray().reshape(-1)) for f in decoded for r in resampler.resample(f)]
    video_times, luma = (np.array(v) for v in zip(*frames))
    flashes = onsets(video_times, luma > (luma.min() + luma.max()) / 2)
    # Audio loudness per millisecond, from the decoded samples' own timestamps.
    samples = np.concatenate([c for _, c in chunks]).astype(np.float64)
    audio_start = chunks[0][0]
    envelope = np.abs(samples[: len(samples) // 48 * 48]).reshape(-1, 48).max(axis=1)
    beeps = onsets(audio_start + np.arange(len(envelope)) / 1000, envelope > 0.25 * 32767)
    assert len(flashes) >= 5 and len(beeps) >= 5, (flashes, beeps)
    offsets = [beeps[np.abs(beeps - t).argmin()] - t for t in flashes]
    offset = float(np.median(offsets))
    print(f"audio - video: median {offset * 1000:.0f} ms over {len(offsets)} flashes: {np.round(offsets, 3)}")
    assert abs(offset) <= 0.080, offsets


@needs_ffmpeg
async def test_a_participant_who_joins_and_leaves_shows_in_and_disappears_from_the_file(server, tmp_path):
    alice = make_peer(server.url, "alice", "red", 440.0)
    bob = make_peer(server.url, "bob", "blue", 660.0)
    red, blue = rgb_to_yuv(COLORS["red"]), rgb_to_yuv(COLORS["blue"])
    try:
        await alice.join()
        await alice.wait_for(lambda: alice.video_frames > 0, 20)
        await alice.send({"type": "startRecording"})
        await alice.wait_for(lambda: events(alice, "recordingStarted"), 10)
        started = time.monotonic()
        await asyncio.sleep(3)
        await bob.join()
        joined = time.monotonic() - started
        await asyncio.sleep(4)
        await bob.close()
        left = time.monotonic() - started
        await asyncio.sleep(3)
        await alice.send({"type": "stopRecording"})
        await alice.wait_for(lambda: events(alice, "recordingStopped"), 10)
    finally:
        await asyncio.gather(alice.close(), bob.close())
    path = tmp_path / events(alice, "recordingStopped")[0]["file"]
    with av.open(str(path)) as container:
        frames = [(f.time, cell_colours(f, 1), cell_colours(f, 2)) for f in container.decode(video=0)]
    before = [f for f in frames if f[0] < joined - 0.5]
    during = [f for f in frames if joined + 2 < f[0] < left - 0.5]
    after = [f for f in frames if f[0] > left + 1.5]
    assert len(before) > 20 and len(during) > 10 and len(after) > 10, (len(before), len(during), len(after))
    # Alone, Alice fills the one cell; with Bob, the two cells are Alice's red and Bob's blue.
    assert all(close_to(one[0], red) for _, one, _ in before)
    assert all(close_to(two[0], red) and close_to(two[1], blue) for _, _, two in during)
    assert all(close_to(one[0], red) and not contains_colour(two, blue) for _, one, two in after)
