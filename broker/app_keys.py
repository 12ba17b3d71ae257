"""Typed keys for what the application object holds (no module-level state)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from .auth import Authenticator
from .config import Settings
from .hub import Hub
from .limits import Limits
from .metrics import Metrics
from .resize import Resizer

if TYPE_CHECKING:  # only a node of a cluster loads the cluster package (and redis-py)
    from .cluster.node import ClusterNode

__all__ = ["AUTH", "BOUNDARY", "CLUSTER", "HUB", "LIMITS", "METRICS", "RESIZER", "SETTINGS"]

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
# With --redis: this broker's part in the cluster (README, "Scaling out"); absent otherwise.
CLUSTER: web.AppKey[ClusterNode] = web.AppKey("cluster")
