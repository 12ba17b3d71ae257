"""Read-only JSON: the camera list with live statistics, and the health check."""

from __future__ import annotations

import time

from aiohttp import web

from . import __version__
from .app_keys import AUTH, HUB
from .clients import client_of

__all__ = ["cameras", "healthz"]


async def cameras(request: web.Request) -> web.Response:
    """`GET /api/cameras`: the cameras this client may watch, with state, rates, size and viewers."""
    auth = request.app[AUTH]
    principal = await auth.viewer(request)
    auth.may_list(request, principal)
    local = client_of(request).local
    now = time.monotonic()
    listing = []
    for channel in request.app[HUB].cameras():
        if not auth.policy.may_view(principal, channel.camera, open_locally=local):
            continue
        latest = channel.latest
        listing.append(
            {
                "id": channel.camera,
                "title": auth.policy.title(channel.camera),
                "online": channel.online,
                "publisher": channel.publisher is not None,
                "fps": round(channel.fps, 2),
                "frames": channel.frames,
                "frames_dropped": channel.frames_dropped,
                "frames_bad": channel.frames_bad,
                "last_frame_age": round(now - latest.received_mono, 3) if latest else None,
                "width": latest.width if latest else None,
                "height": latest.height if latest else None,
                "bytes_per_second": round(channel.bytes_per_second),
                "viewers": channel.viewer_counts(),
                "agent": channel.agent,
            }
        )
    return web.json_response({"cameras": listing}, headers={"Cache-Control": "no-store"})


async def healthz(request: web.Request) -> web.Response:
    """`GET /healthz`: 200 while the broker serves; open to all, so it names no camera."""
    return web.json_response({"status": "ok", "version": __version__}, headers={"Cache-Control": "no-store"})
