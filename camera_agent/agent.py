"""The agent: for each camera a source, a one-frame slot and an uplink; plus stats."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import aiohttp

from .backoff import Backoff
from .capture import Capture
from .config import AgentConfig, BrokerConfig, CameraConfig
from .demand import Demand
from .slot import FrameSlot
from .sources import FrameSource
from .stats import CameraStats, StatsReporter
from .uplink import open_uplink

__all__ = ["Agent", "CameraPipeline"]

log = logging.getLogger(__name__)


class CameraPipeline:
    """One camera, source to broker: Capture → FrameSlot → Uplink."""

    #: After a finite source ends, how long the last frame may take to leave.
    drain_timeout: float = 5.0

    def __init__(
        self,
        camera: CameraConfig,
        broker: BrokerConfig,
        source: FrameSource,
        session: aiohttp.ClientSession,
    ) -> None:
        self.camera = camera
        self.stats = CameraStats()
        self.slot = FrameSlot(self.stats)
        # HTTP cannot tell the agent about viewers: capture must always run.
        self.demand = Demand(always_on=camera.always_on or broker.transport == "http")
        self.capture = Capture(
            camera,
            source,
            self.slot,
            self.demand,
            self.stats,
            Backoff(broker.backoff_initial, broker.backoff_max),
        )
        self.uplink = open_uplink(camera, broker, session, self.slot, self.demand, self.stats, source.kind)

    async def run(self) -> None:
        """Run until the source ends (finite sources only) and its last frame has left."""
        uplink = asyncio.create_task(self.uplink.run(), name=f"{self.camera.id}-uplink")
        capture = asyncio.create_task(self.capture.run(), name=f"{self.camera.id}-capture")
        try:
            done, _ = await asyncio.wait({uplink, capture}, return_when=asyncio.FIRST_COMPLETED)
            if uplink in done:
                uplink.result()  # uplinks run forever: ending means a bug; raise it
            # Give the last frame of a finite source its chance to leave.
            drained = asyncio.ensure_future(self.slot.until_empty())
            try:
                await asyncio.wait({drained}, timeout=self.drain_timeout)
            finally:
                drained.cancel()
        finally:
            for task in (capture, uplink):
                task.cancel()
            await asyncio.wait({capture, uplink})
        capture.result()


class Agent:
    """Runs every configured camera against one broker."""

    def __init__(self, config: AgentConfig, sources: Mapping[str, FrameSource]) -> None:
        self.config = config
        self._sources = sources
        self.pipelines: dict[str, CameraPipeline] = {}
        self.started = asyncio.Event()  # set once every pipeline exists

    async def run(self) -> None:
        """Publish until cancelled, or until every (finite) source has ended."""
        config = self.config
        # --connect-timeout bounds each connect (uplink.py), so no shorter built-in one may cut it.
        timeout = aiohttp.ClientTimeout(total=None, connect=config.broker.connect_timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            self.pipelines = {
                camera.id: CameraPipeline(camera, config.broker, self._sources[camera.id], session)
                for camera in config.cameras
            }
            cameras = [
                asyncio.create_task(p.run(), name=f"camera-{camera_id}")
                for camera_id, p in self.pipelines.items()
            ]
            self.started.set()
            helpers = []
            if config.stats_interval > 0:
                stats = {camera_id: p.stats for camera_id, p in self.pipelines.items()}
                reporter = StatsReporter(stats, config.stats_interval)
                helpers.append(asyncio.create_task(reporter.run(), name="stats"))
            log.info(
                "publishing %s to %s over %s",
                ", ".join(f"{c.id} ({c.source})" for c in config.cameras),
                config.broker.url,
                config.broker.transport,
            )
            try:
                await asyncio.gather(*cameras)
            finally:
                everything = [*cameras, *helpers]
                for task in everything:
                    task.cancel()
                await asyncio.gather(*everything, return_exceptions=True)
