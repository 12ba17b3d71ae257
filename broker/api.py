"""Read-only JSON: the camera list with live statistics, and the health check."""

from __future__ import annotations

import time

from aiohttp import web

from . import __version__
from .app_keys import HUB

__all__ = ["cameras", "healthz"]


async def cameras(request: web.Request) -> web.Response:
    """`GET /api/cameras`: every camera with its state, rates, size and viewers."""
    now = time.monotonic()
    listing = []
    for channel in request.app[HUB].cameras():
        latest = channel.latest
        listing.append(
            {
                "id": channel.camera,
                "online": channel.online,
                "publisher": channel.publisher is not None,
                "fps": round(channel.fps, 2),
                "frames": channel.frames,
                "frames_dropped": channel.frames_dropped,
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
    """`GET /healthz`: 200 while the broker serves."""
    return web.json_response(
        {"status": "ok", "version": __version__, "cameras": len(request.app[HUB].cameras())},
        headers={"Cache-Control": "no-store"},
    )
