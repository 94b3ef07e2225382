"""STUN/TURN: the credentials the MCU issues, and a relay-only client through a real coturn."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aioice import turn
from aioice.stun import TransactionFailed
from conftest import stop_process
from media_checks import cell_colours, close_to

from client.peer import Peer, PeerError
from client.sources import COLORS, ColorTrack, ToneTrack, rgb_to_yuv
from mcu.config import Config
from mcu.server.cli import main as mcu_main
from signaling.ice import IceServers

SECRET = "north-wind-shared-secret"
REALM = "mcu.test"
TTL = 600


# --- credentials -----------------------------------------------------------------------------


def test_secret_credentials_are_coturn_rest_api_credentials():
    ice = IceServers(urls=("turn:turn.example.org:3478",), secret="north", ttl=86400)
    servers = ice.for_user("alice", now=1_699_913_600.7)
    # Known answer, computed independently:
    # printf 1700000000:alice | openssl dgst -sha1 -hmac north -binary | base64
    expected = {"username": "1700000000:alice", "credential": "Cd/49soE35ICqcJF/bCTn8Z4OyE="}
    assert servers == [{"urls": ["turn:turn.example.org:3478"], **expected}]


def test_secret_credentials_expire_ttl_seconds_from_now_and_differ_per_user():
    ice = IceServers(urls=("stun:stun.example.org", "turn:turn.example.org?transport=tcp"), secret=SECRET, ttl=3600)
    before = int(time.time())
    stun, alice = ice.for_user("alice")
    assert stun == {"urls": ["stun:stun.example.org"]}
    expiry, user = alice["username"].split(":")
    assert (user, alice["urls"]) == ("alice", ["turn:turn.example.org?transport=tcp"])
    assert before + 3600 <= int(expiry) <= int(time.time()) + 3600
    expected = hmac.new(SECRET.encode(), alice["username"].encode(), hashlib.sha1).digest()
    assert base64.b64decode(alice["credential"]) == expected
    bob = ice.for_user("bob", now=before)[1]
    assert bob["username"] == f"{before + 3600}:bob" and bob["credential"] != alice["credential"]


def test_static_credentials_are_the_same_for_everybody():
    ice = IceServers(urls=("turns:turn.example.org:443",), username="mcu-users", credential="hunter2")
    expected = [{"urls": ["turns:turn.example.org:443"], "username": "mcu-users", "credential": "hunter2"}]
    assert ice.for_user("alice") == ice.for_user("bob") == expected


def test_no_servers_means_an_empty_list():
    assert IceServers().for_user("alice") == []
    assert Config().ice_servers.for_user("alice") == []


def test_secrets_stay_out_of_repr_and_str():
    for ice in (
        IceServers(urls=("turn:127.0.0.1",), secret=SECRET),
        IceServers(urls=("turn:127.0.0.1",), username="u", credential=SECRET),
    ):
        assert SECRET not in repr(ice) and SECRET not in str(ice)
        assert SECRET not in repr(Config(ice_servers=ice))


@pytest.mark.parametrize(
    ("kwargs", "complaint"),
    [
        ({"urls": ("http://turn.example.org",)}, "invalid ICE server URL"),
        ({"urls": ("turn:",)}, "invalid ICE server URL"),
        ({"urls": ("stuns:stun.example.org",)}, "stuns: is not supported"),
        ({"urls": ("turn:t.example.org?transport=sctp",), "secret": "s"}, "transport 'sctp'"),
        ({"urls": ("turns:t.example.org?transport=udp",), "secret": "s"}, "transport 'udp'"),
        ({"urls": ("turn:t.example.org",)}, "needs a TURN username/credential or a TURN secret"),
        ({"urls": ("turn:t.example.org",), "username": "u"}, "both a username and a credential"),
        ({"urls": ("turn:t.example.org",), "username": "u", "credential": "c", "secret": "s"}, "not both"),
        ({"urls": ("stun:s.example.org",), "secret": "s"}, "no turn: or turns: URL"),
        ({"urls": ("turn:t.example.org",), "secret": "s", "ttl": 0}, "positive"),
    ],
)
def test_unusable_settings_are_refused(kwargs, complaint):
    with pytest.raises(ValueError, match=re.escape(complaint)):
        IceServers(**kwargs)


def test_cli_refuses_a_bad_url_with_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        mcu_main(["serve", "--ice-server", "turn:", "--turn-secret", SECRET])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid ICE server URL 'turn:'" in err and SECRET not in err


def test_cli_takes_the_secret_from_the_environment_when_not_given(monkeypatch, capsys):
    # The URL check runs after the secret is read: the error proves the variable was used.
    monkeypatch.setenv("MCU_TURN_SECRET", SECRET)
    with pytest.raises(SystemExit):
        mcu_main(["serve", "--ice-server", "stun:127.0.0.1"])
    err = capsys.readouterr().err
    assert "TURN credentials were given but no turn: or turns: URL" in err and SECRET not in err


# --- a real coturn ---------------------------------------------------------------------------


class Coturn:
    """A coturn `turnserver` on 127.0.0.1 with a shared secret (use-auth-secret)."""

    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.log = log
        self.url = f"turn:127.0.0.1:{port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _free_udp_and_tcp_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (coturn listens on both)."""
    for _ in range(20):
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(type=socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port for coturn")


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    binary = shutil.which("turnserver")
    if binary is None:
        pytest.skip("coturn's turnserver is not installed (scripts/test installs it as root: apt-get install coturn)")
    tmp = tmp_path_factory.mktemp("coturn")
    port = _free_udp_and_tcp_port()
    log = tmp / "turn.log"
    (tmp / "turnserver.conf").write_text(
        "\n".join(
            [
                "listening-ip=127.0.0.1",
                "relay-ip=127.0.0.1",
                f"listening-port={port}",
                f"realm={REALM}",
                "use-auth-secret",
                f"static-auth-secret={SECRET}",
                # Both ends are on 127.0.0.1, which coturn refuses as a peer by default.
                "allow-loopback-peers",
                "no-tls",
                "no-dtls",
                "no-cli",
                "verbose",
                "simple-log",
                f"log-file={log}",
                # Keep coturn's own files out of /var.
                f"pidfile={tmp / 'turnserver.pid'}",
                f"userdb={tmp / 'turndb'}",
                "",
            ]
        )
    )
    process = subprocess.Popen(
        [binary, "-c", str(tmp / "turnserver.conf")],
        stdout=(tmp / "stdout.txt").open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"turnserver did not start: {(tmp / 'stdout.txt').read_text()[-2000:]}")
                time.sleep(0.05)
        yield Coturn(port, log)
    finally:
        stop_process(process)


@pytest.fixture
def config(coturn: Coturn) -> Config:
    """The server hands out coturn, with per-client credentials from the shared secret."""
    return Config(
        width=640, height=360, fps=15, video_bitrate=600_000,
        ice_servers=IceServers(urls=(coturn.url,), secret=SECRET, ttl=TTL),
    )  # fmt: skip


async def _allocate(coturn: Coturn, credentials: dict) -> None:
    transport, _ = await turn.create_turn_endpoint(
        asyncio.DatagramProtocol,
        server_addr=("127.0.0.1", coturn.port),
        username=credentials["username"],
        password=credentials["credential"],
    )
    transport.close()


async def test_coturn_accepts_a_fresh_credential_and_refuses_an_expired_one(coturn):
    ice = IceServers(urls=(coturn.url,), secret=SECRET, ttl=TTL)
    await asyncio.wait_for(_allocate(coturn, ice.for_user("fresh")[0]), 5)
    with pytest.raises(TransactionFailed, match="401"):
        await asyncio.wait_for(_allocate(coturn, ice.for_user("late", now=time.time() - TTL - 60)[0]), 5)


async def test_relay_only_client_gets_the_composite_through_coturn(server, coturn):
    red = rgb_to_yuv(COLORS["red"])
    peer = Peer(
        server.url, "turn", "alice", video=ColorTrack(COLORS["red"]), audio=ToneTrack(440), ice_transport_policy="relay"
    )
    try:
        await peer.join()
        # `joined` carried this peer's own time-limited credential for coturn.
        (ice_server,) = next(e for e in peer.events if e["type"] == "joined")["iceServers"]
        expiry, user = ice_server["username"].split(":")
        assert user == peer.peer_id and abs(int(expiry) - (time.time() + TTL)) < 30
        await peer.wait_for(lambda: peer.video_frames > 0 and close_to(cell_colours(peer.video_frame, 1)[0], red), 15)

        # The media path really is a TURN relay: every candidate of the client is a
        # relay on coturn, and so is the local end of the pair ICE nominated.
        connection = peer.pc.getTransceivers()[0].sender.transport.transport._connection
        assert {c.type for c in connection.local_candidates} == {"relay"}
        pair = connection._nominated[1]
        assert pair.local_candidate.type == "relay"
        # The server uses coturn too, under its own identity.
        server_pc = server.conference.rooms["turn"].participants[peer.peer_id].pc
        server_candidates = server_pc.getTransceivers()[0].sender.transport.transport._connection.local_candidates
        assert "relay" in {c.type for c in server_candidates}
        # And coturn saw both allocations, authenticated with the issued usernames, and
        # the client bound a channel to send its media through the relay.
        log = coturn.log_text()
        assert re.search(rf"user <\d+:{peer.peer_id}>: incoming packet ALLOCATE processed, success", log), log[-3000:]
        assert re.search(r"user <\d+:mcu>: incoming packet ALLOCATE processed, success", log), log[-3000:]
        assert re.search(rf"user <\d+:{peer.peer_id}>: incoming packet CHANNEL_BIND processed, success", log)
    finally:
        await peer.close()


@pytest.mark.parametrize("config", [Config(width=320, height=240, fps=15)])  # no ICE servers, no coturn
async def test_relay_only_without_a_turn_server_is_a_clear_error(server):
    peer = Peer(server.url, "turn", "alice", ice_transport_policy="relay")
    try:
        with pytest.raises(PeerError, match="no TURN server"):
            await peer.join()
    finally:
        await peer.close()
