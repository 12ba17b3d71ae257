"""URLs of other camera servers, so that clients set up for them work unchanged.

mjpg-streamer's `/?action=stream` and `/?action=snapshot` (with `&camera=ID`) and
µStreamer's `/stream` and `/snapshot` are answered by the broker's own MJPEG and
snapshot handlers, checks included; the camera comes from `params.camera_id`.
"""

from __future__ import annotations

from aiohttp import web

from . import mjpeg, snapshot

__all__ = ["ACTIONS", "action"]

ACTIONS = {"stream": mjpeg.view_mjpeg, "snapshot": snapshot.snapshot}


async def action(request: web.Request) -> web.StreamResponse:
    """`GET /?action=stream|snapshot[&camera=ID]`, as mjpg-streamer answers it; 400 for other actions."""
    name = request.query["action"]
    handler = ACTIONS.get(name)
    if handler is None:
        shown = name[:70].encode("unicode_escape").decode("ascii")
        raise web.HTTPBadRequest(text=f"unknown action {shown!r}: expected stream or snapshot\n")
    return await handler(request)
