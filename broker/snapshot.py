"""The newest JPEG of a camera over plain HTTP, with validators so pollers can ask cheaply."""

from __future__ import annotations

import time
from email.utils import formatdate

from aiohttp import web

from .app_keys import AUTH, CLUSTER, HUB
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
    cluster = request.app.get(CLUSTER)
    frame = channel.latest if cluster is None else await cluster.newest(channel)
    if frame is None:
        raise web.HTTPServiceUnavailable(
            text=f"camera {camera!r} has no frame yet\n",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )
    # The receive time tells a restarted camera's frame 1 from the last one's, and is carried
    # across Redis unchanged, so every node of a cluster gives a frame the same ETag.
    etag = f'"{camera}-{frame.seq}-{int(frame.received_at * 1e6):x}"'
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
