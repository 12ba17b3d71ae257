"""What every handler reads from a request: the camera id and who is asking."""

from __future__ import annotations

import re

from aiohttp import web

from .clients import client_of

__all__ = ["CAMERA_ID", "camera_id", "peer", "require_websocket_13"]

CAMERA_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def camera_id(request: web.Request) -> str:
    """The `{camera}` path part, or 400 if it is not 1-64 of A-Z a-z 0-9 _ -."""
    camera = request.match_info["camera"]
    if CAMERA_ID.fullmatch(camera) is None:
        shown = camera[:70].encode("unicode_escape").decode("ascii")
        raise web.HTTPBadRequest(
            text=f"invalid camera id {shown!r}: use 1-64 characters from A-Z a-z 0-9 _ -\n"
        )
    return camera


def peer(request: web.Request) -> str:
    """The client's address for log lines (through trusted proxies: the real client)."""
    return client_of(request).address


def require_websocket_13(request: web.Request) -> None:
    """426 for WebSocket versions other than 13 (RFC 6455 4.4); aiohttp would accept 7 and 8 too."""
    version = request.headers.get("Sec-WebSocket-Version")
    if version is not None and version.strip() != "13":
        raise web.HTTPUpgradeRequired(
            text="only WebSocket version 13 (RFC 6455) is supported\n",
            headers={"Sec-WebSocket-Version": "13"},
        )
