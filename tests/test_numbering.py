"""The server's renegotiation offers keep the numbering a browser chose (mcu/rtc/numbering.py)."""

from __future__ import annotations

import asyncio

from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import SessionDescription

from client.sources import COLORS, ColorTrack, ToneTrack
from mcu.rooms.sfu import forwarded_codecs
from mcu.rtc.numbering import keep_numbering, renegotiation_offer

# Chromium's numbers, unlike aiortc's (Opus 96, VP8 97, RTX 98; mid 1, audio level 2, abs-send-time 3).
CHROME_PT = {"opus": 111, "VP8": 96, "rtx": 97}
CHROME_CODECS = {("audio", "opus", 111, None), ("video", "VP8", 96, None), ("video", "rtx", 97, 96)}
CHROME_EXT = {
    "urn:ietf:params:rtp-hdrext:ssrc-audio-level": 1,
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time": 2,
    "urn:ietf:params:rtp-hdrext:sdes:mid": 4,
}


def numbered_like_chrome(sdp: str) -> str:
    description = SessionDescription.parse(sdp)
    for media in description.media:
        for codec in media.rtp.codecs:
            codec.payloadType = CHROME_PT[codec.name]
            if codec.name == "rtx":
                codec.parameters["apt"] = CHROME_PT["VP8"]
        media.fmt = [c.payloadType for c in media.rtp.codecs] if media.kind != "application" else media.fmt
        for extension in media.rtp.headerExtensions:
            extension.id = CHROME_EXT[extension.uri]
    return str(description)


def numbers(sdp: str) -> tuple[set, set]:
    """Every (kind, codec, payload type, apt) and (extension uri, id) of an SDP's media sections."""
    media = [m for m in SessionDescription.parse(sdp).media if m.kind != "application"]
    codecs = {(m.kind, c.name, c.payloadType, c.parameters.get("apt")) for m in media for c in m.rtp.codecs}
    return codecs, {(e.uri, e.id) for m in media for e in m.rtp.headerExtensions}


async def test_a_renegotiation_offer_takes_the_browsers_payload_types_and_extension_ids():
    browser, server = RTCPeerConnection(), RTCPeerConnection()
    try:
        browser.createDataChannel("chat")
        for kind in ("audio", "video"):
            browser.addTransceiver(kind).setCodecPreferences(forwarded_codecs(kind))
            server.addTransceiver(kind, direction="recvonly").setCodecPreferences(forwarded_codecs(kind))
        await browser.setLocalDescription(await browser.createOffer())
        offer = numbered_like_chrome(browser.localDescription.sdp)
        await server.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await server.setLocalDescription(await server.createAnswer())
        # A publisher joins: the server offers two new sections.
        for kind in ("audio", "video"):
            server.addTransceiver(kind, direction="sendonly").setCodecPreferences(forwarded_codecs(kind))
        await server.setLocalDescription(await server.createOffer())
        raw = server.localDescription.sdp

        chrome = (CHROME_CODECS, set(CHROME_EXT.items()))
        assert numbers(raw) != chrome  # aiortc renumbers: what Chromium refuses
        kept = keep_numbering(raw, server.remoteDescription.sdp)
        assert numbers(kept) == chrome
        before, after = SessionDescription.parse(raw), SessionDescription.parse(kept)
        kinds = ["audio", "video", "application", "audio", "video"]
        assert [m.kind for m in after.media] == [m.kind for m in before.media] == kinds
        for old, new in zip(before.media, after.media):
            assert new.fmt == ([c.payloadType for c in new.rtp.codecs] if new.kind != "application" else old.fmt)
            same = ("direction", "ice_candidates", "ssrc", "sctp_port")
            assert [getattr(new, a) for a in same] == [getattr(old, a) for a in same]
            assert new.rtp.muxId == old.rtp.muxId
    finally:
        await browser.close()
        await server.close()


async def test_sections_that_start_while_a_server_offer_is_out_receive_in_the_numbering_negotiated():
    """The flake of the browser's sfu test: the first offer's DTLS finished after the server's offer went out."""
    browser, server = RTCPeerConnection(), RTCPeerConnection()
    tracks: dict[str, MediaStreamTrack] = {}
    server.on("track", lambda track: tracks.setdefault(track.kind, track))
    try:
        browser.addTransceiver(ToneTrack(500.0), direction="sendonly").setCodecPreferences(forwarded_codecs("audio"))
        browser.addTransceiver(ColorTrack(COLORS["red"]), direction="sendonly").setCodecPreferences(
            forwarded_codecs("video")
        )
        for kind in ("audio", "video"):
            server.addTransceiver(kind, direction="recvonly").setCodecPreferences(forwarded_codecs(kind))
        await browser.setLocalDescription(await browser.createOffer())
        offer = numbered_like_chrome(browser.localDescription.sdp)
        await server.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await server.setLocalDescription(await server.createAnswer())
        answer = server.localDescription
        # A publisher joins at once: the server offers before its receivers have started.
        for kind in ("audio", "video"):
            server.addTransceiver(kind, direction="sendonly").setCodecPreferences(forwarded_codecs(kind))
        renegotiation = await renegotiation_offer(server)
        assert numbers(renegotiation)[0] == CHROME_CODECS
        # The browser sends in its numbering from the server's answer on, as Chromium does.
        await browser.setRemoteDescription(answer)
        frames = await asyncio.wait_for(asyncio.gather(tracks["audio"].recv(), tracks["video"].recv()), 10)
        assert server.signalingState == "have-local-offer"  # the renegotiation is still unanswered
        assert frames[0].sample_rate == 48000 and frames[1].width > 0
    finally:
        await browser.close()
        await server.close()
