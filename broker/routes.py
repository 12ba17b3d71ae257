"""The whole URL map on one screen."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from . import api, compat, ingest, mjpeg, mux, signin, snapshot, viewer
from .app_keys import AUTH
from .share import QUERY_PARAM

__all__ = ["setup_routes"]


def setup_routes(app: web.Application, static_dir: Path) -> None:
    """Add every route of the broker (README, "Protocol")."""
    app.router.add_get("/cameras/{camera}/publish", ingest.publish_ws)
    app.router.add_post("/cameras/{camera}/publish", ingest.publish_post)
    app.router.add_get("/cameras/{camera}/ws", viewer.view_ws)
    app.router.add_get("/cameras/{camera}/snapshot.jpg", snapshot.snapshot)
    app.router.add_get("/cameras/{camera}/mjpeg", mjpeg.view_mjpeg)
    app.router.add_get("/ws", mux.view_mux)
    app.router.add_get("/api/cameras", api.cameras)
    app.router.add_get("/api/cameras/{camera}", api.camera_detail)
    app.router.add_get("/metrics", api.metrics)
    app.router.add_get("/api/session", signin.session_info)
    app.router.add_post("/login", signin.sign_in)
    app.router.add_post("/logout", signin.sign_out)
    app.router.add_get("/healthz", api.healthz)
    # What other camera servers answer (compat.py); "/?action=..." is dispatched by the page's route.
    app.router.add_get("/stream", mjpeg.view_mjpeg)
    app.router.add_get("/snapshot", snapshot.snapshot)
    app.router.add_get("/health", api.healthz)
    app.router.add_get("/", _index(static_dir))
    # follow_symlinks stays False: a link in the folder must not expose files outside it.
    app.router.add_static("/static/", static_dir, follow_symlinks=False, name="static")


def _index(static_dir: Path) -> web.RequestHandler:
    index = static_dir / "index.html"

    async def handler(request: web.Request) -> web.StreamResponse:
        """The page shows no camera by itself; a share link in it is checked here, so a bad one gets 403."""
        if "action" in request.query:
            return await compat.action(request)  # mjpg-streamer's URLs; their handlers check access
        if QUERY_PARAM in request.query:
            await request.app[AUTH].viewer(request)  # 403 (or 429) for a bad link
        if not index.is_file():
            raise web.HTTPNotFound(text=f"viewer page not found: {index}\n")
        return web.FileResponse(index, headers={"Cache-Control": "no-cache"})

    return handler
