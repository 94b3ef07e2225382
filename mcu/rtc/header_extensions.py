"""RTP header extensions that cannot be read are skipped instead of ending the transport.

aiortc parses each packet's header extensions in its DTLS transport's receive loop;
a value of the wrong length (`struct.error`) or bad text (`UnicodeDecodeError`)
escapes that loop and ends the transport: every track of the peer connection stops.
One malformed packet from a peer, or a packet whose extension id the bundle maps
to another extension, must cost that packet's extensions only. Both the server and
the Python client install this (aiortc internal, tests/test_aiortc_internals.py).
"""

from __future__ import annotations

import logging
import struct

from aiortc.rtp import HeaderExtensions, HeaderExtensionsMap

logger = logging.getLogger(__name__)

_parse = HeaderExtensionsMap.get


def _tolerant_get(self: HeaderExtensionsMap, extension_profile: int, extension_value: bytes) -> HeaderExtensions:
    try:
        return _parse(self, extension_profile, extension_value)
    except (struct.error, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        logger.debug("RTP header extensions skipped: %s", exc)
        return HeaderExtensions()


def install_tolerant_extensions() -> None:
    """Make every peer connection of this process skip unreadable header extensions."""
    HeaderExtensionsMap.get = _tolerant_get  # type: ignore[method-assign]
