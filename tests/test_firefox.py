"""The web page in Firefox ESR (Debian's firefox-esr, driven by Marionette) with a Python peer.

Debian has no geckodriver, so Selenium is out; Mozilla's own Marionette client
(`marionette-driver`) talks to the browser's built-in Marionette server instead. The test
starts each Firefox itself (headless, a profile of its own with the prefs below) and ends it
by PID. Firefox's fake camera looks the same in every browser, so the page's getUserMedia is
replaced before joining: a canvas of one colour and a WebAudio tone of one frequency per
browser. A few prefs make WebRTC work in a loopback-only namespace without a sound card; they
are explained where they are set (PREFS).

Like the Chromium tests, this runs only inside a network namespace with loopback alone
(scripts/test does that): every packet stays on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from browser_checks import (
    PLACEHOLDER,
    PLACEHOLDER_RGB,
    SAMPLE_FUNCTION,
    grid_fractions,
    isolated_network,
    python_peer_sees_and_hears,
    rgb_close,
)
from conftest import free_port, stop_process
from media_checks import cell_colours, close_to, tone_levels

from client.peer import Peer
from client.sources import COLORS, ColorTrack, ToneTrack, rgb_to_yuv

marionette_api = pytest.importorskip("marionette_driver.marionette", reason="marionette-driver is not installed")
psutil = pytest.importorskip("psutil", reason="psutil is not installed (marionette-driver brings it)")
By = pytest.importorskip("marionette_driver.by").By

FIREFOX = Path("/usr/bin/firefox-esr")

if not FIREFOX.exists():
    pytest.skip("Debian's firefox-esr is not installed (scripts/test installs it)", allow_module_level=True)
if not isolated_network():
    pytest.skip(
        "browser tests run only in a network namespace with loopback alone: run them through scripts/test",
        allow_module_level=True,
    )

pytestmark = pytest.mark.timeout(90)

# user.js of every profile. Marionette also applies its own recommended prefs
# (remote.prefs.recommended), which quiet most background traffic; these make it explicit.
PREFS: dict[str, bool | int | str] = {
    # Media: no permission prompt, Firefox's fake camera and microphone (held open by the
    # page, see FAKE_MEDIA_JS), autoplay with sound.
    "media.navigator.permission.disabled": True,
    "media.navigator.streams.fake": True,
    # Capturing from a fake device counts as capturing. Firefox gives ICE all of its host
    # addresses only to a page that captures (or holds a permission); otherwise just the
    # default route's address, and a loopback-only namespace has no default route: nICEr
    # logs "failed to find default addresses" and the offer carries no candidate at all.
    "media.navigator.permission.fake": True,
    # No sound card here: Firefox's audio graph would never start (an AudioContext stays
    # "suspended", its tone never reaches the peer connection). Cubeb's mock backend runs
    # the graph on its own clock instead.
    "media.cubeb.force_mock_context": True,
    "media.autoplay.default": 0,
    "media.autoplay.blocking_policy": 0,
    "media.autoplay.block-webaudio": False,
    # WebRTC on a loopback-only machine: offer 127.0.0.1 (left out by default) and
    # plain addresses rather than mDNS names (there is no mDNS responder here).
    "media.peerconnection.ice.loopback": True,
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    "media.peerconnection.ice.proxy_only": False,
    "media.peerconnection.ice.default_address_only": False,
    # Canvas reads must return the real pixels.
    "privacy.resistFingerprinting": False,
    "privacy.fingerprintingProtection": False,
    # No updates, telemetry, first-run pages or background network.
    "app.update.enabled": False,
    "app.update.auto": False,
    "app.update.disabledForTesting": True,
    "app.normandy.enabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.policy.dataSubmissionPolicyBypassNotification": True,
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.unified": False,
    "toolkit.telemetry.server": "",
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.page": 0,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.aboutwelcome.enabled": False,
    "browser.newtabpage.enabled": False,
    "browser.ping-centre.telemetry": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.blockedURIs.enabled": False,
    "browser.safebrowsing.provider.mozilla.updateURL": "",
    "browser.safebrowsing.provider.google4.updateURL": "",
    "extensions.update.enabled": False,
    "extensions.getAddons.cache.enabled": False,
    "extensions.blocklist.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "network.dns.disablePrefetch": True,
    "network.prefetch-next": False,
    "network.http.speculative-parallel-limit": 0,
    "services.settings.server": "data:,#remote-settings-dummy/v1",
    "toolkit.startup.max_resumed_crashes": -1,
}

# Installed in the page (as a <script>, so in the page's own world) before Join is clicked:
# getUserMedia gives a canvas of one colour (redrawn at 15 fps) and a WebAudio tone.
FAKE_MEDIA_JS = """
(({rgb, frequency}) => {
  const capture = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = async (constraints) => {
    // Firefox hands ICE its host addresses only while the page captures (see the prefs): the
    // page keeps Firefox's own fake devices open, and sends what is made here instead.
    window.heldCapture = await capture(constraints);
    const stream = new MediaStream();
    if (constraints.video) {
      const canvas = document.createElement('canvas');
      canvas.width = 320;
      canvas.height = 240;
      const context = canvas.getContext('2d');
      const draw = () => {
        context.fillStyle = `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`;
        context.fillRect(0, 0, canvas.width, canvas.height);
      };
      draw();
      setInterval(draw, 66);
      stream.addTrack(canvas.captureStream(15).getVideoTracks()[0]);
    }
    if (constraints.audio) {
      const audio = new AudioContext({sampleRate: 48000});
      const oscillator = audio.createOscillator();
      oscillator.frequency.value = frequency;
      const gain = audio.createGain();
      gain.gain.value = 0.3;
      const destination = audio.createMediaStreamDestination();
      oscillator.connect(gain).connect(destination);
      oscillator.start();
      await Promise.race([audio.resume(), new Promise((r) => setTimeout(r, 2000))]);
      window.testAudioState = audio.state;
      stream.addTrack(destination.stream.getAudioTracks()[0]);
    }
    window.testMediaCalls = (window.testMediaCalls || 0) + 1;
    return stream;
  };
})(ARGS);
"""

INSTALL_JS = """
const script = document.createElement('script');
script.textContent = arguments[0];
document.documentElement.appendChild(script);
script.remove();
"""

SAMPLE_JS = f"return ({SAMPLE_FUNCTION})(...arguments);"

# What the page is doing, for the message of a failed wait.
STATE_JS = r"""
const page = window.wrappedJSObject;
const video = document.getElementById('remote');
const pc = page.meeting && page.meeting.pc;
const candidates = (description) =>
  description ? description.sdp.split('\r\n').filter((line) => line.startsWith('a=candidate')) : null;
return {
  status: document.getElementById('status').textContent,
  error: document.getElementById('error').textContent,
  connection: pc ? pc.connectionState : null,
  localCandidates: pc ? candidates(pc.localDescription) : null,
  remoteCandidates: pc ? candidates(pc.remoteDescription) : null,
  getUserMediaCalls: page.testMediaCalls,
  audioContext: page.testAudioState,
  video: {width: video.videoWidth, height: video.videoHeight, readyState: video.readyState,
          paused: video.paused, time: video.currentTime},
};
"""

CHAT_JS = "return [...document.querySelectorAll('#chat-log li')].map((li) => li.textContent);"

PARTICIPANTS_JS = "return [...document.querySelectorAll('#participants li')].map((li) => li.textContent);"


def user_js(port: int) -> str:
    prefs = {"marionette.port": port, **PREFS}
    return "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in prefs.items())


class Firefox:
    """One headless firefox-esr with a profile of its own, and its Marionette session.

    The Marionette client blocks on its socket, and the server under test runs on this
    test's event loop: every call goes through a thread so that the loop keeps serving.
    """

    def __init__(self, profile: Path, colour: str, frequency: float) -> None:
        self.profile = profile
        self.colour = colour
        self.frequency = frequency
        self.process: subprocess.Popen | None = None
        self.client = None
        self.log = profile.parent / f"{profile.name}.log"

    def start(self, timeout: float = 30) -> None:
        self.profile.mkdir()
        port = free_port()
        (self.profile / "user.js").write_text(user_js(port))
        env = dict(os.environ, MOZ_HEADLESS="1", HOME=str(self.profile), MOZ_CRASHREPORTER_DISABLE="1")
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [str(FIREFOX), "-marionette", "-headless", "-no-remote", "-profile", str(self.profile)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while True:  # wait for Marionette's port, or for Firefox to die
            if self.process.poll() is not None:
                raise AssertionError(f"firefox-esr exited with {self.process.returncode}: {self.tail()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"no Marionette on port {port} after {timeout} s: {self.tail()}")
                time.sleep(0.1)
        self.client = marionette_api.Marionette(host="127.0.0.1", port=port, socket_timeout=20, startup_timeout=5)
        self.client.start_session()
        self.client.timeout.page_load = 10
        self.client.timeout.script = 10

    def join(self, url: str, room: str, name: str) -> None:
        """Open the page, replace getUserMedia, and join through the form."""
        self.client.navigate(url)
        args = json.dumps({"rgb": COLORS[self.colour], "frequency": self.frequency})
        self.client.execute_script(INSTALL_JS, script_args=[FAKE_MEDIA_JS.replace("ARGS", args)])
        assert self.client.execute_script(
            "return window.wrappedJSObject.navigator.mediaDevices.getUserMedia.toString().includes('captureStream')"
        ), "the getUserMedia override is not in the page"
        self.client.find_element(By.ID, "room").send_keys(room)
        self.client.find_element(By.ID, "name").send_keys(name)
        self.client.find_element(By.ID, "join").click()

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def close(self) -> None:
        if self.client is not None and self.client.session is not None:
            try:
                self.client.delete_session()
            except Exception:
                pass
            self.client.cleanup_ran = True
        if self.process is None or self.process.poll() is not None:
            return
        # Firefox's content processes are its children: note them, then end each by PID.
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.Error:
            children = []
        stop_process(self.process)
        for child in children:
            try:
                child.wait(2)
            except psutil.TimeoutExpired:
                try:
                    os.kill(child.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            except psutil.Error:
                pass


@pytest.fixture
async def firefoxes(tmp_path):
    """Starts Firefox instances (in parallel); every one is ended in the end, whatever happened."""
    started: list[Firefox] = []

    async def launch(*specs: tuple[str, float]) -> list[Firefox]:
        browsers = [Firefox(tmp_path / f"firefox-{colour}", colour, freq) for colour, freq in specs]
        started.extend(browsers)
        # Every start runs to its end (so that none is still spawning a Firefox at teardown).
        results = await asyncio.gather(*(asyncio.to_thread(b.start) for b in browsers), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return browsers

    try:
        yield launch
    finally:
        await asyncio.gather(*(asyncio.to_thread(b.close) for b in started), return_exceptions=True)


class Miss:
    """A falsy result that keeps what was seen, for the message of a failed wait."""

    def __init__(self, seen) -> None:
        self.seen = seen

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return repr(self.seen)


async def call(browser: Firefox, method: str, *args, **kwargs):
    """A Marionette call off the event loop (the server under test runs on it)."""
    return await asyncio.to_thread(getattr(browser.client, method), *args, **kwargs)


async def wait_until(predicate, timeout: float, what: str, browser: Firefox | None = None):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            detail = ""
            if browser is not None:
                detail = f": {await call(browser, 'execute_script', STATE_JS)}, last result {result!r}"
            raise AssertionError(f"timed out waiting for {what}{detail}")
        await asyncio.sleep(0.2)


async def test_two_firefoxes_and_a_python_peer_in_one_room(server, firefoxes):
    anna, ben = await firefoxes(("red", 500.0), ("green", 700.0))
    page = f"http://127.0.0.1:{server.port}/"
    await asyncio.gather(
        asyncio.to_thread(anna.join, page, "firefox", "anna"),
        asyncio.to_thread(ben.join, page, "firefox", "ben"),
    )

    async def participants(browser):
        return await call(browser, "execute_script", PARTICIPANTS_JS)

    await wait_until(lambda: participants(anna), 10, "anna's participant list")
    py = Peer(server.url, "firefox", "py", video=ColorTrack(COLORS["blue"]), audio=ToneTrack(900.0))
    try:
        await py.join()
        cells = grid_fractions(3)
        colours = [COLORS["red"], COLORS["green"], COLORS["blue"]]

        async def shows_everyone(browser):
            # The grid follows join order, and the two browsers race to join: any order.
            sample = await call(browser, "execute_script", SAMPLE_JS, script_args=[cells, [0.5, 0.35]])
            if sample is not None and all(any(rgb_close(s, c) for s in sample) for c in colours):
                return True
            return Miss(sample)

        for browser in (anna, ben):
            await wait_until(
                lambda b=browser: shows_everyone(b), 15, f"the three colours in {browser.colour}'s page", browser
            )
            names = await participants(browser)
            assert len(names) == 3 and any("py" in n for n in names), names
        # The Python peer sees everyone and hears both browsers, not itself.
        cells_yuv = await python_peer_sees_and_hears(py, colours, [500.0, 700.0], 900.0)
        ben_cell = next(i for i, c in enumerate(cells_yuv) if close_to(c, rgb_to_yuv(COLORS["green"])))

        # Chat from a browser reaches the other browser and the Python peer, with the sender's name.
        def anna_chats() -> None:
            anna.client.find_element(By.ID, "chat-text").send_keys("hello from anna")
            anna.client.find_element(By.ID, "chat-send").click()

        async def chat_line(browser, text: str) -> str | None:
            lines = await call(browser, "execute_script", CHAT_JS)
            return next((line for line in lines if text in line), None)

        await asyncio.to_thread(anna_chats)
        line = await wait_until(lambda: chat_line(ben, "hello from anna"), 5, "anna's chat in ben's page", ben)
        assert "anna" in line, line
        await py.wait_for(lambda: any(m.text == "hello from anna" for m in py.chat_messages), 5)
        message = next(m for m in py.chat_messages if m.text == "hello from anna")
        assert message.name == "anna" and abs(message.timestamp / 1000 - time.time()) < 10
        await py.chat("hello from py")
        await wait_until(lambda: chat_line(anna, "hello from py"), 5, "py's chat in anna's page", anna)

        # Ben turns his camera off: the others see his placeholder, not black.
        await asyncio.to_thread(lambda: ben.client.find_element(By.ID, "camera").click())
        await py.wait_for(lambda: close_to(cell_colours(py.video_frame, 3, at=(0.5, 0.3))[ben_cell], PLACEHOLDER), 3)

        async def anna_sees_placeholder():
            sample = await call(anna, "execute_script", SAMPLE_JS, script_args=[cells, [0.5, 0.3]])
            return (sample is not None and rgb_close(sample[ben_cell], PLACEHOLDER_RGB, 20)) or Miss(sample)

        await wait_until(anna_sees_placeholder, 5, "ben's placeholder in anna's page", anna)
        assert "camera off" in " ".join(await participants(anna))

        # Anna mutes: her tone leaves the mix.
        await asyncio.to_thread(lambda: anna.client.find_element(By.ID, "mute").click())
        await asyncio.sleep(1.5)
        # Measured against Ben's tone rather than test_browser.py's absolute 100 dB: the mock
        # audio clock runs a few per cent slow, and the gaps it leaves in Ben's tone raise the
        # noise floor of the whole spectrum to about 100 dB (his tone is about 160 dB).
        levels = tone_levels(py.audio(1.0), [500.0, 700.0])
        assert levels[700.0] > 100 and levels[700.0] - levels[500.0] >= 30, levels
    finally:
        await py.close()
