"""Read-only JSON: the camera list with live statistics, and the health check."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from . import __version__
from .app_keys import AUTH, CLUSTER, HUB, METRICS
from .channel import Channel
from .clients import client_of
from .metrics import CONTENT_TYPE
from .params import camera_id

__all__ = ["camera_detail", "cameras", "healthz", "metrics"]


async def cameras(request: web.Request) -> web.Response:
    """`GET /api/cameras`: the cameras this client may watch, with state, rates, size and viewers."""
    auth = request.app[AUTH]
    principal = await auth.viewer(request)
    auth.may_list(request, principal)
    local = client_of(request).local
    now = time.monotonic()
    listing = [
        _summary(request, channel, now)
        for channel in request.app[HUB].cameras()
        if auth.policy.may_view(principal, channel.camera, open_locally=local)
    ]
    return web.json_response({"cameras": listing}, headers={"Cache-Control": "no-store"})


async def camera_detail(request: web.Request) -> web.Response:
    """`GET /api/cameras/{camera}`: one camera as in the list, plus each viewer and how it keeps up.

    Viewers' addresses are shown to signed-in users and on an open broker, not to visitors
    who came with a share link or to a public camera.
    """
    camera = camera_id(request)
    principal = await request.app[AUTH].may_view(request, camera)
    channel = request.app[HUB].channel(camera)
    if channel is None or not channel.seen:
        raise web.HTTPNotFound(text=f"camera {camera!r} has never published\n")
    show_addresses = principal.is_user or (
        client_of(request).local and not request.app[AUTH].policy.has_users
    )
    newest = channel.latest.seq if channel.latest is not None else 0
    detail = _summary(request, channel, time.monotonic())
    detail["viewer_list"] = [
        {
            "kind": viewer.kind,
            "width": viewer.variant.width if viewer.variant is not None else None,
            "address": viewer.peer if show_addresses else None,
            "connected_since": round(viewer.connected_at, 3),
            "frames_written": viewer.frames_written,
            "frames_skipped": viewer.frames_skipped,
            "lag_frames": max(0, newest - viewer.last_seq) if viewer.last_seq else None,
        }
        for viewer in sorted(channel.viewers, key=lambda v: v.connected_at)
    ]
    detail["variants"] = [
        {
            "width": feed.variant.width,
            "quality": feed.variant.quality,
            "viewers": len(feed.viewers),
            "frames_made": feed.made,
            "frames_skipped": feed.skipped,
            "frames_failed": feed.failed,
        }
        for feed in channel.variants.feeds()
    ]
    return web.json_response(detail, headers={"Cache-Control": "no-store"})


def _summary(request: web.Request, channel: Channel, now: float) -> dict[str, Any]:
    latest = channel.latest
    cluster = request.app.get(CLUSTER)
    return {
        "id": channel.camera,
        "title": request.app[AUTH].policy.title(channel.camera),
        "online": channel.online,
        "publisher": channel.publisher is not None,
        "node": cluster.publisher_node(channel) if cluster is not None else None,
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


async def metrics(request: web.Request) -> web.Response:
    """`GET /metrics`: Prometheus' text format, behind the same access rules as the camera list."""
    auth = request.app[AUTH]
    principal = await auth.viewer(request)
    auth.may_list(request, principal)
    local = client_of(request).local
    body = request.app[METRICS].exposition(
        lambda camera: auth.policy.may_view(principal, camera, open_locally=local)
    )
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"})


async def healthz(request: web.Request) -> web.Response:
    """`GET /healthz`: 200 while the broker serves, whatever Redis does; open to all, names no camera."""
    body: dict[str, object] = {"status": "ok", "version": __version__}
    if (cluster := request.app.get(CLUSTER)) is not None:
        body.update(cluster.health())
    return web.json_response(body, headers={"Cache-Control": "no-store"})
