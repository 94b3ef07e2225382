"""The page that runs the call, in Debian's Chromium (Playwright): a moderator changes the layout, records,
mutes and removes; a page switches its camera without leaving; the list shows any name; the first picture
comes soon after ICE connects."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest
from browser_checks import chromium_args, chromium_playwright, poll, write_wav, write_y4m
from media_checks import close_to

from client.peer import Peer
from client.sources import COLORS, ColorTrack, ToneTrack, rgb_to_yuv
from compositor.layout import GRID, SPEAKER, Layout
from mcu.config import Config

playwright_api = chromium_playwright()

WIDTH, HEIGHT = 640, 360
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

# Before the page's script runs: when its media connected, and when its composite showed its first picture.
TIMING_SCRIPT = """
window.timing = {};
const NativePeerConnection = window.RTCPeerConnection;
window.RTCPeerConnection = class extends NativePeerConnection {
  constructor(...args) {
    super(...args);
    this.addEventListener("connectionstatechange", () => {
      if (this.connectionState === "connected") window.timing.connected ??= performance.now();
    });
  }
};
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("remote").requestVideoFrameCallback(() => {
    window.timing.firstPicture ??= performance.now();
  });
});
"""

# The page's outgoing video: its track and how many frames it has encoded.
UPSTREAM_JS = """async () => {
  const sender = window.meeting.pc.getSenders().find((s) => s.track?.kind === "video");
  const stats = await sender.getStats();
  const outbound = [...stats.values()].find((s) => s.type === "outbound-rtp");
  return { track: sender.track.id, label: sender.track.label, framesEncoded: outbound?.framesEncoded ?? 0 };
}"""


@pytest.fixture
def config() -> Config:
    return Config(width=WIDTH, height=HEIGHT, fps=15, video_bitrate=600_000)


@pytest.fixture
async def chromium(tmp_path):
    """Launches a Chromium with a solid red camera (or, `fake_cameras=N`, Chromium's N generated ones)."""
    async with playwright_api.async_playwright() as playwright:
        launched = []

        async def launch(fake_cameras: int = 0, viewport=(1280, 720)):
            video, audio = tmp_path / "red.y4m", tmp_path / "tone.wav"
            write_y4m(video, COLORS["red"])
            write_wav(audio, 500.0)
            args = chromium_args(video, audio)
            if fake_cameras:
                args = [a for a in args if not a.startswith("--use-file-for-fake-video-capture")]
                args[args.index("--use-fake-device-for-media-stream")] += f"=device-count={fake_cameras}"
            browser = await playwright.chromium.launch(executable_path="/usr/bin/chromium", args=args)
            launched.append(browser)
            page = await browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.on("pageerror", lambda error: print("page error:", error))
            await page.add_init_script(TIMING_SCRIPT)
            return page

        try:
            yield launch
        finally:
            for browser in launched:
                await browser.close()


def colour_at(frame, x: int, y: int) -> tuple[int, int, int]:
    """Mean Y, U, V of a 16x16 block of a received frame around (x, y)."""
    planes = frame.to_ndarray(format="yuv420p")
    height, width = frame.height, frame.width
    u = planes[height : height + height // 4].reshape(height // 2, width // 2)
    v = planes[height + height // 4 :].reshape(height // 2, width // 2)
    return (
        int(planes[y - 8 : y + 8, x - 8 : x + 8].mean()),
        int(u[y // 2 - 4 : y // 2 + 4, x // 2 - 4 : x // 2 + 4].mean()),
        int(v[y // 2 - 4 : y // 2 + 4, x // 2 - 4 : x // 2 + 4].mean()),
    )


def laid_out(frame, layout: Layout, colours: list[tuple[int, int, int]]) -> bool:
    """Whether `frame` places the three colours as `layout` does, whoever holds the floor (any order)."""
    if frame is None:
        return False
    for speaker in range(len(colours)):
        rects = [rect for rect, _ in layout.rects(len(colours), frame.width, frame.height, speaker)]
        seen = [colour_at(frame, r.x + r.width // 2, r.y + r.height // 2) for r in rects]
        if all(any(close_to(s, c) for s in seen) for c in colours):
            return True
    return False


def ffprobe(path: Path) -> dict:
    run = subprocess.run(
        ["ffprobe", "-v", "error", "-of", "json", "-show_format", "-show_streams", str(path)],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    return json.loads(run.stdout)


def row(page, name: str):
    return page.locator("#participants li", has_text=name)


async def test_a_moderator_runs_the_call(server, chromium, tmp_path) -> None:
    server.conference.config.record_dir = str(tmp_path)
    page = await chromium()
    await page.goto(f"http://127.0.0.1:{server.port}/?room=run&name=mod")
    py = Peer(server.url, "run", "py", video=ColorTrack(COLORS["blue"]), audio=ToneTrack(700.0, 0.0))
    victim = Peer(server.url, "run", "김민수", video=ColorTrack(COLORS["green"]), audio=ToneTrack(900.0, 0.0))
    try:
        await poll(lambda: page.evaluate("window.timing.firstPicture !== undefined"), 15, "the page's first picture")
        timing = await page.evaluate("window.timing")
        first_picture = (timing["firstPicture"] - timing["connected"]) / 1000
        print(f"first composite picture {first_picture:.3f} s after ICE connected")
        assert first_picture < 5

        await py.join()
        await victim.join()
        colours = [rgb_to_yuv(COLORS[c]) for c in ("red", "blue", "green")]
        await py.wait_for(lambda: laid_out(py.video_frame, GRID, colours), 15)
        # Any name shows as written: the list's text is the peer's name, Hangul included.
        await poll(lambda: row(page, "김민수").count(), 10, "김민수 in the list")
        assert await row(page, "김민수").locator(".name").text_content() == "김민수"

        # The layout picker offers what the server accepts, and changing it changes the composite.
        await poll(lambda: page.locator("#layout").is_visible(), 5, "the layout picker")
        offered = await page.locator("#layout option").all_text_contents()
        assert {"grid", "speaker", "pip"} <= set(offered)
        await page.select_option("#layout", "speaker")
        await py.wait_for(lambda: py.layout == "speaker", 5)
        await py.wait_for(lambda: laid_out(py.video_frame, SPEAKER, colours), 10)
        assert not laid_out(py.video_frame, GRID, colours)

        # Start and stop a recording: the button follows the room, and ffprobe reads the file.
        await page.click("#record")
        await poll(lambda: page.locator("#record", has_text="Stop recording").count(), 10, "recording started")
        await asyncio.sleep(2)
        await page.click("#record")
        await poll(lambda: page.locator("#record", has_text="Start recording").count(), 10, "recording stopped")
        files = list(tmp_path.glob("*.webm"))
        assert len(files) == 1
        probe = ffprobe(files[0])
        assert any(s["codec_type"] == "video" for s in probe["streams"]) and float(probe["format"]["duration"]) > 1

        # Mute and set the volume of a participant, from its row.
        target = server.conference.rooms["run"].participants[victim.peer_id]
        await row(page, "김민수").locator("button.moderate-mute").click()
        await poll(lambda: row(page, "김민수").locator("text=muted by a moderator").count(), 5, "muted in the list")
        assert target.moderator_muted
        slider = row(page, "김민수").locator("input.moderate-volume")
        await slider.evaluate("(s) => { s.value = '0.5'; s.dispatchEvent(new Event('change')); }")
        await py.wait_for(lambda: target.volume == 0.5, 5)

        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "moderator.png"))

        # Remove it: it is told, and the page's list drops it; the others' composite goes on.
        await row(page, "김민수").locator("button.moderate-remove").click()
        await victim.wait_for(lambda: any(e.code == "kicked" for e in victim.errors), 5)

        async def dropped() -> bool:
            return await page.locator("#participants li").count() == 2 and not await row(page, "김민수").count()

        await poll(dropped, 5, "the page to drop the removed peer")
        assert {"type": "participantLeft", "peerId": victim.peer_id, "reason": "kicked"} in py.events
        frames = py.video_frames
        await py.wait_for(lambda: py.video_frames > frames + 10, 5)

        # A page that is removed says so and stays out: it does not reconnect by itself.
        await py.kick(await page.evaluate("window.meeting.peerId"), "Time is up.")
        await poll(lambda: page.locator("#error", has_text="Time is up.").is_visible(), 5, "the page told why")
        assert await page.locator("#join-form").is_visible()
        await asyncio.sleep(2)
        assert [p.name for p in server.conference.rooms["run"].participants.values()] == ["py"]
    finally:
        await asyncio.gather(py.close(), victim.close(), return_exceptions=True)


async def test_a_page_switches_its_camera_without_leaving(server, chromium) -> None:
    page = await chromium(fake_cameras=3, viewport=(375, 740))
    await page.goto(f"http://127.0.0.1:{server.port}/?room=switch&name=cam")
    py = Peer(server.url, "switch", "py", video=ColorTrack(COLORS["blue"]))
    try:
        await py.join()
        await poll(lambda: page.evaluate("window.meeting?.pc?.connectionState === 'connected'"), 15, "connected")
        cameras = await page.evaluate(
            "async () => (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === 'videoinput')"
            ".map((d) => d.deviceId)"
        )
        print("fake cameras:", len(cameras))
        options = await page.locator("#camera-device option").evaluate_all("(os) => os.map((o) => o.value)")
        assert options == cameras

        async def encoded(more_than: int, track: str | None = None):
            now = await page.evaluate(UPSTREAM_JS)
            return now["framesEncoded"] > more_than and (track is None or now["track"] != track) and now

        before = await poll(lambda: encoded(0), 5, "the upstream's encoded frames")
        chosen = await page.locator("#camera-device").input_value()
        # Chromium's second fake camera gives depth pictures (Y16) that no encoder takes; its third gives MJPEG.
        other = cameras[-1]
        assert other != chosen
        await page.select_option("#camera-device", other)

        after = await poll(lambda: encoded(0, before["track"]), 5, "the sender to carry the new camera's track")
        # Still in the room, and the new track's frames are encoded and sent.
        await poll(lambda: encoded(after["framesEncoded"] + 30), 10, "frames encoded after the switch")
        assert await page.evaluate("window.meeting.pc.connectionState") == "connected"
        assert len(server.conference.rooms["switch"].participants) == 2

        # Shortcuts: m mutes, v turns the camera off; typing in the chat does neither.
        await page.keyboard.press("m")
        assert await page.get_attribute("#mute", "aria-pressed") == "true"
        await page.fill("#chat-text", "")
        await page.locator("#chat-text").press_sequentially("mv")
        assert await page.get_attribute("#mute", "aria-pressed") == "true"
        assert await page.get_attribute("#camera", "aria-pressed") == "false"
        await page.locator("#chat-text").evaluate("(field) => field.blur()")
        await page.keyboard.press("v")
        assert await page.get_attribute("#camera", "aria-pressed") == "true"

        # Copy link: the room's address, with no name or token in it; where the Clipboard API fails,
        # the link shows selected in a field.
        link = f"http://127.0.0.1:{server.port}/?room=switch"
        await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
        await page.click("#copy-link")
        await poll(lambda: page.locator("#copy-result", has_text="copied").count(), 5, "the link copied")
        assert await page.evaluate("navigator.clipboard.readText()") == link
        await page.evaluate("() => { navigator.clipboard.writeText = () => Promise.reject(new Error('refused')); }")
        await page.click("#copy-link")
        await poll(lambda: page.locator("#room-link").is_visible(), 5, "the link in a field")
        assert await page.locator("#room-link").input_value() == link

        # At a phone's width nothing runs off the side.
        assert await page.evaluate("document.documentElement.scrollWidth") <= 375
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "phone.png"), full_page=True)
    finally:
        await py.close()
