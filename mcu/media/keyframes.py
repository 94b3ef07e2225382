"""Which encoded video frames start a picture: where a decoder, or a receiver, can begin."""

from __future__ import annotations


def is_vp8_keyframe(data: bytes) -> bool:
    """A VP8 frame is a key frame when bit 0 of its first byte (the inverse key frame flag) is 0 (RFC 6386 9.1)."""
    return bool(data) and not data[0] & 0x01


def is_keyframe(codec_name: str, data: bytes) -> bool:
    """Whether an encoded frame as a receiver hands it over (VP8, or H.264 in Annex B) starts a picture."""
    if codec_name == "vp8":
        return is_vp8_keyframe(data)
    if codec_name == "h264":
        # An IDR slice (NAL type 5) after any start code.
        return any(unit and unit[0] & 0x1F == 5 for unit in data.split(b"\x00\x00\x01")[1:])
    return False
