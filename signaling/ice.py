"""ICE configuration shared by the server and the Python client.

Two aiortc/aioice defaults are wrong for this project: an `RTCConfiguration`
without ICE servers falls back to a public STUN server, and aioice never offers
loopback addresses as host candidates, so peers on one machine would talk over
an external interface. Both are fixed here, in one place.

`IceServers` holds the STUN/TURN servers the MCU hands to each client in
`joined` (and uses itself), with TURN credentials that are either static or,
from a secret shared with coturn (`use-auth-secret`), issued per client and
time-limited, so a credential read off one page expires on its own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer, RTCIceTransportPolicy
from aiortc.rtcicetransport import parse_stun_turn_uri

_original_host_addresses = aioice.ice.get_host_addresses
_host_addresses: list[str] | None = None


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    if _host_addresses is None:
        return _original_host_addresses(use_ipv4, use_ipv6)
    return list(_host_addresses)


def use_host_addresses(addresses: Iterable[str] | None) -> None:
    """Offer exactly these addresses as ICE host candidates (None: all interfaces).

    aioice reads host addresses through a module function, so this is process
    wide: a process is either a loopback-only server/client or it is not.
    """
    global _host_addresses
    _host_addresses = None if addresses is None else [str(ipaddress.ip_address(a)) for a in addresses]
    aioice.ice.get_host_addresses = _get_host_addresses


def is_loopback_host(host: str) -> bool:
    """True for 'localhost' and loopback IP literals."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def rtc_configuration(ice_servers: list[dict[str, Any]], transport_policy: str = "all") -> RTCConfiguration:
    """An RTCConfiguration with exactly these servers (no hidden public STUN).

    `transport_policy` "relay" keeps only TURN relay candidates, as a browser's
    `iceTransportPolicy` does: the way to prove or force a path through TURN.
    """
    return RTCConfiguration(
        iceServers=[
            RTCIceServer(
                urls=server["urls"],
                username=server.get("username"),
                credential=server.get("credential"),
            )
            for server in ice_servers
        ],
        iceTransportPolicy=RTCIceTransportPolicy(transport_policy),
    )


def check_ice_url(url: str) -> None:
    """Raise ValueError unless aiortc (and so this server) can use this STUN/TURN URL.

    aiortc silently skips what it cannot use (stuns:, turn over TLS without TCP...);
    refusing those at start beats a server that quietly gathers no relay.
    """
    try:
        parsed = parse_stun_turn_uri(url)
    except ValueError as exc:
        raise ValueError(f"invalid ICE server URL {url!r}: {exc}") from None
    scheme, transport = parsed["scheme"], parsed.get("transport")
    if scheme == "stuns":
        raise ValueError(f"invalid ICE server URL {url!r}: stuns: is not supported, use stun: or turns:")
    if (scheme, transport) not in (("stun", None), ("turn", "udp"), ("turn", "tcp"), ("turns", "tcp")):
        raise ValueError(f"invalid ICE server URL {url!r}: transport {transport!r} is not supported for {scheme}:")


def is_turn_url(url: str) -> bool:
    """True for turn: and turns: URLs, the ones that need credentials and give relays."""
    return url.startswith(("turn:", "turns:"))


@dataclass(frozen=True)
class IceServers:
    """The STUN/TURN servers given to every client, with per-client TURN credentials.

    TURN credentials are static (`username`/`credential`), or issued from `secret`
    as coturn's `use-auth-secret` (the TURN REST API) expects: the username is
    "<expiry unix time>:<user>" and the credential is
    base64(HMAC-SHA1(secret, username)), valid for `ttl` seconds. aiortc itself
    uses only the first STUN and the first TURN URL; browsers try them all.
    """

    urls: tuple[str, ...] = ()
    username: str | None = None
    credential: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)
    ttl: int = 86400

    def __post_init__(self) -> None:
        for url in self.urls:
            check_ice_url(url)
        static = self.username is not None or self.credential is not None
        if static and (self.username is None or self.credential is None):
            raise ValueError("a static TURN credential needs both a username and a credential")
        if static and self.secret is not None:
            raise ValueError("give either a static TURN username/credential or a TURN secret, not both")
        if self.ttl <= 0:
            raise ValueError("the TURN credential lifetime must be a positive number of seconds")
        has_turn = any(is_turn_url(url) for url in self.urls)
        if has_turn and not static and self.secret is None:
            raise ValueError("a turn: or turns: URL needs a TURN username/credential or a TURN secret")
        if not has_turn and (static or self.secret is not None):
            raise ValueError("TURN credentials were given but no turn: or turns: URL")

    def for_user(self, user: str, now: float | None = None) -> list[dict[str, Any]]:
        """The `iceServers` list (RTCIceServer dicts) for one client or the server itself."""
        stun = [url for url in self.urls if not is_turn_url(url)]
        turn = [url for url in self.urls if is_turn_url(url)]
        servers: list[dict[str, Any]] = [{"urls": stun}] if stun else []
        if turn:
            username, credential = self._credential(user, time.time() if now is None else now)
            servers.append({"urls": turn, "username": username, "credential": credential})
        return servers

    def _credential(self, user: str, now: float) -> tuple[str, str]:
        if self.secret is None:
            assert self.username is not None and self.credential is not None
            return self.username, self.credential
        username = f"{int(now) + self.ttl}:{user}"
        digest = hmac.new(self.secret.encode(), username.encode(), hashlib.sha1).digest()
        return username, base64.b64encode(digest).decode("ascii")
