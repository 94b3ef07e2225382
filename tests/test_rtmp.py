"""RTMP out: a room pushed to a real RTMP far end (ffmpeg listening), read back with ffmpeg and PyAV."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import av
import numpy as np
import pytest
from aiohttp import web
from conftest import free_port, start_mcu, stop_process
from media_checks import cell_colours, contains_colour, tone_levels

from client.peer import Peer
from client.sources import COLORS, ColorTrack, ToneTrack, rgb_to_yuv
from mcu.config import Config
from mcu.rooms.broadcast import backoff
from mcu.rooms.conference import MAX_STREAMS
from mcu.rooms.streams import StreamUrlError, check_url, redact
from mcu.server.app import create_app
from signaling import tokens
from signaling.ice import use_host_addresses

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")

#: The stream key: it must never reach the server's log.
KEY = "sk-9f27c4e1d0b3a6"


def events(peer: Peer, kind: str) -> list[dict]:
    return [e for e in peer.events if e["type"] == kind]


def listen(port: int, path: Path) -> subprocess.Popen:
    """An RTMP far end: ffmpeg waiting for one publisher on /live/KEY, copying what it gets into `path`."""
    return subprocess.Popen(
        ["ffmpeg", "-v", "error", "-listen", "1", "-i", f"rtmp://127.0.0.1:{port}/live/{KEY}", "-c", "copy", "-y"]
        + [str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def http(method: str, url: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, method=method, headers={"Content-Type": "application/json"})
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def check_colours_and_tones(path: Path, colours: list[str], frequencies: list[float]) -> None:
    """The file's last picture shows each peer's colour, and its audio carries each peer's tone."""
    with av.open(str(path)) as container:
        kinds = {s.type: s.codec_context.name for s in container.streams}
        assert kinds == {"video": "h264", "audio": "aac"}, kinds
        frames = list(container.decode(video=0))
    assert len(frames) >= 30, len(frames)
    cells = cell_colours(frames[-1], 2)
    for colour in colours:
        assert contains_colour(cells, rgb_to_yuv(COLORS[colour])), (colour, cells)
    with av.open(str(path)) as container:
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    assert len(samples) >= 48000, len(samples)
    last = samples[-48000:]
    levels = tone_levels(last, [*frequencies, 1000.0])
    for frequency in frequencies:
        assert levels[frequency] > levels[1000.0] + 20, levels


def test_urls_are_checked_and_keys_redacted():
    assert check_url("rtmps://live.example:443/app/key") == "rtmps://live.example:443/app/key"
    for bad in ("http://x/live/k", "rtmp:///live/k", "srt://x:9000", "rtmp://x/live/k y", "not a url"):
        with pytest.raises(StreamUrlError):
            check_url(bad)
    assert redact(f"rtmp://a.example/live/{KEY}") == "rtmp://a.example/live/***"
    assert redact(f"rtmps://u:p@a.example:444/app/{KEY}?auth=1") == "rtmps://***@a.example:444/app/***?***"
    assert [backoff(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


async def test_a_stream_retries_until_its_far_end_answers_and_carries_the_room(tmp_path):
    port, rtmp_port = free_port(), free_port()
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        server = start_mcu(port, "--size", "640x360", "--fps", "15", stdout=log, stderr=log)
    url = f"ws://127.0.0.1:{port}/ws"
    alice = Peer(url, "live", "alice", video=ColorTrack(COLORS["red"]), audio=ToneTrack(440.0), chat=False)
    bob = Peer(url, "live", "bob", video=ColorTrack(COLORS["blue"]), audio=ToneTrack(660.0), chat=False)
    listener = None
    flv, again = tmp_path / "received.flv", tmp_path / "again.flv"
    try:
        await alice.join()
        await bob.join()
        await alice.wait_for(lambda: alice.video_frames > 0, 20)
        # Nobody listens yet: the stream fails, says so, and tries again; the room goes on.
        await alice.send({"type": "startStream", "url": f"rtmp://127.0.0.1:{rtmp_port}/live/{KEY}", "tier": "high"})
        await alice.wait_for(lambda: events(alice, "streamFailed"), 15)
        failed = events(alice, "streamFailed")[0]
        assert failed["state"] == "retrying" and failed["retryIn"] <= 1.0, failed
        assert failed["url"] == f"rtmp://127.0.0.1:{rtmp_port}/live/***" and KEY not in json.dumps(failed)
        status, listed = http("GET", f"http://127.0.0.1:{port}/api/rooms/live/streams")
        assert status == 200 and [s["state"] for s in listed["streams"]] == ["retrying"], listed
        assert 'mcu_streams{state="retrying"} 1.0' in metrics(port)
        frames = alice.video_frames
        await asyncio.sleep(1.5)
        assert alice.video_frames >= frames + 10  # the composite kept flowing meanwhile

        listener = listen(rtmp_port, flv)
        await alice.wait_for(lambda: events(alice, "streamStarted"), 40)
        started = events(alice, "streamStarted")[0]
        failures = events(alice, "streamFailed")
        assert started["state"] == "live" and started["id"] == failed["id"] and started["failures"] >= 1
        await bob.wait_for(lambda: events(bob, "streamStarted"), 5)
        scraped = metrics(port)
        assert 'mcu_streams{state="live"} 1.0' in scraped and KEY not in scraped
        status, room = http("GET", f"http://127.0.0.1:{port}/api/rooms/live")
        assert room["stats"]["streams"] == {"live": 1}, room["stats"]["streams"]
        await asyncio.sleep(5)

        # The far end goes away: the stream says so and tries again, and reaches the next one.
        listener.terminate()
        await asyncio.to_thread(listener.wait, 15)
        await alice.wait_for(lambda: len(events(alice, "streamFailed")) > len(failures), 15)
        assert events(alice, "streamFailed")[-1]["error"].startswith("the connection failed")
        listener = listen(rtmp_port, again)
        await alice.wait_for(lambda: len(events(alice, "streamStarted")) == 2, 40)
        frames = alice.video_frames
        await asyncio.sleep(3)
        assert alice.video_frames >= frames + 30  # the composite flowed all along

        await alice.send({"type": "stopStream", "id": started["id"]})
        await alice.wait_for(lambda: events(alice, "streamStopped"), 10)
        assert events(alice, "streamStopped")[0]["reason"] == "stopped"
        await asyncio.to_thread(listener.wait, 15)
    finally:
        await asyncio.gather(alice.close(), bob.close())
        if listener is not None and listener.poll() is None:
            listener.kill()
            listener.wait()
        stop_process(server)
    assert listener.returncode == 0, listener.stderr.read() if listener.stderr else ""
    check_colours_and_tones(flv, ["red", "blue"], [440.0, 660.0])
    check_colours_and_tones(again, ["red", "blue"], [440.0, 660.0])
    log_text = log_path.read_text()
    assert "live/***" in log_text  # the stream is logged, redacted
    assert KEY not in log_text


async def test_bad_stream_requests_are_refused(server, config):
    base = f"http://127.0.0.1:{server.port}/api/rooms/bad"
    alice = Peer(server.url, "bad", "alice", video=ColorTrack(COLORS["red"]), audio=ToneTrack(440.0), chat=False)
    try:
        await alice.join()
        status, body = await asyncio.to_thread(http, "POST", f"{base}/streams", {"url": "http://example.invalid/x"})
        assert (status, body["code"]) == (400, "invalid_stream_url")
        status, body = await asyncio.to_thread(http, "POST", f"{base}/streams", {"url": "rtmp://h/a/k", "tier": "x"})
        assert (status, body["code"]) == (400, "unknown_tier")
        status, body = await asyncio.to_thread(http, "DELETE", f"{base}/streams/nosuchid")
        assert (status, body["code"]) == (404, "unknown_stream")
        await alice.send({"type": "startStream", "url": "udp://127.0.0.1:9/x"})
        await alice.send({"type": "stopStream", "id": "nosuchid"})
        await alice.wait_for(lambda: len(alice.errors) >= 2, 10)
        assert [e.code for e in alice.errors] == ["invalid_stream_url", "unknown_stream"]
        status, body = await asyncio.to_thread(http, "GET", f"{base}/streams")
        assert (status, body["streams"]) == (200, [])

        # Several at once, up to the limit; each its own id, each stopped on its own.
        ids = []
        for n in range(MAX_STREAMS):
            status, body = await asyncio.to_thread(
                http, "POST", f"{base}/streams", {"url": f"rtmp://127.0.0.1:9/a/{n}"}
            )
            assert status == 201 and body["url"] == "rtmp://127.0.0.1:9/a/***", body
            ids.append(body["id"])
        status, body = await asyncio.to_thread(http, "POST", f"{base}/streams", {"url": "rtmp://127.0.0.1:9/a/x"})
        assert (status, body["code"]) == (409, "too_many_streams")
        status, body = await asyncio.to_thread(http, "GET", f"{base}/streams")
        assert sorted(s["id"] for s in body["streams"]) == sorted(ids)
        for stream_id in ids:
            status, body = await asyncio.to_thread(http, "DELETE", f"{base}/streams/{stream_id}")
            assert status == 200 and body["id"] == stream_id
        assert server.conference.rooms["bad"].streams == {}
        await alice.wait_for(lambda: len(events(alice, "streamStopped")) == MAX_STREAMS, 10)
    finally:
        await alice.close()


@pytest.fixture
def secret_config() -> Config:
    return Config(width=640, height=360, fps=15, video_bitrate=600_000, secret="s3cret-of-at-least-32-bytes-length!")


async def test_a_stream_needs_the_record_grant(secret_config):
    use_host_addresses(["127.0.0.1"])
    runner = web.AppRunner(create_app(secret_config), shutdown_timeout=2)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    guest_token = tokens.issue("s3cret-of-at-least-32-bytes-length!", "g", "guest", 600, ["publish", "subscribe"])
    host_token = tokens.issue(
        "s3cret-of-at-least-32-bytes-length!", "g", "host", 600, ["publish", "subscribe", "record"]
    )
    url = f"ws://127.0.0.1:{port}/ws"
    guest = Peer(url, "g", "guest", video=ColorTrack(COLORS["red"]), chat=False, token=guest_token)
    try:
        await guest.join()
        await guest.send({"type": "startStream", "url": "rtmp://127.0.0.1:9/live/k"})
        await guest.wait_for(lambda: guest.errors, 10)
        assert [e.code for e in guest.errors] == ["forbidden"]
        api = f"http://127.0.0.1:{port}/api/rooms/g/streams"
        status, body = await asyncio.to_thread(http, "POST", api, {"url": "rtmp://127.0.0.1:9/a/k"}, guest_token)
        assert (status, body["code"]) == (403, "forbidden")
        status, body = await asyncio.to_thread(http, "GET", api, None, host_token)
        assert (status, body["streams"]) == (200, [])
    finally:
        await guest.close()
        await runner.cleanup()
