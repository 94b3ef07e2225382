"""The `mcu-client` command: join a room from the terminal, or watch one over WHEP."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time

import aiohttp
from aiortc import MediaStreamTrack
from aiortc.contrib.media import MediaPlayer

from signaling.chat import ChatMessage
from signaling.protocol import MODES

from .impairment import parse_spec
from .peer import Peer, PeerError
from .sources import ColorTrack, MovingTrack, TextTrack, ToneTrack, parse_color
from .whep import WhepError, WhepViewer


def _video(spec: str | None) -> tuple[MediaStreamTrack | None, MediaPlayer | None]:
    if spec is None:
        return None, None
    if spec.startswith("color:"):
        return ColorTrack(parse_color(spec.removeprefix("color:"))), None
    if spec.startswith("moving:"):
        return MovingTrack(parse_color(spec.removeprefix("moving:"))), None
    player = MediaPlayer(spec.removeprefix("file:"), loop=True)
    return player.video, player


def _screen(spec: str | None) -> tuple[MediaStreamTrack | None, MediaPlayer | None]:
    if spec is None:
        return None, None
    if spec == "pattern":
        return TextTrack(), None
    player = MediaPlayer(spec.removeprefix("file:"), loop=True)
    return player.video, player


def _audio(spec: str | None) -> tuple[MediaStreamTrack | None, MediaPlayer | None]:
    if spec is None:
        return None, None
    if spec.startswith("tone:"):
        return ToneTrack(float(spec.removeprefix("tone:"))), None
    player = MediaPlayer(spec.removeprefix("file:"), loop=True)
    return player.audio, player


#: The server's messages printed as they come.
_EVENTS_SHOWN = ("participantJoined", "participantLeft", "tier", "visibility", "screenShare", "error")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcu-client", description="Join an MCU room from Python.")
    commands = parser.add_subparsers(dest="command", required=True)
    join = commands.add_parser("join", help="join a room, send media, receive the composite")
    join.add_argument("url", help="signaling URL, e.g. ws://127.0.0.1:8080/ws")
    join.add_argument("--room", required=True)
    join.add_argument("--name", required=True)
    join.add_argument(
        "--video",
        help="color:NAME (a test pattern: red, green, #rrggbb...), moving:NAME (the same colour, moving: "
        "it needs its bitrate) or a media file",
    )
    join.add_argument("--audio", help="tone:HZ (a sine tone) or a media file")
    join.add_argument(
        "--share",
        metavar="FILE|pattern",
        help="share a screen once joined (mcu rooms): a media file's video, or pattern (1920x1080 of 16 px text)",
    )
    join.add_argument("--record", metavar="FILE", help="write what is received (video and audio) to FILE")
    join.add_argument(
        "--chat", action="append", default=[], metavar="TEXT", help="send TEXT to the room's chat once connected"
    )
    join.add_argument(
        "--relay-only", action="store_true", help="reach the server only through the TURN server it hands out"
    )
    join.add_argument(
        "--token",
        default=os.environ.get("MCU_TOKEN"),
        help="join token, when the server has a secret (default: the MCU_TOKEN environment variable)",
    )
    join.add_argument("--tier", help="output tier to receive, e.g. low or high (default: the server's)")
    join.add_argument("--hide-self", action="store_true", help="leave your own tile out of the picture you receive")
    join.add_argument("--codec", choices=["vp8", "h264"], help="offer only this video codec (default: both)")
    join.add_argument(
        "--mode",
        choices=MODES,
        help="the mode of a room this join creates: mcu (one composite), sfu (forwarded) or mesh (peer to peer); "
        "default: the server's",
    )
    join.add_argument(
        "--impair",
        metavar="SPEC",
        help='impair our own datagrams, e.g. "loss=5,jitter=30,seed=1" (keys: loss, burst, delay, jitter, order, '
        "reorder, rate, queue, seed; up./down. before a key for one direction; see client/impairment.py)",
    )
    join.add_argument(
        "--ignore-visibility",
        action="store_true",
        help="keep sending video when the server says it is not shown (default: pause it while it is not wanted)",
    )
    join.add_argument("--duration", type=float, help="leave after this many seconds (default: until Ctrl-C)")
    join.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    watch = commands.add_parser("watch", help="watch a room's composite and hear its mix over WHEP (no signaling)")
    watch.add_argument("endpoint", help="WHEP endpoint, e.g. http://127.0.0.1:8080/whep/room1 (?tier=low for a tier)")
    watch.add_argument(
        "--token",
        default=os.environ.get("MCU_TOKEN"),
        help="a token with the subscribe grant, when the server has a secret (default: MCU_TOKEN)",
    )
    watch.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    watch.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def format_chat(message: ChatMessage) -> str:
    """A chat line as a person reads it: `[HH:MM:SS] name: text`, in local time."""
    stamp = time.strftime("%H:%M:%S", time.localtime(message.timestamp / 1000))
    return f"[{stamp}] {message.name}: {message.text}"


async def run_join(args: argparse.Namespace) -> int:
    try:
        video, _ = _video(args.video)
        audio, _ = _audio(args.audio)
        screen, _ = _screen(args.share)
        impairment = parse_spec(args.impair) if args.impair else None
    except (ValueError, OSError) as exc:
        print(f"mcu-client: {exc}", file=sys.stderr)
        return 2
    peer = Peer(
        args.url,
        args.room,
        args.name,
        video=video,
        audio=audio,
        record=args.record,
        ice_transport_policy="relay" if args.relay_only else "all",
        token=args.token,
        tier=args.tier,
        hide_self=args.hide_self,
        video_codec=args.codec,
        mode=args.mode,
        impairment=impairment,
        honour_visibility=not args.ignore_visibility,
    )
    try:
        await peer.join()
        others = list(peer.participants.values())
        print(f"joined room {args.room} ({peer.room_mode} mode) as {peer.peer_id}; others: {others}", flush=True)
        loop = asyncio.get_running_loop()
        deadline = None if args.duration is None else loop.time() + args.duration
        if screen is not None:
            await peer.share(screen)
            print("sharing a screen", flush=True)
        for text in args.chat:
            await peer.chat(text)
        reported = chats = chat_errors = 0
        while deadline is None or loop.time() < deadline:
            await asyncio.sleep(0.2)
            for event in peer.events[reported:]:
                if event["type"] in _EVENTS_SHOWN:
                    print(f"event: {event}", flush=True)
            reported = len(peer.events)
            for message in peer.chat_messages[chats:]:
                print(format_chat(message), flush=True)
            chats = len(peer.chat_messages)
            for error in peer.chat_errors[chat_errors:]:
                print(f"chat error {error.code}: {error.message}", flush=True)
            chat_errors = len(peer.chat_errors)
        print(f"received {peer.video_frames} video frames, {peer.audio_frames} audio frames", flush=True)
        if peer.impaired is not None:
            print(f"impaired up: {peer.impaired.up.counters}, down: {peer.impaired.down.counters}", flush=True)
        for peer_id, publisher in peer.remote.items():
            print(
                f"from {peer_id}: {publisher.video_frames} video frames, {publisher.audio_frames} audio frames",
                flush=True,
            )
        return 0
    except (PeerError, OSError) as exc:
        print(f"mcu-client: {exc}", file=sys.stderr)
        return 1
    finally:
        await peer.close()


async def run_watch(args: argparse.Namespace) -> int:
    viewer = WhepViewer(args.endpoint, args.token)
    try:
        await viewer.start()
        print(f"watching: {viewer.resource}", flush=True)
        await asyncio.sleep(args.duration if args.duration is not None else float("inf"))
        print(f"received {viewer.video_frames} video frames, {viewer.audio_frames} audio frames", flush=True)
        return 0
    except (WhepError, aiohttp.ClientError, OSError) as exc:
        print(f"mcu-client: {exc}", file=sys.stderr)
        return 1
    finally:
        await viewer.close()


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level)
    try:
        sys.exit(asyncio.run(run_join(args) if args.command == "join" else run_watch(args)))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
