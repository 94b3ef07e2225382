"""The web page in sfu and mesh rooms: the same page code, only the mode differs.

A Chromium page (Debian's, driven by Playwright, fake camera and microphone) and
two Python peers in one room: the page shows each peer in a named tile of its own,
playing, and the peers receive the page's picture and tone. Run inside a
loopback-only network namespace (scripts/test does that).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from browser_checks import chromium_args, isolated_network, poll, rgb_close, write_wav, write_y4m
from media_checks import cell_colours, close_to, tone_levels

from client.peer import Peer
from client.sources import COLORS, ColorTrack, ToneTrack, rgb_to_yuv

playwright_api = pytest.importorskip("playwright.async_api")

CHROMIUM = Path("/usr/bin/chromium")

if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed (scripts/test installs it)", allow_module_level=True)
if not isolated_network():
    pytest.skip(
        "browser tests run only in a network namespace with loopback alone: run them through scripts/test",
        allow_module_level=True,
    )

# Every tile of the page: its publisher, caption, picture size, frames shown and the
# colour (mean RGB of 8x8 pixels) at its centre; null colour until it plays.
TILES_JS = """
() => [...document.querySelectorAll('#tiles figure')].map((figure) => {
  const video = figure.querySelector('video');
  let rgb = null;
  if (video.videoWidth && video.readyState >= 2) {
    const canvas = document.createElement('canvas');
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    const context = canvas.getContext('2d');
    context.drawImage(video, 0, 0);
    const px = context.getImageData(canvas.width / 2 - 4, canvas.height / 2 - 4, 8, 8).data;
    rgb = [0, 1, 2].map((c) => px.filter((_, i) => i % 4 === c).reduce((a, b) => a + b, 0) / 64);
  }
  return {
    peerId: figure.dataset.peerId,
    name: figure.querySelector('figcaption').textContent,
    width: video.videoWidth,
    frames: video.getVideoPlaybackQuality().totalVideoFrames,
    paused: video.paused,
    rgb,
  };
})
"""


@pytest.fixture
async def browsers(tmp_path):
    """Launches Chromium pages, each with its own fake camera (a colour) and microphone (a tone)."""
    async with playwright_api.async_playwright() as playwright:
        launched = []

        async def launch(colour: str, frequency: float):
            video, audio = tmp_path / f"{colour}.y4m", tmp_path / f"{frequency:.0f}.wav"
            write_y4m(video, COLORS[colour])
            write_wav(audio, frequency)
            args = chromium_args(video, audio)
            launched.append(await playwright.chromium.launch(executable_path=str(CHROMIUM), args=args))
            return await launched[-1].new_page(viewport={"width": 1280, "height": 720})

        try:
            yield launch
        finally:
            for browser in launched:
                await browser.close()


@pytest.fixture
async def page(browsers):
    """One page whose camera shows red and whose microphone plays 500 Hz."""
    return await browsers("red", 500.0)


@pytest.mark.parametrize("mode", ["sfu", "mesh"])
async def test_the_page_shows_each_peer_and_the_peers_receive_the_page(server, page, mode):
    room = f"page-{mode}"
    if mode == "sfu":  # from the link
        await page.goto(f"http://127.0.0.1:{server.port}/?room={room}&name=anna&mode={mode}")
    else:  # from the join form
        await page.goto(f"http://127.0.0.1:{server.port}/")
        await page.fill("#room", room)
        await page.fill("#name", "anna")
        await page.select_option("#mode", mode)
        await page.click("#join")
    page_id = await poll(lambda: page.evaluate("window.meeting?.peerId"), 10, "the page to join")
    assert await page.evaluate("window.meeting.roomMode") == mode
    people = {"ben": ("green", 700.0), "cleo": ("blue", 900.0)}
    peers = [
        Peer(server.url, room, name, video=ColorTrack(COLORS[colour]), audio=ToneTrack(tone), mode=mode)
        for name, (colour, tone) in people.items()
    ]
    try:
        for peer in peers:
            await peer.join()
        colour_of = {peer.peer_id: COLORS[people[peer.name][0]] for peer in peers}

        async def tiles_show_everyone():
            tiles = await page.evaluate(TILES_JS)
            shown = {t["peerId"] for t in tiles if t["peerId"] in colour_of and t["rgb"]}
            shown = {p for p in shown if rgb_close(next(t["rgb"] for t in tiles if t["peerId"] == p), colour_of[p])}
            return tiles if len(tiles) == 2 and shown == colour_of.keys() else None

        tiles = await poll(tiles_show_everyone, 20, "two tiles playing the two peers' colours")
        # Named, playing, and its frames advance; the composite's element stays hidden.
        names = {peer.peer_id: peer.name for peer in peers}
        assert {t["peerId"]: t["name"] for t in tiles} == names
        assert all(t["width"] > 0 and not t["paused"] for t in tiles), tiles
        await asyncio.sleep(1)
        later = {t["peerId"]: t["frames"] for t in await page.evaluate(TILES_JS)}
        assert all(later[t["peerId"]] > t["frames"] for t in tiles), (tiles, later)
        assert await page.locator("#remote").is_hidden()
        if mode == "mesh":
            # Three offers and their answers, candidates inside: the page trickled nothing.
            assert server.conference.mesh.relayed == 6

        # Each peer receives the page (red, 500 Hz) and the other peer, not itself.
        for peer in peers:
            await peer.wait_for(
                lambda peer=peer: (
                    (remote := peer.remote.get(page_id)) is not None
                    and remote.video_frame is not None
                    and close_to(cell_colours(remote.video_frame, 1)[0], rgb_to_yuv(COLORS["red"]))
                ),
                15,
            )
            assert peer.peer_id not in peer.remote and len(peer.remote) == 2, peer.remote
        await asyncio.sleep(1.2)
        for peer in peers:
            levels = tone_levels(peer.remote[page_id].audio(1.0), [500.0, 700.0, 900.0])
            assert levels[500.0] > 100 and levels[500.0] - max(levels[700.0], levels[900.0]) >= 30, levels

        # One leaves: its tile goes.
        await peers[1].close()
        await poll(
            lambda: page.evaluate("document.querySelectorAll('#tiles figure').length === 1"), 10, "cleo's tile to go"
        )
        # Another comes (in sfu on the section cleo left): the page shows it under its own name and colour.
        dan = Peer(server.url, room, "dan", video=ColorTrack(COLORS["yellow"]), audio=ToneTrack(1100.0), mode=mode)
        peers.append(dan)
        await dan.join()
        colours = {peers[0].peer_id: COLORS["green"], dan.peer_id: COLORS["yellow"]}
        tiles = await poll(lambda: tiles_showing(page, colours), 15, "ben's and dan's tiles")
        assert tiles[dan.peer_id]["name"] == "dan"
    finally:
        await asyncio.gather(*(peer.close() for peer in peers))


async def tiles_showing(page, colours: dict) -> dict | None:
    """The page's tiles by peerId once it shows exactly `colours` (peerId -> RGB), each playing; else None."""
    tiles = {t["peerId"]: t for t in await page.evaluate(TILES_JS)}
    if tiles.keys() != colours.keys():
        return None
    playing = all(t["rgb"] and not t["paused"] and rgb_close(t["rgb"], colours[p]) for p, t in tiles.items())
    return tiles if playing else None


async def test_a_page_joining_a_mesh_offers_to_everyone_browsers_included(server, browsers):
    url = f"http://127.0.0.1:{server.port}/?room=newcomer&mode=mesh&name="
    anna = await browsers("red", 500.0)
    await anna.goto(url + "anna")
    anna_id = await poll(lambda: anna.evaluate("window.meeting?.peerId"), 10, "anna to join")
    ben = Peer(server.url, "newcomer", "ben", video=ColorTrack(COLORS["green"]), audio=ToneTrack(700.0), mode="mesh")
    try:
        await ben.join()
        # Dora comes last: her page offers to a page and to a Python peer.
        dora = await browsers("yellow", 900.0)
        await dora.goto(url + "dora")
        dora_id = await poll(lambda: dora.evaluate("window.meeting?.peerId"), 10, "dora to join")
        everyone = {anna_id: COLORS["red"], ben.peer_id: COLORS["green"], dora_id: COLORS["yellow"]}
        names = {anna_id: "anna", ben.peer_id: "ben", dora_id: "dora"}
        for page, own in ((anna, anna_id), (dora, dora_id)):
            others = {p: c for p, c in everyone.items() if p != own}
            tiles = await poll(lambda page=page, others=others: tiles_showing(page, others), 20, "the others' tiles")
            assert {p: t["name"] for p, t in tiles.items()} == {p: names[p] for p in others}
        await ben.wait_for(
            lambda: (
                (remote := ben.remote.get(dora_id)) is not None
                and remote.video_frame is not None
                and close_to(cell_colours(remote.video_frame, 1)[0], rgb_to_yuv(COLORS["yellow"]))
            ),
            15,
        )
        # Nothing goes through the server but signaling.
        assert server.conference.media_bytes() == (0, 0)
    finally:
        await ben.close()
