"""The web page in real browsers (Debian's chromium, driven by Playwright) with a Python peer.

Chromium's fake devices play generated files: a solid colour and a tone per browser.
The test runs inside a network namespace of its own (scripts/test does that), where
loopback is the only interface, so every packet stays on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from pathlib import Path

import pytest
from browser_checks import (
    PLACEHOLDER,
    PLACEHOLDER_RGB,
    SAMPLE_FUNCTION,
    chromium_args,
    grid_fractions,
    isolated_network,
    python_peer_sees_and_hears,
    rgb_close,
    write_wav,
    write_y4m,
)
from media_checks import cell_colours, close_to, tone_levels

from client.peer import Peer
from client.sources import COLORS, ColorTrack, ToneTrack, rgb_to_yuv
from mcu.config import Tier

playwright_api = pytest.importorskip("playwright.async_api")

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed (scripts/test installs it)", allow_module_level=True)
if not isolated_network():
    pytest.skip(
        "browser tests run only in a network namespace with loopback alone: run them through scripts/test",
        allow_module_level=True,
    )


SAMPLE_JS = f"({{cells, at}}) => ({SAMPLE_FUNCTION})(cells, at)"


@pytest.fixture
async def browsers(tmp_path):
    """Launches Chromium instances, each with its own fake camera and microphone files."""
    async with playwright_api.async_playwright() as playwright:
        launched = []

        async def launch(colour: str, frequency: float):
            video, audio = tmp_path / f"{colour}.y4m", tmp_path / f"{frequency:.0f}.wav"
            write_y4m(video, COLORS[colour])
            write_wav(audio, frequency)
            browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=chromium_args(video, audio))
            launched.append(browser)
            return await browser.new_page(viewport={"width": 1280, "height": 720})

        try:
            yield launch
        finally:
            for browser in launched:
                await browser.close()


async def wait_until(predicate, timeout: float, what: str):
    """Poll `predicate` (plain or async) until it is true, or fail after `timeout` s."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def test_two_browsers_and_a_python_peer_in_one_room(server, browsers):
    url = f"http://127.0.0.1:{server.port}/?room=browsers&name="
    anna = await browsers("red", 500.0)
    ben = await browsers("green", 700.0)
    await anna.goto(url + "anna")
    await ben.goto(url + "ben")
    await wait_until(lambda: anna.locator("#participants li").count(), 10, "anna's participant list")
    py = Peer(server.url, "browsers", "py", video=ColorTrack(COLORS["blue"]), audio=ToneTrack(900.0))
    try:
        await py.join()
        cells = grid_fractions(3)
        colours = [COLORS["red"], COLORS["green"], COLORS["blue"]]

        async def shows_everyone(page):
            # The grid follows join order, and the two browsers race to join: any order.
            sample = await page.evaluate(SAMPLE_JS, {"cells": cells, "at": [0.5, 0.35]})
            return sample is not None and all(any(rgb_close(s, c) for s in sample) for c in colours)

        for page in (anna, ben):
            await wait_until(lambda page=page: shows_everyone(page), 15, "the three colours in a browser")
            names = await page.locator("#participants li").all_text_contents()
            assert len(names) == 3 and any("py" in n for n in names), names
            # Everyone talks (tones): the list marks who speaks, and who holds the floor.
            await wait_until(
                lambda page=page: page.locator("#participants li.speaking", has_text="py").count(), 10, "py speaking"
            )
            await wait_until(lambda page=page: page.locator("#participants li.floor").count(), 10, "the floor")
        # The Python peer sees everyone and hears both browsers, not itself.
        cells_yuv = await python_peer_sees_and_hears(py, colours, [500.0, 700.0], 900.0)
        ben_cell = next(i for i, c in enumerate(cells_yuv) if close_to(c, rgb_to_yuv(COLORS["green"])))

        # Chat from a browser reaches the other browser and the Python peer, with the sender's name.
        await anna.fill("#chat-text", "hello from anna")
        await anna.click("#chat-send")
        await wait_until(
            lambda: ben.locator("#chat-log li", has_text="hello from anna").count(), 5, "anna's chat in ben's page"
        )
        assert "anna" in await ben.locator("#chat-log li").first.text_content()
        await py.wait_for(lambda: any(m.text == "hello from anna" for m in py.chat_messages), 5)
        message = next(m for m in py.chat_messages if m.text == "hello from anna")
        assert message.name == "anna" and abs(message.timestamp / 1000 - time.time()) < 10
        await py.chat("hello from py")
        await wait_until(lambda: anna.locator("#chat-log li", has_text="hello from py").count(), 5, "py's chat")

        ARTIFACTS.mkdir(exist_ok=True)
        await anna.screenshot(path=str(ARTIFACTS / "three-party.png"))

        # Ben turns his camera off: the others see his placeholder, not black.
        await ben.click("#camera")
        await py.wait_for(lambda: close_to(cell_colours(py.video_frame, 3, at=(0.5, 0.3))[ben_cell], PLACEHOLDER), 3)

        async def anna_sees_placeholder():
            sample = await anna.evaluate(SAMPLE_JS, {"cells": cells, "at": [0.5, 0.3]})
            return sample is not None and rgb_close(sample[ben_cell], PLACEHOLDER_RGB, 20)

        await wait_until(anna_sees_placeholder, 5, "ben's placeholder in anna's page")
        assert "camera off" in " ".join(await anna.locator("#participants li").all_text_contents())

        # Anna mutes: her tone leaves the mix.
        await anna.click("#mute")
        await asyncio.sleep(1.5)
        levels = tone_levels(py.audio(1.0), [500.0, 700.0])
        assert levels[500.0] < 100 < levels[700.0], levels
    finally:
        await py.close()


async def test_invalid_room_shows_the_error_and_does_not_reconnect(server, browsers):
    page = await browsers("red", 500.0)
    await page.goto(f"http://127.0.0.1:{server.port}/?room=bad%20room!&name=eve")
    await wait_until(lambda: page.locator("#error").is_visible(), 10, "the error")
    assert "room name is not valid" in await page.locator("#error").text_content()
    await asyncio.sleep(3)  # a looping page would be reconnecting by now
    assert await page.evaluate("window.meeting.stopped && window.meeting.retries === 0")
    assert not server.conference.rooms


async def test_denied_camera_joins_with_audio_only(server, browsers, tmp_path):
    page = await browsers("red", 500.0)
    # Take the camera away before the page asks for it, as a denied permission would.
    await page.add_init_script(
        """
        const real = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
        navigator.mediaDevices.getUserMedia = (c) => c.video
          ? Promise.reject(new DOMException('denied', 'NotAllowedError')) : real(c);
        """
    )
    await page.goto(f"http://127.0.0.1:{server.port}/?room=deny&name=nocam")
    # Her tile first: the grid follows join order.
    await wait_until(lambda: "deny" in server.conference.rooms, 10, "the page to join")
    py = Peer(server.url, "deny", "py", video=ColorTrack(COLORS["blue"]), audio=ToneTrack(900.0))
    try:
        await py.join()
        await py.wait_for(
            lambda: (
                py.video_frame is not None and close_to(cell_colours(py.video_frame, 2, at=(0.5, 0.3))[0], PLACEHOLDER)
            ),
            timeout=10,
        )
        assert "audio only" in await page.locator("#error").text_content()
        await asyncio.sleep(1.5)
        assert tone_levels(py.audio(1.0), [500.0])[500.0] > 100  # her microphone still works
    finally:
        await py.close()


async def test_page_reconnects_by_itself_when_the_websocket_drops(server, browsers):
    page = await browsers("red", 500.0)
    await page.goto(f"http://127.0.0.1:{server.port}/?room=drop&name=dora")

    def dora_ids() -> set[str]:
        room = server.conference.rooms.get("drop")
        return set(room.participants) if room else set()

    await wait_until(lambda: len(dora_ids()) == 1, 10, "the first join")
    first = dora_ids()
    for session in list(server.conference._sessions.values()):
        await session.ws.close()  # the network drops the signaling connection

    async def rejoined():
        ids = dora_ids()
        return len(ids) == 1 and ids != first and "In room" in await page.locator("#status").text_content()

    await wait_until(rejoined, 10, "the page to rejoin")
    # The new peer connection carries media again.
    room = server.conference.rooms["drop"]
    participant = next(iter(room.participants.values()))
    frames = room.video.stats.frames
    await wait_until(
        lambda: participant.video_frames > 0 and room.video.stats.frames > frames, 10, "media after reconnecting"
    )


async def test_a_page_with_tier_low_receives_the_low_picture(server, browsers):
    server.conference.config.tiers["low"] = Tier(320, 180, 15, 200_000)  # before the room exists
    page = await browsers("red", 500.0)
    await page.goto(f"http://127.0.0.1:{server.port}/?room=tiers&name=lo&tier=low")
    py = Peer(server.url, "tiers", "py", video=ColorTrack(COLORS["blue"]), audio=ToneTrack(900.0))
    try:
        await py.join()
        size = "[document.getElementById('remote').videoWidth, document.getElementById('remote').videoHeight]"
        await wait_until(lambda: page.evaluate(f"{size}[0] > 0"), 15, "the page's picture")
        assert await page.evaluate(size) == [320, 180]
        await py.wait_for(lambda: py.video_frame is not None, 10)
        config = server.conference.config
        assert (py.video_frame.width, py.video_frame.height) == (config.width, config.height)
    finally:
        await py.close()


async def test_the_page_shows_while_the_room_is_recorded(server, browsers, tmp_path):
    server.conference.config.record_dir = str(tmp_path)
    indicator = "#recording"
    watcher = await browsers("red", 500.0)
    await watcher.goto(f"http://127.0.0.1:{server.port}/?room=rec&name=watcher")
    await wait_until(lambda: "rec" in server.conference.rooms, 10, "the page to join")
    assert not await watcher.locator(indicator).is_visible()

    room = server.conference.rooms["rec"]
    recording = server.conference.begin_recording(room)
    await wait_until(lambda: watcher.locator(indicator).is_visible(), 5, "the indicator on recordingStarted")
    assert recording.path.name in await watcher.locator(indicator).get_attribute("title")
    # A page that joins a room already being recorded shows it from `joined`.
    late = await browsers("blue", 700.0)
    await late.goto(f"http://127.0.0.1:{server.port}/?room=rec&name=late")
    await wait_until(lambda: late.locator(indicator).is_visible(), 10, "the indicator from joined")

    await server.conference.end_recording(room)
    await wait_until(lambda: watcher.locator(indicator).is_hidden(), 5, "the indicator gone on recordingStopped")
    await wait_until(lambda: late.locator(indicator).is_hidden(), 5, "the late page's indicator gone")


async def test_the_page_rejoins_by_itself_when_its_worker_dies(browsers):
    """`mcu serve --workers 2`: the room's worker is killed; the page gets `reconnect`, joins again, and its
    picture is composed by the other (or the restarted) worker."""
    import json
    import os
    import signal
    import urllib.request

    from conftest import free_port, start_mcu, stop_process

    port = free_port()
    front = start_mcu(port, "--workers", "2", "--size", "640x360", "--fps", "15")

    def room() -> dict | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            state = json.load(response)
        stats = state["rooms"].get("work")
        return stats and {**stats, "pid": next(w["pid"] for w in state["workers"] if w["index"] == stats["worker"])}

    try:
        page = await browsers("red", 500.0)
        await page.goto(f"http://127.0.0.1:{port}/?room=work&name=wendy")
        # The page's voice is decoded by the worker: its media reaches it directly.
        await wait_until(lambda: (r := room()) and r["peers"] == 1 and r["audioDecodes"] > 50, 20, "the first join")
        victim = room()["pid"]  # type: ignore[index]
        os.kill(victim, signal.SIGKILL)

        async def rejoined():
            now = room()
            return (
                now
                and now["pid"] != victim
                and now["peers"] == 1
                and now["audioDecodes"] > 50
                and "In room" in await page.locator("#status").text_content()
            )

        await wait_until(rejoined, 15, "the page to join again on a live worker")
    finally:
        stop_process(front, grace=10)
