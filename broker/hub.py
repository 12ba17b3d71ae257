"""All cameras of one broker: the channel registry, the liveness sweep, and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from .channel import Channel
from .config import Settings
from .nosignal import render_no_signal
from .resize import Resizer
from .variants import Sizes

__all__ = ["Connection", "Hub", "TooManyCameras"]

log = logging.getLogger(__name__)


class TooManyCameras(Exception):
    """The broker already holds `max_cameras` cameras."""


class Connection(Protocol):
    """A publisher or viewer connection the hub closes on shutdown."""

    async def close_going_away(self) -> None:
        """Close with "going away" (1001) or the HTTP equivalent."""


class Hub:
    """Maps camera ids to channels, keeps their online state fresh, and closes everything on exit."""

    def __init__(
        self,
        settings: Settings,
        fan_out_took: Callable[[float], None] | None = None,
        *,
        resizer: Resizer,
    ) -> None:
        self._settings = settings
        self._fan_out_took = fan_out_took
        streams = itertools.count(1)
        self._sizes = Sizes(
            resizer,
            settings.max_variants_per_camera,
            lambda: next(streams) & 0xFFFFFFFF,  # a 32-bit field in /ws frame headers
        )
        self._channels: dict[str, Channel] = {}
        self._connections: set[Connection] = set()

    def channel(self, camera: str) -> Channel | None:
        """The camera's channel, or None if the broker has never heard of it."""
        return self._channels.get(camera)

    def channel_for_publisher(self, camera: str) -> Channel:
        """The camera's channel, created if needed; TooManyCameras when it would be one too many.

        Only cameras that have had a publisher count against `max_cameras`: viewers
        waiting for a camera never use up room that publishers need.
        """
        channel = self._channels.get(camera)
        if channel is not None and channel.seen:
            return channel
        if sum(c.seen for c in self._channels.values()) >= self._settings.max_cameras:
            raise TooManyCameras(f"the broker already holds max_cameras={self._settings.max_cameras} cameras")
        if channel is None:
            channel = self._channels[camera] = self._new_channel(camera)
        return channel

    def channel_for_viewer(self, camera: str) -> Channel:
        """The camera's channel; for a camera that never published, one to wait on (see `release`)."""
        channel = self._channels.get(camera)
        if channel is None:
            channel = self._channels[camera] = self._new_channel(camera)
        return channel

    def waiting_viewers(self) -> int:
        """Viewers waiting for cameras that have never published."""
        return sum(c.viewer_count for c in self._channels.values() if not c.seen)

    def release(self, channel: Channel) -> None:
        """Forget a channel nobody published to and nobody watches (a mistyped viewer URL)."""
        if channel.idle and self._channels.get(channel.camera) is channel:
            del self._channels[channel.camera]

    def _new_channel(self, camera: str) -> Channel:
        return Channel(
            camera,
            offline_after=self._settings.offline_after,
            fan_out_took=self._fan_out_took,
            sizes=self._sizes,
        )

    def cameras(self) -> list[Channel]:
        """Cameras that have had a publisher, sorted by id."""
        return sorted((c for c in self._channels.values() if c.seen), key=lambda c: c.camera)

    @contextlib.contextmanager
    def track(self, connection: Connection) -> Iterator[None]:
        """Register a connection for the duration of its handler, so shutdown can close it."""
        self._connections.add(connection)
        try:
            yield
        finally:
            self._connections.discard(connection)

    async def run(self) -> None:
        """Sweep forever: online state, rate meters, no-signal pictures, MJPEG keep-alives."""
        interval = min(0.25, self._settings.offline_after / 4, self._settings.mjpeg_keepalive / 2)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except Exception:
                log.exception("camera sweep failed; trying again in %.2f s", interval)

    async def sweep(self) -> None:
        """One pass of `run()`."""
        now = time.monotonic()
        for channel in list(self._channels.values()):
            if channel.forgotten(now, self._settings.forget_after):
                log.info(
                    "camera %s: forgotten after %g s without publisher or viewers",
                    channel.camera,
                    self._settings.forget_after,
                )
                del self._channels[channel.camera]
                continue
            channel.expire_snapshot_demand()
            if channel.refresh(now):
                log.info("camera %s is offline", channel.camera, extra={"camera": channel.camera})
                latest = channel.latest
                width, height = (latest.width, latest.height) if latest else (None, None)
                frame = await asyncio.to_thread(
                    render_no_signal, channel, channel.status_since, width, height
                )
                if not channel.online:
                    channel.show_no_signal(frame)
            channel.keep_alive(now, self._settings.mjpeg_keepalive)

    async def shutdown(self) -> None:
        """Close every connection with "going away", within the shutdown timeout."""
        connections = list(self._connections)
        if not connections:
            return
        log.info("closing %d connections", len(connections))
        tasks = [asyncio.ensure_future(c.close_going_away()) for c in connections]
        done, pending = await asyncio.wait(tasks, timeout=self._settings.shutdown_timeout)
        for task in pending:
            task.cancel()
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.debug("close during shutdown failed: %r", task.exception())
        if pending:
            log.warning(
                "%d connections did not close within %.1f s",
                len(pending),
                self._settings.shutdown_timeout,
            )
