"""Join tokens: JSON Web Tokens (HS256, PyJWT) that say who may enter which room and do what.

A token carries the room (``"*"``: any room, for operators' HTTP API calls),
the identity of its holder (``sub``), an expiry, the grants of
signaling/grants.py, and an id of its own (``jti``: a participant removed by a
moderator is banned by it, so a fresh token for the same identity still joins).
The server holds the secret; whoever issues tokens (``mcu token``, or the
operator's own service with any JWT library) shares it.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Iterable

import jwt

from .grants import ALL_GRANTS

ALGORITHM = "HS256"
#: A room claim that admits to every room (operator tokens for the HTTP API).
ANY_ROOM = "*"
#: Longer than any token this server issues, far shorter than a message.
MAX_TOKEN_LENGTH = 4096
#: Clock skew tolerated between the issuer and this server.
LEEWAY_SECONDS = 10


class TokenError(Exception):
    """The token is missing, malformed, forged, expired or for another room; the text says which."""


@dataclass(frozen=True)
class Claims:
    room: str
    identity: str
    grants: frozenset[str]
    #: The token's own id (``jti``); None for a token issued without one (by another issuer).
    token_id: str | None = None


def issue(secret: str, room: str, identity: str, ttl: float, grants: Iterable[str], now: float | None = None) -> str:
    """A signed token for `identity` in `room`, valid `ttl` seconds from `now`."""
    grants = sorted(set(grants))
    unknown = set(grants) - ALL_GRANTS
    if unknown:
        raise ValueError(f"unknown grant(s): {', '.join(sorted(unknown))}")
    if not secret:
        raise ValueError("the secret must not be empty")
    issued = int(time.time() if now is None else now)
    claims = {
        "room": room,
        "sub": identity,
        "iat": issued,
        "exp": issued + int(ttl),
        "grants": grants,
        "jti": secrets.token_hex(8),
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify(secret: str, token: str, room: str | None) -> Claims:
    """The token's claims if it is genuine, current and admits to `room` (None: any room claim).

    :raises TokenError: saying what is wrong, in words fit for the client.
    """
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenError("The token is too long.")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            leeway=LEEWAY_SECONDS,
            options={"require": ["exp", "sub", "room"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("The token has expired.") from None
    except jwt.InvalidSignatureError:
        raise TokenError("The token's signature is not valid.") from None
    except jwt.PyJWTError:
        raise TokenError("The token is not a valid join token.") from None
    token_room, identity, grants = claims["room"], claims["sub"], claims.get("grants", [])
    if not isinstance(token_room, str) or not isinstance(identity, str) or not isinstance(grants, list):
        raise TokenError("The token is not a valid join token.")
    if room is not None and token_room not in (room, ANY_ROOM):
        raise TokenError("The token is for another room.")
    token_id = claims.get("jti")
    return Claims(
        room=token_room,
        identity=identity,
        grants=frozenset(g for g in grants if g in ALL_GRANTS),
        token_id=token_id if isinstance(token_id, str) and token_id else None,
    )
