"""A server offer that keeps the peer's numbering of codecs and RTP header extensions.

aiortc's `createOffer()` numbers payload types and header extensions its own way (Opus 96,
VP8 97, mid = 1...), even on a connection whose first offer came from the peer with
other numbers. Chromium refuses a renegotiation offer that renumbers an extension of a
live section ("RTP extension ID reassignment not supported"), and in one bundle a
payload type must keep meaning one codec. So an sfu room's offers take the numbers the
peer chose, for old and new sections alike. aiortc then learns them back from the
peer's answer, as it does for every answer.

Until that answer, aiortc must keep using the numbers already negotiated:
`createOffer()` also resets every transceiver's codecs and extensions to its own
numbering, and a receiver that starts meanwhile (the first offer's DTLS may finish
after the server's offer went out) would take those and drop every packet the peer
sends (`renegotiation_offer`).
"""

from __future__ import annotations

from aiortc import RTCPeerConnection
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.sdp import SessionDescription

CodecKey = tuple[str, int, int | None]


def _key(codec: RTCRtpCodecParameters) -> CodecKey:
    return codec.mimeType.lower(), codec.clockRate, codec.channels


def _number(codec: RTCRtpCodecParameters) -> int:
    """Its payload type: aiortc types it optional, yet every codec parsed from SDP has one."""
    assert codec.payloadType is not None
    return codec.payloadType


def _apt(codec: RTCRtpCodecParameters) -> int:
    """The payload type an RTX codec repairs (its `apt` parameter)."""
    apt = codec.parameters["apt"]
    assert apt is not None
    return int(apt)


def keep_numbering(offer_sdp: str, peer_sdp: str) -> str:
    """`offer_sdp` with the payload types and extension ids that `peer_sdp` (the peer's last description) uses."""
    peer = SessionDescription.parse(peer_sdp)
    payload_types: dict[CodecKey, int] = {}
    rtx_for: dict[int, int] = {}  # the peer's primary payload type -> its RTX payload type
    extension_ids: dict[str, int] = {}
    for media in peer.media:
        for codec in media.rtp.codecs:
            if codec.mimeType.lower().endswith("/rtx") and "apt" in codec.parameters:
                rtx_for.setdefault(_apt(codec), _number(codec))
            else:
                payload_types.setdefault(_key(codec), _number(codec))
        for extension in media.rtp.headerExtensions:
            extension_ids.setdefault(extension.uri, extension.id)

    offer = SessionDescription.parse(offer_sdp)
    for media in (m for m in offer.media if m.kind in ("audio", "video")):
        renumbered: dict[int, int] = {}
        for codec in media.rtp.codecs:
            if not codec.mimeType.lower().endswith("/rtx"):
                renumbered[_number(codec)] = payload_types.get(_key(codec), _number(codec))
        for codec in media.rtp.codecs:
            if codec.mimeType.lower().endswith("/rtx") and "apt" in codec.parameters:
                primary = renumbered.get(_apt(codec), _apt(codec))
                codec.parameters["apt"] = primary
                codec.payloadType = rtx_for.get(primary, codec.payloadType)
            else:
                codec.payloadType = renumbered[_number(codec)]
        media.fmt = [codec.payloadType for codec in media.rtp.codecs]
        for extension in media.rtp.headerExtensions:
            extension.id = extension_ids.get(extension.uri, extension.id)
    return str(offer)


async def renegotiation_offer(pc: RTCPeerConnection) -> str:
    """Set a new local offer on `pc` and return its SDP in the peer's numbering.

    The sections negotiated before keep their codecs and header extensions (aiortc
    internals `_codecs` and `_headerExtensions`, covered by tests/test_numbering.py):
    they are what the peer sends with until it answers.
    """
    negotiated = {t: (t._codecs, t._headerExtensions) for t in pc.getTransceivers() if t.mid is not None}
    offer = await pc.createOffer()
    for transceiver, (codecs, extensions) in negotiated.items():
        transceiver._codecs, transceiver._headerExtensions = codecs, extensions
    await pc.setLocalDescription(offer)
    return keep_numbering(pc.localDescription.sdp, pc.remoteDescription.sdp)
