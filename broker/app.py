"""The application factory: settings in, a ready aiohttp application out."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web

from .access import AccessPolicy, CameraRule, User
from .app_keys import AUTH, BOUNDARY, CLUSTER, HUB, LIMITS, METRICS, RESIZER, SETTINGS
from .auth import Authenticator
from .config import ConfigError, Settings, settings_from_env
from .configfile import read_access
from .demo import demo_camera
from .guard import guard_middleware
from .hub import Hub
from .limits import Limits
from .metrics import Metrics, Rejections
from .resize import Resizer
from .routes import setup_routes
from .sessions import Sessions
from .share import ShareLinks
from .state import load_publish_token, load_signing_key
from .throttle import FailureThrottle

if TYPE_CHECKING:
    from .cluster.link import RedisLink

__all__ = ["build_policy", "create_app"]

log = logging.getLogger(__name__)


def build_policy(settings: Settings, users: list[User], cameras: list[CameraRule]) -> AccessPolicy:
    """The access rules: the config file's users and cameras, the publish token, `--public`."""
    token, generated_into = load_publish_token(settings)
    if generated_into is not None:
        # The token itself is never logged: the operator reads it from the file.
        log.warning("no publish token configured; agents must use the one in %s", generated_into)
    return AccessPolicy(users=users, cameras=cameras, publish_token=token, public=settings.public)


def check_exposure(settings: Settings, policy: AccessPolicy) -> None:
    """Refuse to serve every camera to a network when nobody decided who may watch."""
    if settings.on_loopback or policy.viewer_access_configured:
        return
    raise ConfigError(
        f"host={settings.host!r} is reachable from other machines, but no viewer access is configured, so "
        "anyone could watch every camera. Add viewer accounts: run 'framebroker hash-password', put "
        '[[user]] name = "alice" password_hash = "..." in a file given with --config; '
        "or pass --public (FRAMEBROKER_PUBLIC=1) to let anyone watch on purpose"
    )


def create_app(settings: Settings | None = None) -> web.Application:
    """Build the broker for `settings` (FRAMEBROKER_* variables and their config file if None).

    Works with `web.run_app`, aiohttp's test utilities and gunicorn's aiohttp worker
    (`gunicorn 'broker.app:create_app()' -k broker.gunicorn.Worker`, README). Raises
    ConfigError for a configuration the broker cannot run with.
    """
    settings = settings or settings_from_env()
    users, cameras = read_access(settings.config) if settings.config is not None else ([], [])
    # Before build_policy() generates a publish token and logs it: a mistake in the config file,
    # the Redis settings or an unusable secret_file is then the only line the operator sees.
    redis_link = _redis_link(settings) if settings.redis else None
    key = load_signing_key(settings)
    policy = build_policy(settings, users, cameras)
    check_exposure(settings, policy)
    if settings.public:
        log.warning("--public: anyone who can reach this broker may watch cameras without signing in")
    rejections = Rejections()
    limits = Limits(settings, exempt=settings.trusted_proxies, rejections=rejections)
    app = web.Application(
        client_max_size=settings.max_frame_bytes,
        middlewares=[limits.middleware, guard_middleware(settings, rejections)],
    )
    app[SETTINGS] = settings
    sessions = Sessions(key, settings.session_lifetime, settings.state_dir)
    app[AUTH] = Authenticator(
        policy,
        sessions,
        ShareLinks(key),
        FailureThrottle(settings.auth_failures_per_minute),
        rejections,
    )
    app[LIMITS] = limits
    app[METRICS] = Metrics(lambda: app[HUB].cameras(), lambda: app[LIMITS].connections, rejections)
    app[RESIZER] = Resizer(settings.resize_threads, settings.max_resize_pixels)
    app[HUB] = Hub(settings, fan_out_took=app[METRICS].fan_out.observe, resizer=app[RESIZER])
    if redis_link is not None:
        from .cluster.node import ClusterNode

        app[CLUSTER] = ClusterNode(settings, redis_link, app[HUB], sessions)
        app.cleanup_ctx.append(_cluster)
    app[BOUNDARY] = b"frame-" + secrets.token_hex(8).encode()
    setup_routes(app, settings.static_dir)
    app.cleanup_ctx.append(_sweeper)
    if settings.demo:
        app.cleanup_ctx.append(demo_camera)
    app.on_shutdown.append(_close_connections)
    app.on_response_prepare.append(_close_when_tight)
    return app


def _redis_link(settings: Settings) -> RedisLink:
    try:
        from .cluster.link import RedisLink
    except ImportError as exc:
        raise ConfigError(
            f"--redis needs redis-py with hiredis ({exc}): pip install 'framebroker[cluster]'"
        ) from None
    return RedisLink(settings)


async def _cluster(app: web.Application) -> AsyncIterator[None]:
    node = app[CLUSTER]
    await node.start()
    yield
    await node.stop()


async def _sweeper(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.ensure_future(app[HUB].run())
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await app[RESIZER].close()


async def _close_when_tight(request: web.Request, response: web.StreamResponse) -> None:
    # Once descriptors are into the publishers' reserve, a connection ends with its answer
    # rather than stay open for the next request (limits.py closes the idle ones).
    if request.app[LIMITS].tight():
        response.force_close()


async def _close_connections(app: web.Application) -> None:
    await app[HUB].shutdown()
