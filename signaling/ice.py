"""ICE configuration shared by the server and the Python client.

Two aiortc/aioice defaults are wrong for this project: an `RTCConfiguration`
without ICE servers falls back to a public STUN server, and aioice never offers
loopback addresses as host candidates, so peers on one machine would talk over
an external interface. Both are fixed here, in one place.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer

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


def rtc_configuration(ice_servers: list[dict[str, Any]]) -> RTCConfiguration:
    """An RTCConfiguration with exactly these servers (no hidden public STUN)."""
    return RTCConfiguration(
        iceServers=[
            RTCIceServer(
                urls=server["urls"],
                username=server.get("username"),
                credential=server.get("credential"),
            )
            for server in ice_servers
        ]
    )
