"""Signed, tamper-evident tokens: a base64url JSON payload and its HMAC-SHA256, as `payload.mac`."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from typing import Any

__all__ = ["BadSignature", "sign", "unsign"]

MAX_TOKEN_LENGTH = 1024  # anything longer was not made by us; refuse before decoding


class BadSignature(ValueError):
    """The token was not made with this key: tampered, truncated, or signed by another key."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(key: bytes, payload: dict[str, Any], context: bytes = b"") -> str:
    """`payload` as a token only holders of `key` can make; `context` is signed but not carried."""
    body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
    mac = hmac.new(key, body.encode() + b"|" + context, hashlib.sha256).digest()
    return f"{body}.{_b64(mac)}"


def unsign(key: bytes, token: str, context: bytes = b"") -> dict[str, Any]:
    """The payload of a token made by `sign` with the same key and context; BadSignature otherwise."""
    if len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
        raise BadSignature("malformed")
    body, _, mac = token.partition(".")
    try:
        given = _unb64(mac)
        expected = hmac.new(key, body.encode("ascii") + b"|" + context, hashlib.sha256).digest()
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise BadSignature("malformed") from None
    if not hmac.compare_digest(given, expected):
        raise BadSignature("signature does not match")
    try:
        payload = json.loads(_unb64(body))
    except (binascii.Error, ValueError):
        raise BadSignature("malformed") from None
    if not isinstance(payload, dict):
        raise BadSignature("malformed")
    return payload
