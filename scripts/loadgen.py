#!/usr/bin/env python3
"""Load generator: N peers in one or several rooms of any MCU server, any room mode.

Each peer sends a pre-encoded clip (VP8 320x240@15 ≈ 300 kbit/s and Opus,
encoded once per distinct colour and tone, then only packetized) and counts
what it receives without decoding it, so one process holds many peers and
measures the server rather than itself.

    .venv/bin/python scripts/loadgen.py ws://127.0.0.1:8080/ws --peers 16 --rooms 2 --mode sfu --duration 60
    .venv/bin/python scripts/loadgen.py wss://mcu.example.org/ws --room demo --peers 8 --token "$TOKEN"

On a terminal a live table per room shows each peer's state, what it receives
(fps, kbit/s) and sends (kbit/s), and its errors; otherwise it prints plain
lines every --interval seconds. Ctrl-C, SIGTERM or the end of --duration stop
it cleanly: every peer leaves, a summary is printed (and written to --json),
and it exits 0. Rates in the summary are taken over the steady window, from
the moment every peer received media (or the last join) to the stop. In an
mcu room the upload of each peer is also split by whether the server said it
was on screen or not (its `visibility` message).
"""

from __future__ import annotations

import argparse
import asyncio
import colorsys
import contextlib
import json
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from client.counters import Received  # noqa: E402
from client.encoded import PreEncodedAudioTrack, PreEncodedVideoTrack  # noqa: E402
from client.peer import Peer, PeerError  # noqa: E402
from mcu.rtc.traffic import transport_bytes  # noqa: E402

MODES = ("mcu", "sfu", "mesh")
#: The frame rate of the clip each peer sends.
CLIP_FPS = 15


def peer_colour(index: int) -> tuple[int, int, int]:
    """Distinct, saturated colours for any number of peers (golden-ratio hues)."""
    r, g, b = colorsys.hsv_to_rgb((index * 0.618034) % 1, 0.8, 0.9)
    return round(r * 255), round(g * 255), round(b * 255)


@dataclass
class Counters(Received):
    """What one peer has received (client/counters.py) and its bytes on the wire, both ways, so far."""

    bytes_in: int = 0
    bytes_out: int = 0


def counters(peer: Peer) -> Counters:
    """A peer's counters now, in any mode."""
    now = Counters.of(peer)
    for pc in connections(peer):
        sent, received = transport_bytes(pc)
        now.bytes_out += sent
        now.bytes_in += received
    return now


def screen_state(peer: Peer) -> str | None:
    """Whether the peer is "on" or "off" screen as the server's last `visibility` said (mcu rooms); None until told."""
    visibility = getattr(peer, "visibility", None)
    if visibility is None:
        return None
    return "on" if visibility.on_screen else "off"


@dataclass
class UploadByScreen:
    """What one peer sent while on screen and while off screen: each interval counts for the state it began in."""

    sent: dict[str, int] = field(default_factory=lambda: {"on": 0, "off": 0})
    seconds: dict[str, float] = field(default_factory=lambda: {"on": 0.0, "off": 0.0})

    def add(self, state: str | None, sent: int, seconds: float) -> None:
        if state is not None:
            self.sent[state] += sent
            self.seconds[state] += seconds

    def kbps(self, state: str) -> float | None:
        """Upload in kbit/s while in `state`; None if the peer never was."""
        return self.sent[state] * 8 / self.seconds[state] / 1000 if self.seconds[state] > 0 else None


def connections(peer: Peer) -> list[Any]:
    """Every RTCPeerConnection of a peer: the one to the server, or one per remote peer in a mesh."""
    links = getattr(peer, "mesh", None)
    pcs = list(getattr(links, "pcs", {}).values())
    return pcs + ([peer.pc] if peer.pc is not None else [])


@dataclass
class LoadPeer:
    """One peer of the load and what the display and summary need of it."""

    room: str
    name: str
    peer: Peer
    state: str = "waiting"
    error: str = ""
    joined_at: float | None = None
    #: Counters when the join completed: the window's start when the room never got steady.
    at_join: Counters | None = None
    #: Counters at the previous display tick and at the start of the steady window.
    last: Counters = field(default_factory=lambda: Counters(time.monotonic()))
    window_start: Counters | None = None
    rates: dict[str, float] = field(default_factory=dict)
    #: Upload by on/off screen over the steady window, and the state at the previous tick.
    upload: UploadByScreen = field(default_factory=UploadByScreen)
    screen: str | None = None

    @property
    def errors(self) -> int:
        return len(self.peer.errors) + (1 if self.error else 0)

    @property
    def receiving(self) -> bool:
        return self.peer.video_frames > 0 or any(
            r.video_frames for r in (getattr(self.peer, "remote", None) or {}).values()
        )

    def connected(self) -> bool:
        pcs = connections(self.peer)
        return bool(pcs) and all(pc.connectionState == "connected" for pc in pcs)

    def tick(self) -> None:
        """Rates since the previous tick."""
        now = counters(self.peer)
        self.rates = rates(self.last, now)
        if self.window_start is not None:
            self.upload.add(self.screen, now.bytes_out - self.last.bytes_out, now.at - self.last.at)
        self.screen = screen_state(self.peer)
        self.last = now
        if self.state == "joined" and self.connected():
            self.state = "connected"


def rates(first: Counters, last: Counters) -> dict[str, float]:
    wall = max(last.at - first.at, 1e-6)
    return {
        "fps_in": last.fps(first),
        "audio_in": last.audio_rate(first),
        "kbps_in": (last.bytes_in - first.bytes_in) * 8 / wall / 1000,
        "kbps_out": (last.bytes_out - first.bytes_out) * 8 / wall / 1000,
        "streams": last.streams,
    }


class Display:
    """A live table per room on a terminal (rich), plain lines otherwise."""

    def __init__(self, peers: list[LoadPeer], mode: str, interval: float, rich_ok: bool) -> None:
        self._peers, self._mode, self._interval = peers, mode, interval
        self._started = time.monotonic()
        self._last_line = 0.0
        self._live: Any = None
        if rich_ok:
            from rich.live import Live

            self._live = Live(self._render(), refresh_per_second=2, transient=False)
            self._live.start()

    def update(self, note: str = "") -> None:
        if self._live is not None:
            self._live.update(self._render())
            return
        now = time.monotonic()
        if now - self._last_line < self._interval and not note:
            return
        self._last_line = now
        for room, peers in self._rooms().items():
            fps = [p.rates.get("fps_in", 0.0) for p in peers]
            print(
                f"[{now - self._started:6.1f}s] room {room} ({self._mode}): "
                f"{sum(p.state == 'connected' for p in peers)}/{len(peers)} connected, "
                f"in {sum(fps) / len(fps):.1f} fps (min {min(fps):.1f}) "
                f"{sum(p.rates.get('kbps_in', 0.0) for p in peers) / len(peers):.0f} kbit/s, "
                f"out {sum(p.rates.get('kbps_out', 0.0) for p in peers) / len(peers):.0f} kbit/s per peer, "
                f"errors {sum(p.errors for p in peers)}",
                flush=True,
            )
        if note:
            print(note, flush=True)

    def stop(self) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.stop()

    def _rooms(self) -> dict[str, list[LoadPeer]]:
        rooms: dict[str, list[LoadPeer]] = {}
        for peer in self._peers:
            rooms.setdefault(peer.room, []).append(peer)
        return rooms

    def _render(self) -> Any:
        from rich.console import Group
        from rich.table import Table

        tables = []
        elapsed = time.monotonic() - self._started
        for room, peers in self._rooms().items():
            connected = sum(p.state == "connected" for p in peers)
            table = Table(title=f"room {room} ({self._mode}) · {connected}/{len(peers)} connected · {elapsed:.0f} s")
            for column in ("peer", "state", "streams in", "fps in", "kbit/s in", "kbit/s out", "errors"):
                table.add_column(column, justify="left" if column in ("peer", "state") else "right")
            for p in peers:
                r = p.rates
                table.add_row(
                    p.name,
                    p.state if not p.error else f"[red]{p.state}: {p.error}[/red]",
                    f"{r.get('streams', 0):.0f}",
                    f"{r.get('fps_in', 0.0):.1f}",
                    f"{r.get('kbps_in', 0.0):.0f}",
                    f"{r.get('kbps_out', 0.0):.0f}",
                    f"[red]{p.errors}[/red]" if p.errors else "0",
                )
            tables.append(table)
        return Group(*tables)


def room_names(args: argparse.Namespace) -> list[str]:
    """Each peer's room: all in --room, or spread in turn over --rooms rooms."""
    if args.room:
        return [args.room] * args.peers
    return [f"{args.room_prefix}{i % args.rooms + 1}" for i in range(args.peers)]


def make_peer(args: argparse.Namespace, index: int, room: str) -> LoadPeer:
    name = f"{args.name_prefix}{index}"
    options: dict[str, Any] = {"mode": args.mode} if args.mode != "mcu" else {}
    peer = Peer(
        args.url,
        room,
        name,
        video=PreEncodedVideoTrack(peer_colour(index), fps=CLIP_FPS, bitrate=args.bitrate),
        audio=PreEncodedAudioTrack(300.0 + 25 * (index % 40)),
        decode=False,
        chat=False,
        token=args.token,
        honour_visibility=not args.ignore_visibility,
        **options,
    )
    return LoadPeer(room, name, peer)


async def join(load: LoadPeer, delay: float, timeout: float) -> None:
    await asyncio.sleep(delay)
    load.state = "joining"
    try:
        await load.peer.join(timeout=timeout)
    except (PeerError, OSError, asyncio.TimeoutError) as exc:
        load.state, load.error = "failed", str(exc) or type(exc).__name__
        return
    load.state, load.joined_at, load.at_join = "joined", time.monotonic(), counters(load.peer)


def _mean_of(rows: list[dict], key: str) -> float | None:
    """The mean of `key` over the rows that have a value for it; None if none has."""
    values = [r[key] for r in rows if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def summary(peers: list[LoadPeer], args: argparse.Namespace, window: tuple[float, float], reason: str) -> dict:
    """Per-peer rates over the steady window, and per-room means."""
    rows = []
    for p in peers:
        last = p.last
        first = p.window_start or Counters(window[0])
        row = {
            "room": p.room,
            "name": p.name,
            "state": p.state,
            "error": p.error,
            "errors": p.errors,
            "server_errors": [e.code for e in p.peer.errors],
            # The server's last word on its video (mcu rooms): on screen, and whether it is wanted.
            "on_screen": p.peer.visibility.on_screen if p.peer.visibility else None,
            "send_video": p.peer.visibility.send_video if p.peer.visibility else None,
        }
        row.update(rates(first, last) if p.window_start is not None else {})
        row.update({f"kbps_out_{state}_screen": p.upload.kbps(state) for state in ("on", "off")})
        rows.append(row)
    rooms: dict[str, dict[str, Any]] = {}
    for room in dict.fromkeys(p.room for p in peers):
        mine = [r for r in rows if r["room"] == room and "fps_in" in r]
        rooms[room] = {
            "peers": sum(r["room"] == room for r in rows),
            "measured": len(mine),
            **{
                f"{key}_mean": (sum(r[key] for r in mine) / len(mine) if mine else 0.0)
                for key in ("fps_in", "audio_in", "kbps_in", "kbps_out")
            },
            "fps_in_min": min((r["fps_in"] for r in mine), default=0.0),
            # mcu rooms: mean upload per peer while on screen and while off (the server's visibility).
            **{f"kbps_out_{state}_screen_mean": _mean_of(mine, f"kbps_out_{state}_screen") for state in ("on", "off")},
        }
    return {
        "url": args.url,
        "mode": args.mode,
        "peers": len(peers),
        "joined": sum(p.joined_at is not None for p in peers),
        "errors": sum(p.errors for p in peers),
        "window_s": round(window[1] - window[0], 3),
        "stopped_by": reason,
        "rooms": rooms,
        "peer_rates": rows,
    }


def print_summary(result: dict) -> None:
    print(
        f"summary: {result['joined']}/{result['peers']} peers joined ({result['mode']}), "
        f"window {result['window_s']:.1f} s, errors {result['errors']}, stopped by {result['stopped_by']}"
    )
    for room, r in result["rooms"].items():
        print(
            f"  room {room}: {r['measured']}/{r['peers']} measured, in {r['fps_in_mean']:.1f} fps "
            f"(min {r['fps_in_min']:.1f}), {r['audio_in_mean']:.1f} audio pkt/s, {r['kbps_in_mean']:.0f} kbit/s, "
            f"out {r['kbps_out_mean']:.0f} kbit/s per peer"
            + "".join(
                f", {state} screen {value:.0f}"
                for state in ("on", "off")
                if (value := r[f"kbps_out_{state}_screen_mean"]) is not None
            )
        )


async def run(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reason = "duration"

    def on_signal(name: str) -> None:
        nonlocal reason
        reason = name
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig.name)
    peers = [make_peer(args, i, room) for i, room in enumerate(room_names(args))]
    display = Display(peers, args.mode, args.interval, rich_ok=args.display == "rich")
    joins = [asyncio.ensure_future(join(p, i * args.ramp, args.join_timeout)) for i, p in enumerate(peers)]
    started = time.monotonic()
    window_start: float | None = None
    try:
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0 if display._live is None else 0.5)
            note = ""
            for p in peers:
                p.tick()
            if window_start is None and all(j.done() for j in joins):
                live = [p for p in peers if p.joined_at is not None]
                if live and all(p.receiving for p in live):
                    window_start = time.monotonic()
                    for p in live:
                        p.window_start = p.last
                    note = f"ready: all {len(live)} joined peers receive media"
            display.update(note)
            if args.duration and time.monotonic() - started >= args.duration:
                break
    finally:
        for j in joins:
            j.cancel()
        await asyncio.gather(*joins, return_exceptions=True)
        end = time.monotonic()
        for p in peers:
            p.last = counters(p.peer)  # the window's end; the display keeps the last tick's rates
        if window_start is None:  # never steady: measure from the last join
            window_start = max((p.joined_at for p in peers if p.joined_at), default=end)
            for p in peers:
                p.window_start = p.at_join
        display.stop()
        closing = [asyncio.wait_for(p.peer.close(), args.leave_timeout) for p in peers]
        await asyncio.gather(*closing, return_exceptions=True)
    result = summary(peers, args, (window_start, end), reason)
    print_summary(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["joined"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "url",
        nargs="?",
        default="ws://127.0.0.1:8080/ws",
        help="the server's WebSocket URL, ws:// or wss:// (default ws://127.0.0.1:8080/ws)",
    )
    parser.add_argument("--peers", type=int, default=4, help="number of peers (default 4)")
    rooms = parser.add_mutually_exclusive_group()
    rooms.add_argument("--rooms", type=int, default=1, help="spread the peers over this many rooms (default 1)")
    rooms.add_argument("--room", help="put every peer in this one room")
    parser.add_argument("--room-prefix", default="load-", help="names of --rooms rooms: PREFIX1, PREFIX2... (load-)")
    parser.add_argument("--name-prefix", default="load", help="peer names: PREFIX0, PREFIX1... (default load)")
    parser.add_argument("--mode", choices=MODES, default="mcu", help="room mode asked at join (default mcu)")
    parser.add_argument("--token", help="join token, for a server started with --secret")
    parser.add_argument("--duration", type=float, default=0, help="stop after this many seconds (default: on signal)")
    parser.add_argument("--ramp", type=float, default=0.2, help="seconds between two joins (default 0.2)")
    parser.add_argument("--bitrate", type=int, default=300_000, help="bitrate of the sent VP8 clip (default 300000)")
    parser.add_argument("--join-timeout", type=float, default=15, help="seconds a join may take (default 15)")
    parser.add_argument("--leave-timeout", type=float, default=10, help="seconds a peer may take to leave (10)")
    parser.add_argument("--interval", type=float, default=5, help="seconds between plain progress lines (default 5)")
    parser.add_argument(
        "--display",
        choices=("auto", "rich", "plain"),
        default="auto",
        help="auto: a live table on a terminal when rich is installed, else plain lines",
    )
    parser.add_argument(
        "--ignore-visibility",
        action="store_true",
        help="keep sending video when the server says it is not shown (default: pause it, as clients should)",
    )
    parser.add_argument("--json", type=Path, help="write the summary to this file")
    args = parser.parse_args(argv)
    if args.peers < 1 or (args.rooms or 1) < 1:
        parser.error("--peers and --rooms must be at least 1")
    if args.display == "auto":
        try:
            import rich  # noqa: F401

            args.display = "rich" if sys.stdout.isatty() else "plain"
        except ImportError:
            args.display = "plain"
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
