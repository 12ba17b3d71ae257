"""The application factory: settings in, a ready aiohttp application out."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator

from aiohttp import web

from .app_keys import BOUNDARY, HUB, INSTANCE, SETTINGS
from .config import Settings, settings_from_env
from .demo import demo_camera
from .hub import Hub
from .routes import setup_routes

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> web.Application:
    """Build the broker for `settings` (FRAMEBROKER_* variables if None); generates a token if none is set.

    Works with `web.run_app`, aiohttp's test utilities and gunicorn's aiohttp worker
    (`gunicorn 'broker.app:create_app()' -k aiohttp.GunicornUVLoopWebWorker`).
    """
    settings, generated = (settings or settings_from_env()).with_token()
    if generated:
        # Logged once, at start, so the operator can configure agents; never again.
        log.warning("no publish token configured; generated one for this run: %s", settings.publish_token)
    else:
        log.info("publish token in force: %s… (configured)", settings.publish_token[:3])
    app = web.Application(client_max_size=settings.max_frame_bytes)
    app[SETTINGS] = settings
    app[HUB] = Hub(settings)
    app[BOUNDARY] = b"frame-" + secrets.token_hex(8).encode()
    app[INSTANCE] = secrets.token_hex(4)
    setup_routes(app, settings.static_dir)
    app.cleanup_ctx.append(_sweeper)
    if settings.demo:
        app.cleanup_ctx.append(demo_camera)
    app.on_shutdown.append(_close_connections)
    return app


async def _sweeper(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.ensure_future(app[HUB].run())
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _close_connections(app: web.Application) -> None:
    await app[HUB].shutdown()
