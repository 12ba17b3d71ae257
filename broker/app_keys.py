"""Typed keys for what the application object holds (no module-level state)."""

from __future__ import annotations

from aiohttp import web

from .auth import Authenticator
from .config import Settings
from .hub import Hub
from .limits import Limits
from .metrics import Metrics
from .resize import Resizer

__all__ = ["AUTH", "BOUNDARY", "HUB", "INSTANCE", "LIMITS", "METRICS", "RESIZER", "SETTINGS"]

SETTINGS = web.AppKey("settings", Settings)
HUB = web.AppKey("hub", Hub)
# Who may watch and publish what, and how requests prove who they are.
AUTH = web.AppKey("auth", Authenticator)
# Caps on connections and viewers.
LIMITS = web.AppKey("limits", Limits)
# The threads that make smaller sizes of frames (?width=), shared by every camera.
RESIZER = web.AppKey("resizer", Resizer)
# The Prometheus registry behind /metrics.
METRICS = web.AppKey("metrics", Metrics)
# The MJPEG multipart boundary, random per broker, shared by every stream so parts are built once.
BOUNDARY = web.AppKey("boundary", bytes)
# Random per broker start; part of ETags so a restarted broker's frame 1 is not "not modified".
INSTANCE = web.AppKey("instance", str)
