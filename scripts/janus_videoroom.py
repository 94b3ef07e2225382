#!/usr/bin/env python3
"""Janus VideoRoom (Debian's `janus`, a C SFU) under the same load as our sfu mode: its CPU per forwarded stream.

N aiortc peers in one process publish the same pre-encoded clips as
scripts/loadgen.py (VP8 320x240@15 ≈ 300 kbit/s and Opus) and each subscribes
to every other publisher (one multistream subscription), receiving without
decoding: N·(N-1) forwarded video (and audio) streams. Janus's CPU comes from
/proc over the window.

Janus does not offer loopback addresses as ICE candidates, so it must run in a
network namespace of its own with an address of 127.0.0.0/8 on a non-loopback
interface (shared/notes/media-facts.md), which is what `--namespace` sets up
(root): nothing leaves the namespace.

    unshare -n .venv/bin/python scripts/janus_videoroom.py --namespace --peers 2,4,8 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_room import cpu_ticks, steal_ticks  # noqa: E402

ADDRESS, INTERFACE = "127.0.0.2", "janus0"
HTTP_PORT = 18088
ROOM = 4242
PLUGINS = Path("/usr/lib/x86_64-linux-gnu/janus")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def configure(directory: Path) -> None:
    """A private config: the HTTP transport and the VideoRoom plugin only, ICE on our interface."""
    disabled_plugins = [p.name for p in (PLUGINS / "plugins").glob("*.so") if "videoroom" not in p.name]
    disabled_transports = [p.name for p in (PLUGINS / "transports").glob("*.so") if "http" not in p.name]
    (directory / "janus.jcfg").write_text(
        f"""general: {{
    configs_folder = "{directory}"
    plugins_folder = "{PLUGINS / "plugins"}"
    transports_folder = "{PLUGINS / "transports"}"
    events_folder = "{PLUGINS / "events"}"
    loggers_folder = "{PLUGINS / "loggers"}"
    debug_level = 3
    session_timeout = 120
}}
media: {{
    rtp_port_range = "30000-40000"
}}
nat: {{
    ice_enforce_list = "{INTERFACE}"
    nice_debug = false
}}
plugins: {{
    disable = "{",".join(disabled_plugins)}"
}}
transports: {{
    disable = "{",".join(disabled_transports)}"
}}
events: {{
    broadcast = false
}}
"""
    )
    (directory / "janus.transport.http.jcfg").write_text(
        f'general: {{\n    base_path = "/janus"\n    http = true\n    port = {HTTP_PORT}\n    https = false\n}}\n'
        'admin: {\n    admin_base_path = "/admin"\n    admin_http = false\n}\n'
    )
    (directory / "janus.plugin.videoroom.jcfg").write_text(
        f'general: {{\n}}\nroom-{ROOM}: {{\n    description = "bench"\n    publishers = 64\n'
        '    bitrate = 0\n    fir_freq = 10\n    videocodec = "vp8"\n    audiocodec = "opus"\n    record = false\n}\n'
    )


class Session:
    """One Janus session over its HTTP API, with a long-poll reader that dispatches events by transaction/handle."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self._http, self._base = http, base
        self._ids = itertools.count(1)
        self.id = 0
        self._waiters: dict[str, asyncio.Future] = {}
        self._events: dict[int, asyncio.Queue] = {}
        self._tasks: list[asyncio.Task] = []

    async def create(self) -> None:
        reply = await self._post("", {"janus": "create"})
        self.id = reply["data"]["id"]
        self._tasks.append(asyncio.ensure_future(self._poll()))
        self._tasks.append(asyncio.ensure_future(self._keepalive()))

    async def attach(self) -> int:
        reply = await self._post(f"/{self.id}", {"janus": "attach", "plugin": "janus.plugin.videoroom"})
        handle = reply["data"]["id"]
        self._events[handle] = asyncio.Queue()
        return handle

    async def message(self, handle: int, body: dict, jsep: dict | None = None) -> dict:
        """Send a plugin request; return its event (a synchronous reply or the asynchronous event)."""
        transaction = f"t{next(self._ids)}"
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[transaction] = waiter
        payload: dict[str, Any] = {"janus": "message", "body": body, "transaction": transaction}
        if jsep:
            payload["jsep"] = jsep
        async with self._http.post(f"{self._base}/{self.id}/{handle}", json=payload) as reply:
            data = await reply.json()
        if data["janus"] == "success":
            self._waiters.pop(transaction, None)
            return data
        if data["janus"] != "ack":
            raise RuntimeError(f"janus: {data}")
        event = await asyncio.wait_for(waiter, 20)
        if "error" in event["plugindata"]["data"]:
            raise RuntimeError(f"janus: {event['plugindata']['data']}")
        return event

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.id:
            try:
                await self._post(f"/{self.id}", {"janus": "destroy"})
            except (aiohttp.ClientError, RuntimeError):
                pass

    async def _post(self, path: str, payload: dict) -> dict:
        payload = {**payload, "transaction": f"t{next(self._ids)}"}
        async with self._http.post(f"{self._base}{path}", json=payload) as reply:
            data = await reply.json()
        if data["janus"] not in ("success", "ack"):
            raise RuntimeError(f"janus: {data}")
        return data

    async def _poll(self) -> None:
        while True:
            async with self._http.get(f"{self._base}/{self.id}?maxev=10", timeout=aiohttp.ClientTimeout(70)) as r:
                events = await r.json()
            for event in events if isinstance(events, list) else [events]:
                waiter = self._waiters.pop(event.get("transaction", ""), None)
                if waiter is not None and not waiter.done() and event.get("janus") == "event":
                    waiter.set_result(event)

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(20)
            await self._post(f"/{self.id}", {"janus": "keepalive"})


async def run_load(count: int, warmup: float, seconds: float, janus_pid: int) -> dict:
    """`count` publishers, each subscribed to all others; Janus's CPU over one window."""
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError
    from loadgen import peer_colour

    from client.encoded import PreEncodedAudioTrack, PreEncodedVideoTrack
    from mcu.rtc.receiver import install_encoded_receiver
    from signaling.ice import rtc_configuration, use_host_addresses

    use_host_addresses([ADDRESS])
    frames = [0] * count
    pcs: list[RTCPeerConnection] = []
    async with aiohttp.ClientSession() as http:
        session = Session(http, f"http://{ADDRESS}:{HTTP_PORT}/janus")
        await session.create()
        try:
            feeds: list[int] = []
            for index in range(count):
                handle = await session.attach()
                joined = await session.message(
                    handle, {"request": "join", "ptype": "publisher", "room": ROOM, "display": f"load{index}"}
                )
                feeds.append(joined["plugindata"]["data"]["id"])
                pc = RTCPeerConnection(rtc_configuration([]))
                pcs.append(pc)
                pc.addTransceiver(PreEncodedVideoTrack(peer_colour(index)), direction="sendonly")
                pc.addTransceiver(PreEncodedAudioTrack(300.0 + 25 * index), direction="sendonly")
                await pc.setLocalDescription(await pc.createOffer())
                offer = {"type": "offer", "sdp": pc.localDescription.sdp}
                reply = await session.message(handle, {"request": "publish", "audio": True, "video": True}, offer)
                await pc.setRemoteDescription(RTCSessionDescription(**reply["jsep"]))
            # A publisher is a feed one may subscribe to once its media flows.
            deadline = time.monotonic() + 20
            while not all(pc.connectionState == "connected" for pc in pcs):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"janus: publishers {[pc.connectionState for pc in pcs]}")
                await asyncio.sleep(0.1)
            for index in range(count):
                others = [{"feed": feed} for i, feed in enumerate(feeds) if i != index]
                if not others:
                    continue
                handle = await session.attach()
                body = {"request": "join", "ptype": "subscriber", "room": ROOM, "streams": others}
                for attempt in range(40):
                    try:
                        offer = await session.message(handle, body)
                        break
                    except RuntimeError as exc:  # "No such feed" until Janus has seen the publisher's media
                        if attempt == 39 or "feed" not in str(exc):
                            raise
                        await asyncio.sleep(0.25)
                pc = RTCPeerConnection(rtc_configuration([]))
                pcs.append(pc)

                def on_track(track: Any, pc: RTCPeerConnection = pc, index: int = index) -> None:
                    receiver = next(t.receiver for t in pc.getTransceivers() if t.receiver.track is track)
                    install_encoded_receiver(receiver)

                    async def count_frames() -> None:
                        with contextlib.suppress(MediaStreamError):
                            while True:
                                await track.recv()
                                if track.kind == "video":
                                    frames[index] += 1

                    asyncio.ensure_future(count_frames())

                pc.on("track", on_track)
                await pc.setRemoteDescription(RTCSessionDescription(**offer["jsep"]))
                await pc.setLocalDescription(await pc.createAnswer())
                await session.message(handle, {"request": "start"}, {"type": "answer", "sdp": pc.localDescription.sdp})
            deadline = time.monotonic() + 30
            while not all(frames) and count > 1:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"janus: frames per subscriber {frames}")
                await asyncio.sleep(0.2)
            await asyncio.sleep(warmup)
            first, ticks, (steal, total), own = list(frames), cpu_ticks(janus_pid), steal_ticks(), os.times()
            started = time.monotonic()
            await asyncio.sleep(seconds)
            wall = time.monotonic() - started
            used = cpu_ticks(janus_pid) - ticks
            steal_end, total_end = steal_ticks()
            own_end = os.times()
            fps = [(b - a) / wall / max(count - 1, 1) for a, b in zip(first, frames)]
            return {
                "peers": count,
                "janus_cpu": used / CLK_TCK / wall * 100,
                "streams": count * (count - 1),
                "fps_per_stream_mean": sum(fps) / len(fps),
                "fps_per_stream_min": min(fps),
                "load_cpu": (own_end.user + own_end.system - own.user - own.system) / wall * 100,
                "steal": 100 * (steal_end - steal) / max(total_end - total, 1),
                "load_average": os.getloadavg()[0],
            }
        finally:
            await asyncio.gather(*(pc.close() for pc in pcs), return_exceptions=True)
            await session.close()


def namespace() -> None:
    """Loopback up, and our address on an interface Janus accepts (we are alone in this namespace)."""
    for command in (
        ["ip", "link", "set", "lo", "up"],
        ["ip", "link", "add", INTERFACE, "type", "veth", "peer", "name", f"{INTERFACE}peer"],
        ["ip", "addr", "add", f"{ADDRESS}/32", "dev", INTERFACE],
        ["ip", "link", "set", INTERFACE, "up"],
        ["ip", "link", "set", f"{INTERFACE}peer", "up"],
    ):
        subprocess.run(command, check=True)


async def wait_http(timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(f"http://{ADDRESS}:{HTTP_PORT}/janus/info") as reply:
                    if reply.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("janus did not answer on its HTTP API")
            await asyncio.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=lambda t: [int(v) for v in t.split(",")], default=[2, 4, 8])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--namespace", action="store_true", help="set up this (private) network namespace first")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    if shutil.which("janus") is None:
        sys.exit("janus is not installed (Debian package janus)")
    if args.namespace:
        namespace()
    rows = []
    with tempfile.TemporaryDirectory(prefix="janus-") as directory:
        configure(Path(directory))
        for count in args.peers:
            with open(Path(directory) / "janus.log", "wb") as log:
                janus = subprocess.Popen(["janus", "-F", directory, "-C", f"{directory}/janus.jcfg"], stdout=log,
                                         stderr=subprocess.STDOUT)  # fmt: skip
            try:
                asyncio.run(wait_http())
                row = asyncio.run(run_load(count, args.warmup, args.seconds, janus.pid))
                rows.append(row)
                print(json.dumps(row), flush=True)
            except (RuntimeError, TimeoutError) as exc:
                print(f"janus N={count}: {exc}\n{(Path(directory) / 'janus.log').read_text()[-3000:]}", file=sys.stderr)
                break
            finally:
                janus.terminate()
                try:
                    janus.wait(10)
                except subprocess.TimeoutExpired:
                    janus.kill()
                    janus.wait(5)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
