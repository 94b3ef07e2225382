#!/usr/bin/env python3
"""Pictures of the page in a call, for the README: made from a real browser run, so they can be made again.

A fresh `mcu serve` (embedded default, no secret: every grant) on 127.0.0.1, two
Python peers with names in two scripts, and Debian's Chromium with its fake
camera and microphone joining through the page's shareable link. Once the page
plays the composite it is captured at a desktop width and at a phone's.

    .venv/bin/python scripts/screenshots.py [--out docs/images]

Run it inside a network namespace with loopback alone, as the browser tests are
(`unshare -n sh -c 'ip link set lo up && exec "$@"' sh .venv/bin/python scripts/screenshots.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import time
from pathlib import Path

from bench_room import free_port, start_server, stop, wait_healthy

from client.peer import Peer
from client.sources import MovingTrack, ToneTrack

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
ROOM = "demo"
#: The people in the picture: the Python peers (name, colour, tone), and the person at the page.
PEERS = (("김민수", (40, 110, 200), 330.0), ("Zoë Martin", (200, 90, 40), 440.0))
ME = "Ada"
#: Viewports: a laptop's and a phone's (CSS pixels).
SIZES = {"desktop": (1280, 800), "phone": (375, 812)}
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",
]
#: True once the page's composite has played for a while.
PLAYING = "() => { const v = document.getElementById('remote'); return !!v && v.readyState >= 2 && v.currentTime > 2; }"


async def shoot(url: str, out: Path, timeout: float) -> list[Path]:
    from playwright.async_api import async_playwright

    written = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for label, (width, height) in SIZES.items():
                page = await browser.new_page(viewport={"width": width, "height": height})
                await page.goto(f"{url}/?room={ROOM}&name={ME}")
                await page.wait_for_function(PLAYING, timeout=timeout * 1000)
                await asyncio.sleep(1.5)  # the speaking ring and the connection figures settle
                path = out / f"call-{label}.png"
                await page.screenshot(path=str(path), full_page=True)
                written.append(path)
                await page.close()
        finally:
            await browser.close()
    return written


async def main(args: argparse.Namespace) -> int:
    if not CHROMIUM.exists():
        print("screenshots: needs Debian's chromium (scripts/test installs it)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = await start_server(port, subprocess.DEVNULL)
    peers = []
    try:
        await wait_healthy(port, server)
        for name, colour, tone in PEERS:
            peer = Peer(
                f"ws://127.0.0.1:{port}/ws", ROOM, name, video=MovingTrack(colour), audio=ToneTrack(tone), decode=False
            )
            await peer.join(timeout=20)
            peers.append(peer)
        started = time.monotonic()
        written = await shoot(f"http://127.0.0.1:{port}", args.out, args.timeout)
        for path in written:
            print(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
        print(f"({time.monotonic() - started:.1f} s)")
        return 0
    finally:
        for peer in peers:
            with contextlib.suppress(Exception):
                await peer.close()
        await stop(server)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images", help="where to write (docs/images)")
    parser.add_argument("--timeout", type=float, default=30, help="seconds the page may take to play (30)")
    sys.exit(asyncio.run(main(parser.parse_args())))
