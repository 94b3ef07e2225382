"""WHEP viewers (mcu/server/whep.py): plain HTTP players of a room's composite and whole mix."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from aiortc import RTCPeerConnection
from conftest import free_port, start_mcu, stop_process, within
from http_checks import post, request
from media_checks import cell_colours, contains_colour, tone_levels

from client.counters import Received
from client.peer import Peer
from client.sources import COLORS, ColorTrack, ToneTrack, rgb_to_yuv
from client.whep import SDP, WhepError, WhepViewer
from mcu.config import Config
from mcu.server.sdp_resources import TRICKLE, ice_server_links
from signaling import tokens
from signaling.grants import ALL_GRANTS
from signaling.ice import IceServers
from signaling.limits import Limits

PEOPLE = [("alice", "red", 440.0), ("bob", "green", 660.0)]
SECRET = "a-server-secret-long-enough-for-hs256!!"


def endpoint(server, room: str = "room1", query: str = "") -> str:
    return f"http://127.0.0.1:{server.port}/whep/{room}{query}"


def make_peer(server, name: str, colour: str, frequency: float, token: str | None = None) -> Peer:
    return Peer(server.url, "room1", name, video=ColorTrack(COLORS[colour]), audio=ToneTrack(frequency), token=token)


async def close_all(things) -> None:
    await asyncio.gather(*(thing.close() for thing in things), return_exceptions=True)


async def receive_only_offer() -> str:
    """What a WHEP player offers: receive audio and video, every candidate in it."""
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def metric(server, name: str) -> float:
    _, text = await request("GET", f"http://127.0.0.1:{server.port}/metrics")
    line = next(line for line in text.splitlines() if line.startswith(name + " ") or line.startswith(name + "{"))
    return float(line.rsplit(" ", 1)[1])


async def test_a_viewer_sees_the_room_hears_everyone_and_leaves_on_delete(server):
    peers = [make_peer(server, *person) for person in PEOPLE]
    viewer = WhepViewer(endpoint(server))
    try:
        for peer in peers:
            await peer.join()
        await peers[0].wait_for(lambda: all(p.video_frames > 5 for p in peers), 10)
        room = server.conference.rooms["room1"]
        encoders = set(room.video.encoders)
        await viewer.start()
        assert viewer.resource is not None and viewer.resource.startswith(endpoint(server) + "/")
        colours = [rgb_to_yuv(COLORS[colour]) for _, colour, _ in PEOPLE]
        await within(10, lambda: viewer.video_frame is not None and all(
            contains_colour(cell_colours(viewer.video_frame, 2), c) for c in colours
        ))  # fmt: skip
        # The same shared encoder feeds it: no encode of its own.
        assert set(room.video.encoders) == encoders
        # Not a participant: no tile (still two), in no list; counted as a viewer.
        assert len(room.participants) == 2 and len(room.viewers) == 1
        assert all(len(p.participants) == 1 for p in peers)
        assert room.stats()["viewers"] == 1 and room.stats()["peers"] == 2
        assert await metric(server, "mcu_viewers") == 1 and await metric(server, "mcu_peers") == 2
        # It hears everyone (the whole mix), each well above silence.
        await asyncio.sleep(2.5)
        levels = tone_levels(viewer.audio(1.0), [f for _, _, f in PEOPLE])
        assert min(levels.values()) > 100, levels

        assert await viewer.delete() == 200
        await within(3, lambda: not room.viewers)
        assert await metric(server, "mcu_viewers") == 0
        assert await viewer.delete() == 404  # DELETE twice
        # The participants go on.
        before = [p.video_frames for p in peers]
        await peers[0].wait_for(lambda: all(p.video_frames > b + 10 for p, b in zip(peers, before)), 5)
    finally:
        await close_all([viewer, *peers])


async def test_a_viewer_ends_with_its_room(server):
    peer = make_peer(server, *PEOPLE[0])
    viewer = WhepViewer(endpoint(server, query="?tier=low"))
    try:
        await peer.join()
        await viewer.start()
        room = server.conference.rooms["room1"]
        assert [v.ceiling for v in room.viewers.values()] == ["low"]
        await within(10, lambda: viewer.video_frames > 0)
        await peer.close()
        await within(3, lambda: "room1" not in server.conference.rooms)
        assert not room.viewers
        status, _ = await request("DELETE", viewer.resource)
        assert status == 404  # its resource went with it
    finally:
        await close_all([viewer, peer])


async def test_a_player_may_ask_for_the_mix_or_the_composite_alone(server):
    peer = make_peer(server, *PEOPLE[0])
    listener = WhepViewer(endpoint(server), kinds=("audio",))
    watcher = WhepViewer(endpoint(server), kinds=("video",))
    try:
        await peer.join()
        await listener.start()
        await watcher.start()
        await within(10, lambda: watcher.video_frames > 5 and listener.audio_frames > 100)
        assert min(tone_levels(listener.audio(1.0), [PEOPLE[0][2]]).values()) > 100
        assert listener.video_frames == 0 and watcher.audio_frames == 0
    finally:
        await close_all([listener, watcher, peer])


async def test_a_counting_viewer_receives_without_decoding(server):
    # What the broadcast benchmark's load viewers do: count the composite's frames and the mix's packets.
    peer = make_peer(server, *PEOPLE[0])
    viewer = WhepViewer(endpoint(server), decode=False)
    try:
        await peer.join()
        await viewer.start()
        await within(10, lambda: viewer.video_frames > 10 and viewer.audio_frames > 50)
        assert viewer.video_frame is None and not viewer.audio(1.0).size  # nothing decoded
        assert viewer.video_bytes > 0 and viewer.audio_bytes > 0
        first = Received.of(viewer)
        await asyncio.sleep(1.0)
        last = Received.of(viewer)
        assert last.fps(first) > 10 and last.audio_rate(first) > 25 and last.payload_kbps(first) > 0
    finally:
        await close_all([viewer, peer])


async def test_bad_input_is_refused_and_disturbs_nobody(server):
    peer = make_peer(server, *PEOPLE[0])
    try:
        await peer.join()
        await peer.wait_for(lambda: peer.video_frames > 5, 10)
        offer = await receive_only_offer()
        room = server.conference.rooms["room1"]

        status, body, _ = await post(endpoint(server, "nowhere"), offer)
        assert status == 404 and "room_not_found" in body
        status, body, _ = await post(endpoint(server), offer, content_type="text/plain")
        assert status == 415
        status, body, _ = await post(endpoint(server), "this is not SDP")
        assert status == 400 and "invalid_sdp" in body
        status, body, _ = await post(endpoint(server), "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=")
        assert status == 400 and "invalid_sdp" in body
        no_media = offer.split("\r\nm=")[0] + "\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n"
        status, body, _ = await post(endpoint(server), no_media)
        assert status == 400 and "audio or a video media section" in body
        status, body, _ = await post(endpoint(server), offer.replace("a=recvonly", "a=sendonly"))
        assert status == 400 and "receives" in body
        status, body, _ = await post(endpoint(server), offer + "a=x:" + "y" * 40_000 + "\r\n")
        assert status == 413 and "sdp_too_large" in body
        status, body, _ = await post(endpoint(server, query="?tier=huge"), offer)
        assert status == 400 and "unknown_tier" in body
        for method in ("DELETE", "PATCH"):
            status, _ = await request(method, endpoint(server) + "/no-such-session")
            assert status == 404

        assert not room.viewers and list(room.participants) == [peer.peer_id]
        before = peer.video_frames
        await peer.wait_for(lambda: peer.video_frames > before + 10, 5)
    finally:
        await peer.close()


async def test_cors_lets_a_page_of_another_origin_use_it(server):
    peer = make_peer(server, *PEOPLE[0])
    try:
        async with aiohttp.ClientSession() as session:
            preflight = {"Origin": "https://player.example", "Access-Control-Request-Method": "POST"}
            async with session.options(endpoint(server), headers=preflight) as response:
                assert response.status == 204
                assert response.headers["Access-Control-Allow-Origin"] == "*"
                assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
                assert "Location" in response.headers["Access-Control-Expose-Headers"]
                assert response.headers["Accept-Post"] == SDP
        await peer.join()
        status, _, headers = await post(endpoint(server), await receive_only_offer())
        assert status == 201
        assert headers["Access-Control-Allow-Origin"] == "*" and headers["Content-Type"] == SDP
        assert headers["Location"].startswith("/whep/room1/") and headers["ETag"].startswith('"')
        status, _, headers = await post(endpoint(server, "nowhere"), "x")
        assert status == 404 and headers["Access-Control-Allow-Origin"] == "*"  # errors too
    finally:
        await peer.close()


async def test_trickled_candidates_are_added_and_an_ice_restart_is_refused(server):
    peer = make_peer(server, *PEOPLE[0])
    try:
        await peer.join()
        # A player that trickles: its offer has not ended its candidates yet.
        offer = (await receive_only_offer()).replace("a=end-of-candidates\r\n", "")
        status, _, headers = await post(endpoint(server), offer)
        assert status == 201
        resource, etag = f"http://127.0.0.1:{server.port}{headers['Location']}", headers["ETag"]
        (viewer,) = server.conference.rooms["room1"].viewers.values()
        transport = viewer.pc.getTransceivers()[0].receiver.transport.transport
        known = len(transport.getRemoteCandidates())
        fragment = "a=mid:0\r\na=candidate:1 1 udp 2122260223 127.0.0.1 40400 typ host\r\n"
        trickle = {"Content-Type": TRICKLE, "If-Match": etag}

        status, _ = await request("PATCH", resource, data=fragment, headers=trickle)
        assert status == 204
        assert len(transport.getRemoteCandidates()) == known + 1
        status, _ = await request("PATCH", resource, data=fragment, headers={**trickle, "If-Match": '"old"'})
        assert status == 412
        status, _ = await request("PATCH", resource, data=fragment, headers={**trickle, "If-Match": "*"})
        assert status == 422
        restart = "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n" + fragment
        status, _ = await request("PATCH", resource, data=restart, headers=trickle)
        assert status == 422
        status, _ = await request("PATCH", resource, data=fragment, headers={"Content-Type": SDP})
        assert status == 415
        status, _ = await request("PATCH", resource, data="a=mid:0\r\na=candidate:garbage\r\n", headers=trickle)
        assert status == 400
        status, _ = await request("PATCH", resource, data=fragment * 400, headers=trickle)
        assert status == 413
    finally:
        await peer.close()


def test_ice_servers_become_link_headers():
    ice = IceServers(urls=("stun:127.0.0.1:3478", "turn:127.0.0.1:3478?transport=udp"), secret="turn-secret")
    links = ice_server_links(ice.for_user("viewer1", now=1000))
    assert links[0] == '<stun:127.0.0.1:3478>; rel="ice-server"'
    turn = ice.for_user("viewer1", now=1000)[1]
    assert links[1] == (
        f'<turn:127.0.0.1:3478?transport=udp>; rel="ice-server"; username="{turn["username"]}"; '
        f'credential="{turn["credential"]}"; credential-type="password"'
    )
    assert turn["username"].endswith(":viewer1")  # a TURN credential of the viewer's own


class TestRoomLimits:
    @pytest.fixture
    def config(self) -> Config:
        return Config(width=640, height=360, fps=15, video_bitrate=600_000, limits=Limits(max_viewers_per_room=1))

    async def test_viewers_have_a_cap_of_their_own_and_only_mcu_rooms_have_them(self, server):
        peer = make_peer(server, *PEOPLE[0])
        forwarded = Peer(server.url, "forwarded", "carol", video=ColorTrack(COLORS["blue"]), mode="sfu")
        first = WhepViewer(endpoint(server))
        try:
            await peer.join()
            await forwarded.join()
            await first.start()
            status, body, _ = await post(endpoint(server), await receive_only_offer())
            assert status == 503 and "room_full" in body and "1 viewers" in body
            # The participants' cap is apart: a second participant still joins.
            second = make_peer(server, *PEOPLE[1])
            await second.join()
            await second.close()
            status, body, _ = await post(endpoint(server, "forwarded"), await receive_only_offer())
            assert status == 409 and "wrong_mode" in body
        finally:
            await close_all([first, peer, forwarded])


class TestTokens:
    @pytest.fixture
    def config(self) -> Config:
        return Config(width=640, height=360, fps=15, video_bitrate=600_000, secret=SECRET)

    async def test_a_viewer_needs_a_token_that_grants_subscribe(self, server):
        peer = make_peer(server, *PEOPLE[0], token=tokens.issue(SECRET, "room1", "alice", 60, ALL_GRANTS))
        try:
            await peer.join()
            offer = await receive_only_offer()
            refusals = [
                (None, 401),
                ("forged", 401),
                (tokens.issue(SECRET, "elsewhere", "v", 60, ["subscribe"]), 401),
                (tokens.issue(SECRET, "room1", "v", 60, ["publish", "chat"]), 403),
            ]
            for token, expected in refusals:
                status, _, headers = await post(endpoint(server), offer, token=token)
                assert status == expected, token
            # Even whether a room exists is said only to a token for it.
            status, _, _ = await post(endpoint(server, "nowhere"), offer)
            assert status == 401
            viewer = WhepViewer(endpoint(server), token=tokens.issue(SECRET, "room1", "v", 60, ["subscribe"]))
            try:
                await viewer.start()
                await within(10, lambda: viewer.video_frames > 0)
            finally:
                await viewer.close()
            assert not server.conference.rooms["room1"].viewers
            with pytest.raises(WhepError) as refused:
                await WhepViewer(endpoint(server)).start()  # cleans up after itself
            assert refused.value.status == 401
        finally:
            await peer.close()


CHROMIUM = Path("/usr/bin/chromium")
#: tests/browser_checks.py's flags, less the fake camera and microphone: a viewer sends nothing. A page
#: without camera permission hides its host addresses behind mDNS names, and in the loopback-only test
#: namespace Chromium then offers no candidate the server can reach: the last flag lets it show 127.0.0.1.
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (scripts/test installs it)")
async def test_chromium_plays_the_watch_page(server):
    from browser_checks import centre_rgb, chromium_playwright, isolated_network, video_frames_over

    if not isolated_network():
        pytest.skip("browser tests run only in a network namespace with loopback alone: run them through scripts/test")
    playwright_api = chromium_playwright()
    peer = make_peer(server, *PEOPLE[0])
    try:
        await peer.join()
        async with playwright_api.async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
            try:
                page = await browser.new_page()
                await page.goto(f"http://127.0.0.1:{server.port}/watch/room1", wait_until="domcontentloaded")
                await within(15, lambda: len(server.conference.rooms["room1"].viewers) == 1)
                assert await video_frames_over(page, 10, 20) > 10
                sample = await centre_rgb(page)
                assert all(abs(a - e) < 60 for a, e in zip(sample, COLORS["red"])), sample
                assert "watching" in (await page.text_content("#status") or "").lower()
                await page.close()  # the page's unload ends its session
                await within(10, lambda: not server.conference.rooms["room1"].viewers)
            finally:
                await browser.close()
    finally:
        await peer.close()


async def test_a_viewer_through_the_front_of_workers():
    """`mcu serve --workers`: the front passes WHEP on to the worker of the room, headers and all."""
    port = free_port()
    process = start_mcu(port, "--workers", "1", "--size", "640x360", "--fps", "15")
    peer = Peer(f"ws://127.0.0.1:{port}/ws", "room1", "alice", video=ColorTrack(COLORS["red"]), audio=ToneTrack(440))
    viewer = WhepViewer(f"http://127.0.0.1:{port}/whep/room1")
    try:
        await peer.join()
        await viewer.start()
        assert viewer.resource is not None and viewer.etag is not None
        await within(10, lambda: viewer.video_frame is not None and contains_colour(
            cell_colours(viewer.video_frame, 1), rgb_to_yuv(COLORS["red"])
        ))  # fmt: skip
        status, _, headers = await post(f"http://127.0.0.1:{port}/whep/nowhere", "x")
        assert status == 404 and headers["Access-Control-Allow-Origin"] == "*"
        assert await viewer.delete() == 200
        assert await viewer.delete() == 404
    finally:
        await close_all([viewer, peer])
        stop_process(process, grace=10)
