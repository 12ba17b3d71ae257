"""What every handler reads from a request: the camera id and who is asking."""

from __future__ import annotations

from aiohttp import web

from .app_keys import HUB, RESIZER, SETTINGS
from .clients import client_of
from .config import CAMERA_ID
from .resize import ResizeUnavailable
from .variants import Variant

__all__ = ["CAMERA_ID", "camera_id", "default_camera", "peer", "require_websocket_13", "variant"]


def camera_id(request: web.Request) -> str:
    """The camera a request is about, or 400 if its id is not 1-64 of A-Z a-z 0-9 _ -.

    That is the `{camera}` path part; URLs of other camera servers (compat.py) name no
    camera in the path, so there it is `?camera=`, else the default camera.
    """
    camera = request.match_info.get("camera")
    if camera is None:
        camera = request.query.get("camera") or default_camera(request)
    if CAMERA_ID.fullmatch(camera) is None:
        shown = camera[:70].encode("unicode_escape").decode("ascii")
        raise web.HTTPBadRequest(
            text=f"invalid camera id {shown!r}: use 1-64 characters from A-Z a-z 0-9 _ -\n"
        )
    return camera


def default_camera(request: web.Request) -> str:
    """`--default-camera`, else the broker's only camera; 404 without cameras, 400 with several."""
    configured = request.app[SETTINGS].default_camera
    if configured:
        return configured
    cameras = [channel.camera for channel in request.app[HUB].cameras()]
    if len(cameras) == 1:
        return cameras[0]
    if not cameras:
        raise web.HTTPNotFound(text="no camera has published yet\n")
    # No names here: this runs before the access check, for anyone who asks.
    raise web.HTTPBadRequest(
        text="the broker has several cameras: add camera=ID to the query "
        "(GET /api/cameras lists those you may watch), or start it with --default-camera ID\n"
    )


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


def variant(request: web.Request) -> Variant | None:
    """The smaller size `?width=W[&quality=Q]` asks for, snapped to the fixed set; None: full size.

    400 for a width or quality that is not a whole number in range; 501 when this broker
    cannot make smaller sizes (no Pillow).
    """
    try:
        wanted = Variant.parse(request.query.get("width"), request.query.get("quality"))
        if wanted is not None:
            request.app[RESIZER].require()
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"{exc}\n") from None
    except ResizeUnavailable as exc:
        raise web.HTTPNotImplemented(text=f"{exc}\n") from None
    return wanted
