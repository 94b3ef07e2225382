"""The DTLS role of an answer: the server's side of the handshake, for encoders that need it.

aiortc answers an offer that lets it choose (`a=setup:actpass`) as the DTLS client, and as a
client it offers only ECDSA cipher suites. GStreamer's webrtcbin (simple-whip-client, whipsink)
then is the DTLS server with its RSA certificate, and the handshake fails: "no shared cipher".
As the DTLS server, aiortc takes the suites of any client. The role is the DTLS transport's
private `_role` (tests/test_aiortc_internals.py).
"""

from __future__ import annotations

from aiortc import RTCPeerConnection


def answer_as_dtls_server(pc: RTCPeerConnection) -> None:
    """Make `pc`'s next answer say `a=setup:passive` wherever the offer let it choose.

    Call it between `setRemoteDescription(offer)` and `createAnswer()`; an offer that chose a
    role (`active`, `passive`) keeps it.
    """
    for transceiver in pc.getTransceivers():
        transport = transceiver.receiver.transport
        if transport._role == "auto":
            transport._set_role("server")
