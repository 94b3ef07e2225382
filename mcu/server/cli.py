"""The `mcu` command: `mcu serve` runs the server."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import ssl
import sys
import threading
from pathlib import Path

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from compositor.layout import BUILT_IN
from mcu import logs
from mcu.config import DEFAULT_TIER, Config, Tier
from mcu.media import offline
from mcu.media.allocator import limit_arenas
from mcu.rooms.recording import RecordingError, check_directory
from mcu.server.app import create_app
from mcu.server.front import create_front_app
from mcu.server.workers import end_with_parent
from signaling import tokens
from signaling.directory import DirectoryUnavailable, RedisDirectory
from signaling.grants import ALL_GRANTS
from signaling.ice import IceServers, is_loopback_host, use_host_addresses
from signaling.limits import Limits
from signaling.protocol import MODES


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if width < 16 or height < 16 or width % 2 or height % 4:
        raise argparse.ArgumentTypeError("width must be even, height a multiple of 4, both at least 16")
    return width, height


def _max_tiles(text: str) -> int:
    """At least 2: one picture and the +N tile."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of tiles, got {text!r}") from None
    if count < 2:
        raise argparse.ArgumentTypeError("at least 2 tiles (one picture and the +N tile)")
    return count


def _max_shares(text: str) -> int:
    """0 (nobody may share) or more."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of shares, got {text!r}") from None
    if count < 0:
        raise argparse.ArgumentTypeError("0 or more shares")
    return count


_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: What `mcu token` grants unless told: a participant's rights, not a moderator's.
DEFAULT_GRANTS = ("publish", "subscribe", "chat")
SECRET_ENV = "MCU_SECRET"


def _ttl(text: str) -> int:
    """Seconds from "90", "30m", "1h", "2d"."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in _TTL_UNITS else (text, "s")
    try:
        seconds = int(float(number) * _TTL_UNITS[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a duration such as 90, 30m, 1h or 2d, got {text!r}") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("the duration must be positive")
    return seconds


def _grants(text: str) -> list[str]:
    names = [g.strip() for g in text.split(",") if g.strip()]
    if names == ["all"]:
        return sorted(ALL_GRANTS)
    unknown = set(names) - ALL_GRANTS
    if unknown or not names:
        choices = ", ".join(sorted(ALL_GRANTS))
        raise argparse.ArgumentTypeError(
            f"unknown grant(s) {', '.join(sorted(unknown)) or text!r}; choose among {choices}, or all"
        )
    return names


def _add_secret(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument(
        "--secret",
        default=os.environ.get(SECRET_ENV),
        help=f"{help}. Default: the {SECRET_ENV} environment variable, which keeps it out of `ps`",
    )


_TIER_RE = re.compile(r"([A-Za-z0-9_-]{1,32})=(\d+)x(\d+)@(\d+):(\d+(?:\.\d+)?)([kKmM]?)")


def _tier(text: str) -> tuple[str, Tier]:
    """NAME=WxH@FPS:BITRATE, the bitrate in bit/s or with a k or M suffix."""
    match = _TIER_RE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"expected NAME=WxH@FPS:BITRATE such as low=640x360@15:400k, got {text!r}")
    name, width, height, fps, rate, unit = match.groups()
    _size(f"{width}x{height}")
    if not 1 <= int(fps) <= 60:
        raise argparse.ArgumentTypeError("the frame rate must be 1 to 60")
    bitrate = round(float(rate) * {"": 1, "k": 1000, "m": 1_000_000}[unit.lower()])
    if bitrate < 10_000:
        raise argparse.ArgumentTypeError("the bitrate must be at least 10k")
    return name, Tier(int(width), int(height), int(fps), bitrate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcu", description="A WebRTC MCU: one composite downstream per peer.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the signaling and media server")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    serve.add_argument("--size", type=_size, default=(1280, 720), help="composite size, WxH (default 1280x720)")
    serve.add_argument("--fps", type=int, default=30, help="composite frame rate (default 30)")
    serve.add_argument(
        "--max-tiles",
        type=_max_tiles,
        default=16,
        help="most tiles in a composite; a larger room shows its recent speakers and a +N tile (default 16)",
    )
    serve.add_argument("--layout", choices=sorted(BUILT_IN), default="grid", help="a new room's layout (default grid)")
    serve.add_argument(
        "--max-shares",
        type=_max_shares,
        default=Config.max_shares,
        help="shared screens a room shows at once; one more share gets share_limit (default 1)",
    )
    serve.add_argument(
        "--mode",
        choices=MODES,
        default="mcu",
        help="a new room's mode when its first join names none: mcu (composite), sfu (forward) or mesh (default mcu)",
    )
    serve.add_argument("--video-bitrate", type=int, default=Config.video_bitrate, help="composite bitrate in bit/s")
    serve.add_argument(
        "--tier",
        type=_tier,
        action="append",
        default=[],
        metavar="NAME=WxH@FPS:BITRATE",
        help="an output tier peers may choose at join, e.g. low=640x360@15:400k (built in: low=640x360@15:400k, "
        f"small=320x180@15:150k; {DEFAULT_TIER} is --size, --fps and --video-bitrate); repeatable. With audio only, "
        "the tiers are the ladder each receiver moves down and up as its link allows",
    )
    serve.add_argument(
        "--no-adapt",
        dest="adapt",
        action="store_false",
        help="keep each receiver on the tier it chose at join, whatever its link (default: adapt, below that tier)",
    )
    serve.add_argument(
        "--no-sender-control",
        dest="sender_control",
        action="store_false",
        help="let every publisher send video and decode it all, shown or not (default: a publisher on no canvas "
        "for 2 s is asked to pause its video, and what it still sends is not decoded)",
    )
    serve.add_argument(
        "--media-address",
        action="append",
        help="address offered for media (ICE host candidate); repeatable. "
        "Default: 127.0.0.1 when --host is a loopback address, else every interface",
    )
    serve.add_argument(
        "--ice-server",
        action="append",
        default=[],
        metavar="URL",
        help="STUN or TURN server handed to clients and used by the server (stun:, turn:, turns: URL); repeatable",
    )
    serve.add_argument("--turn-username", help="static TURN username, for every client")
    serve.add_argument("--turn-credential", help="static TURN credential (password), for every client")
    serve.add_argument(
        "--turn-secret",
        default=os.environ.get("MCU_TURN_SECRET"),
        help="secret shared with coturn (use-auth-secret): each client gets its own time-limited "
        "credential. Default: the MCU_TURN_SECRET environment variable, which keeps it out of `ps`",
    )
    serve.add_argument(
        "--turn-ttl", type=int, default=86400, help="lifetime of issued TURN credentials, seconds (default 86400)"
    )
    serve.add_argument(
        "--audio-talkers",
        type=int,
        default=Config.audio_talkers,
        help="the K loudest talkers get a personal mix, everyone else shares one (default 3; 0: everyone "
        "gets a personal mix)",
    )
    serve.add_argument(
        "--encode-per-peer",
        action="store_true",
        help="benchmark baseline: encode the composite once per peer instead of once per room",
    )
    _add_secret(serve, "key that signs join tokens: with it, every join and API call needs a token")
    serve.add_argument(
        "--allow-anonymous",
        action="store_true",
        help="listen on a non-loopback --host without --secret (anyone who reaches it may join any room)",
    )
    serve.add_argument("--record-dir", help="directory for recordings (startRecording, the HTTP API, --auto-record)")
    serve.add_argument("--auto-record", action="store_true", help="record every room for as long as it lives")
    serve.add_argument(
        "--kick-ban",
        type=float,
        default=Config.kick_ban_seconds,
        metavar="SECONDS",
        help="how long a removed participant's token may not rejoin its room (0: no ban; needs --secret; "
        f"default {Config.kick_ban_seconds:g})",
    )
    serve.add_argument("--hls", metavar="DIR", help="write every mcu room's live HLS in DIR, served at /hls/{room}/")
    serve.add_argument(
        "--hls-tiers",
        metavar="NAMES",
        help=f"the tiers of the HLS ladder, comma-separated (default: {DEFAULT_TIER}); each is one H.264 encode",
    )
    serve.add_argument(
        "--hls-segment",
        type=float,
        metavar="SECONDS",
        help=f"the HLS segments' length, 1 to 6 s (default {Config.hls_segment_seconds:g}): players start three "
        "segments behind the live edge, so 1 s cuts their delay to about 4 s, at the cost of a keyframe every "
        "second in the tier's H.264 encode",
    )
    serve.add_argument("--cert", help="TLS certificate chain (PEM): serve HTTPS and WSS; needs --key")
    serve.add_argument("--key", help="TLS private key (PEM) of --cert")
    scale = serve.add_argument_group("scale (docs/operations.md)")
    scale.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="media worker processes behind this address, each room on one (auto: one per core; default 1: "
        "everything in this process)",
    )
    scale.add_argument(
        "--redis",
        metavar="URL",
        help="share a room directory with other nodes in Redis (redis://host:port/db); Redis must answer at start",
    )
    scale.add_argument(
        "--advertise-url",
        metavar="URL",
        help="this node's signaling URL as the other nodes reach it (default ws://HOST:PORT/ws)",
    )
    scale.add_argument("--worker-port", type=int, help=argparse.SUPPRESS)  # set by the front for its workers
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    serve.add_argument(
        "--log-format", default="text", choices=["text", "json"], help="text, or JSON lines with room and peer ids"
    )
    limits = serve.add_argument_group("limits (each refusal has its own error code)")
    default = Limits()
    for flag, kind, value, text in (
        ("--max-rooms", int, default.max_rooms, "rooms at once (too_many_rooms)"),
        ("--max-peers", int, default.max_peers_per_room, "peers per room (room_full)"),
        ("--max-viewers", int, default.max_viewers_per_room, "WHEP viewers per room, apart from its peers (room_full)"),
        ("--max-message-bytes", int, default.max_message_bytes, "signaling message size (message_too_large)"),
        (
            "--max-messages-per-second",
            float,
            default.messages_per_second,
            "signaling messages per second per connection, twice that at once (rate_limited)",
        ),
        ("--join-timeout", float, default.join_timeout, "seconds to join after connecting (join_timeout)"),
        ("--max-sdp-bytes", int, default.max_sdp_bytes, "SDP offer size (sdp_too_large)"),
        ("--max-tracks", int, default.max_tracks_per_peer, "audio and video sections per offer (too_many_tracks)"),
    ):
        limits.add_argument(flag, type=kind, default=value, help=f"{text}; default {value:g}")

    token = commands.add_parser("token", help="print a join token (needs the server's secret)")
    token.add_argument("--room", required=True, help='the room it admits to ("*": every room, for the HTTP API)')
    token.add_argument("--identity", required=True, help="who holds it (the token's subject)")
    token.add_argument("--ttl", type=_ttl, default=3600, help="lifetime: 90, 30m, 1h, 2d (default 1h)")
    token.add_argument(
        "--grant",
        type=_grants,
        action="append",
        help=f"comma-separated grants among {', '.join(sorted(ALL_GRANTS))}, or all; repeatable "
        f"(default {','.join(DEFAULT_GRANTS)})",
    )
    _add_secret(token, "the server's --secret")
    offline.add_parser(commands, _size)
    return parser


#: The event loop holds the GIL most of the time under load; the codec threads
#: take it back between C calls. Python's default 5 ms turn made a 16-peer room
#: compose at 19 fps; 2 ms gave 26 fps at the same CPU (docs/benchmarks.md).
GIL_SWITCH_INTERVAL = 0.002


class AccessLogger(AbstractAccessLogger):
    """One line per request without its query string: invitation links carry tokens (`/?token=...`)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %s %.1f ms', request.remote, request.method, request.path, response.status, time * 1000
        )


def ice_servers(args: argparse.Namespace) -> IceServers:
    """The ICE servers of the command line; ValueError says what is wrong with them."""
    return IceServers(
        urls=tuple(args.ice_server),
        username=args.turn_username,
        credential=args.turn_credential,
        secret=args.turn_secret,
        ttl=args.turn_ttl,
    )


def serve(args: argparse.Namespace, ice: IceServers, tls: ssl.SSLContext | None = None) -> None:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    limit_arenas()  # before aiortc's and the rooms' threads exist
    logs.configure(args.log_level, args.log_format)
    if args.media_address:
        use_host_addresses(args.media_address)
    elif is_loopback_host(args.host):
        use_host_addresses(["127.0.0.1"])
    tiers = {**Config().tiers, **dict(args.tier)}
    width, height = args.size
    default = tiers.pop(DEFAULT_TIER, Tier(width, height, args.fps, args.video_bitrate))
    config = Config(
        width=default.width,
        height=default.height,
        fps=default.fps,
        video_bitrate=default.bitrate,
        tiers=tiers,
        adapt=args.adapt,
        sender_control=args.sender_control,
        encode_per_peer=args.encode_per_peer,
        audio_talkers=args.audio_talkers or None,
        max_tiles=args.max_tiles,
        layout=args.layout,
        max_shares=args.max_shares,
        mode=args.mode,
        ice_servers=ice,
        secret=args.secret or None,
        limits=Limits(
            max_rooms=args.max_rooms,
            max_peers_per_room=args.max_peers,
            max_viewers_per_room=args.max_viewers,
            max_message_bytes=args.max_message_bytes,
            messages_per_second=args.max_messages_per_second,
            message_burst=max(1, round(2 * args.max_messages_per_second)),
            join_timeout=args.join_timeout,
            max_sdp_bytes=args.max_sdp_bytes,
            max_tracks_per_peer=args.max_tracks,
        ),
        record_dir=args.record_dir,
        auto_record=args.auto_record,
        kick_ban_seconds=args.kick_ban,
        hls_dir=args.hls,
        hls_tiers=tuple(name.strip() for name in (args.hls_tiers or "").split(",") if name.strip()),
        hls_segment_seconds=args.hls_segment or Config.hls_segment_seconds,
    )
    host, port = args.host, args.port
    if args.worker_port:  # a worker of a front: loopback, plain HTTP; the front tells the clients
        app, host, port, tls = create_app(config), "127.0.0.1", args.worker_port, None
        end_with_parent()
    elif args.workers > 1 or args.redis:
        cluster = RedisDirectory(args.redis) if args.redis else None
        advertise = args.advertise_url or f"ws://{args.host}:{args.port}/ws"
        app = create_front_app(config, args.argv, args.workers, cluster, advertise if cluster else None)
    else:
        app = create_app(config)
    if config.secret is None and not args.worker_port:
        print("mcu: no --secret: anyone who reaches this address may join any room", flush=True)
    scheme = "https" if tls else "http"
    print(f"mcu: serving on {scheme}://{host}:{port}/ (signaling at /ws)", flush=True)
    failed = False
    try:
        web.run_app(
            app,
            host=host,
            port=port,
            print=None,
            shutdown_timeout=5,
            access_log_class=AccessLogger,
            ssl_context=tls,
        )
    except Exception:
        # Failing to start, or a shutdown step that raised: that skips the steps after it (closing
        # peer connections among them), so the process must not wait below on what was left running.
        logging.getLogger(__name__).exception("the server stopped on an error")
        failed = True
    # Shutdown closed every peer connection it could in its time. aiortc's decoder threads are not
    # daemon threads: one whose connection it could not close would keep the process alive forever
    # (seen with workers ended by their front's death), so the process leaves without them.
    leftover = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if leftover:
        logging.getLogger(__name__).warning("exiting with %d codec threads still running", len(leftover))
    if leftover or failed:
        logging.shutdown()
        sys.stdout.flush()
        os._exit(1 if failed else 0)


def _workers(text: str) -> int:
    """A number of worker processes, or "auto": one per core."""
    if text == "auto":
        return os.cpu_count() or 1
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of workers or auto, got {text!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError("at least 1 worker")
    return count


async def _check_redis(url: str) -> None:
    directory = RedisDirectory(url)
    try:
        await directory.ping()
    finally:
        await directory.close()


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The server's TLS context from PEM files, or None for plain HTTP; ValueError says what is wrong."""
    if not cert and not key:
        return None
    if not (cert and key):
        raise ValueError("--cert and --key go together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot use --cert {cert} --key {key}: {exc}") from None
    return context


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        #: The front starts its workers with the same command line.
        args.argv = list(sys.argv[1:] if argv is None else argv)
        if args.redis and not args.worker_port:
            try:
                asyncio.run(_check_redis(args.redis))
            except DirectoryUnavailable as exc:
                print(f"mcu: cannot start with --redis {args.redis}: {exc}", file=sys.stderr)
                sys.exit(1)
        if not args.secret and not is_loopback_host(args.host) and not args.allow_anonymous:
            parser.error(
                f"--host {args.host} without --secret would let anyone join: give --secret (or "
                f"{SECRET_ENV}), or --allow-anonymous if that is what you want"
            )
        try:
            ice = ice_servers(args)
            tls = tls_context(args.cert, args.key)
        except ValueError as exc:
            parser.error(str(exc))
        if args.auto_record and not args.record_dir:
            parser.error("--auto-record needs --record-dir")
        if args.record_dir:
            try:
                check_directory(Path(args.record_dir))
            except RecordingError as exc:
                parser.error(str(exc))
        if args.hls:
            try:
                check_directory(Path(args.hls))
            except RecordingError as exc:
                parser.error(str(exc).replace("recording directory", "HLS directory"))
        if args.hls_tiers and not args.hls:
            parser.error("--hls-tiers needs --hls")
        if args.hls_segment is not None and not args.hls:
            parser.error("--hls-segment needs --hls")
        if args.hls_segment is not None and not 1 <= args.hls_segment <= 6:
            parser.error("--hls-segment: from 1 to 6 seconds")
        known = {*Config().tiers, *dict(args.tier), DEFAULT_TIER}
        unknown = {name.strip() for name in (args.hls_tiers or "").split(",") if name.strip()} - known
        if unknown:
            parser.error(f"--hls-tiers: no tier {', '.join(sorted(unknown))} (tiers: {', '.join(sorted(known))})")
        serve(args, ice, tls)
    elif args.command == "compose":
        sys.exit(offline.run(args))
    elif args.command == "token":
        if not args.secret:
            parser.error(f"give the server's secret with --secret or {SECRET_ENV}")
        grants = sorted({g for group in args.grant or [DEFAULT_GRANTS] for g in group})
        print(tokens.issue(args.secret, args.room, args.identity, args.ttl, grants))
    else:  # pragma: no cover - argparse rejects unknown commands
        sys.exit(2)


if __name__ == "__main__":
    main()
