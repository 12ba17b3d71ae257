"""`framebroker --demo`: a synthetic camera called "demo", published like any real camera."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from .app_keys import HUB, SETTINGS
from .channel import Channel
from .ingest import FrameRejected, validate_frame

__all__ = ["DEMO_CAMERA", "DemoCamera", "demo_camera"]

log = logging.getLogger(__name__)

DEMO_CAMERA = "demo"
DEMO_SIZE = (640, 480)
DEMO_FPS = 15.0


class DemoCamera:
    """The built-in publisher: renders the test pattern off the event loop and publishes it."""

    peer = "built-in demo"

    def __init__(self, channel: Channel, max_frame_bytes: int) -> None:
        # Here, not at the top: only a broker started with --demo loads Pillow for the pattern.
        from camera_agent.sources.synthetic import SyntheticSource

        self._channel = channel
        self._max_frame_bytes = max_frame_bytes
        self._source = SyntheticSource(DEMO_CAMERA, *DEMO_SIZE, fps=DEMO_FPS)
        self._stop = asyncio.Event()

    def viewers_changed(self, count: int, snapshot_only: bool = False) -> None:
        """The demo keeps running without viewers, so snapshots stay live."""

    def replaced(self) -> None:
        """A real publisher for "demo" connected: let it have the camera."""
        log.info("a publisher took over camera %r; the built-in demo stops", DEMO_CAMERA)
        self._stop.set()

    async def run(self) -> None:
        """Publish frames on an absolute schedule until replaced or cancelled."""
        self._channel.attach_publisher(self)
        interval = 1.0 / DEMO_FPS
        index = 0
        next_at = time.monotonic()
        try:
            while not self._stop.is_set():
                jpeg = await asyncio.to_thread(self._source.render, index)
                if self._stop.is_set():
                    break
                try:
                    self._channel.publish(validate_frame(jpeg, self._max_frame_bytes))
                except FrameRejected as exc:
                    log.error("demo frame rejected: %s", exc.reason)
                    return
                index += 1
                next_at = max(next_at + interval, time.monotonic())
                await asyncio.sleep(next_at - time.monotonic())
        finally:
            self._channel.detach_publisher(self)


async def demo_camera(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: run the demo camera while the app runs."""
    settings = app[SETTINGS]
    channel = app[HUB].channel_for_publisher(DEMO_CAMERA)
    task = asyncio.ensure_future(DemoCamera(channel, settings.max_frame_bytes).run())
    log.info("demo camera %r publishing %dx%d at %g fps", DEMO_CAMERA, *DEMO_SIZE, DEMO_FPS)
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
