"""The newest JPEG of a camera over plain HTTP, with validators so pollers can ask cheaply."""

from __future__ import annotations

import time
from email.utils import formatdate

from aiohttp import web

from .app_keys import AUTH, HUB, INSTANCE
from .params import camera_id

__all__ = ["snapshot"]

RETRY_AFTER_SECONDS = "1"


async def snapshot(request: web.Request) -> web.Response:
    """`GET /cameras/{camera}/snapshot.jpg`: 200 with the JPEG, 304, 404 never seen, 503 no frame yet."""
    camera = camera_id(request)
    await request.app[AUTH].may_view(request, camera)
    channel = request.app[HUB].channel(camera)
    if channel is None or not channel.seen:
        raise web.HTTPNotFound(text=f"camera {camera!r} has never published\n")
    frame = channel.latest
    if frame is None:
        raise web.HTTPServiceUnavailable(
            text=f"camera {camera!r} has no frame yet\n",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )
    etag = f'"{request.app[INSTANCE]}-{camera}-{frame.seq}"'
    headers = {
        "ETag": etag,
        "Last-Modified": formatdate(frame.received_at, usegmt=True),
        "Cache-Control": "no-cache",
        "X-Frame-Age": f"{max(0.0, time.monotonic() - frame.received_mono):.3f}",
        "X-Frame-Seq": str(frame.seq),
        "X-Content-Type-Options": "nosniff",
    }
    if etag in _etags(request.headers.get("If-None-Match", "")):
        return web.Response(status=304, headers=headers)
    return web.Response(body=frame.jpeg, content_type="image/jpeg", headers=headers)


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}
