"""A mesh through TURN: peer-to-peer connections use the iceServers of `joined` (a real coturn)."""

from __future__ import annotations

import re

import pytest
from test_mesh import mesh_peer, shows
from test_turn import SECRET, TTL, Coturn, coturn  # noqa: F401 (coturn: the fixture, used by name)

from mcu.config import Config
from signaling.ice import IceServers


@pytest.fixture
def config(coturn: Coturn) -> Config:  # noqa: F811
    """The server hands out coturn with per-client credentials; it needs none itself in a mesh."""
    return Config(width=640, height=360, fps=15, ice_servers=IceServers(urls=(coturn.url,), secret=SECRET, ttl=TTL))


async def test_relay_only_mesh_peers_reach_each_other_through_coturn(server, coturn):  # noqa: F811
    peers = [
        mesh_peer(server.url, "turn-mesh", colour, tone, ice_transport_policy="relay")
        for colour, tone in (("red", 440.0), ("green", 660.0))
    ]
    try:
        for peer in peers:
            await peer.join()
        red, green = peers
        await green.wait_for(lambda: shows(green, red.peer_id, "red"), 15)
        await red.wait_for(lambda: shows(red, green.peer_id, "green"), 15)
        for peer, other in ((red, green), (green, red)):
            # Only relay candidates, and the nominated pair goes through the relay.
            pc = peer.mesh.pcs[other.peer_id]
            connection = pc.getTransceivers()[0].sender.transport.transport._connection
            assert {c.type for c in connection.local_candidates} == {"relay"}
            assert connection._nominated[1].local_candidate.type == "relay"
            # Each allocated on coturn with the credential issued to it in `joined`.
            log = coturn.log_text()
            assert re.search(rf"user <\d+:{peer.peer_id}>: incoming packet ALLOCATE processed, success", log)
        assert server.conference.media_bytes() == (0, 0)
    finally:
        for peer in peers:
            await peer.close()
