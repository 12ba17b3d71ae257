"""Run one camera's source while its frames are wanted, and keep it running."""

from __future__ import annotations

import asyncio
import enum
import logging

from .backoff import Backoff, FailureLog
from .config import CameraConfig
from .demand import Demand
from .slot import FrameSlot
from .sources import FrameSource, SourceError
from .stats import CameraStats

__all__ = ["Capture"]

log = logging.getLogger(__name__)


class _Outcome(enum.Enum):
    ENDED = "ended"  # a finite source ran out
    FAILED = "failed"  # could not open, or broke while running
    IDLE = "idle"  # nobody watched for the grace period
    STALLED = "stalled"  # no frame for stall_timeout


class Capture:
    """Starts the source when frames are wanted, closes it after ``idle_grace`` without
    viewers, reopens it when no frame came for ``stall_timeout`` (a restart), and retries
    a failing source with backoff. Every frame goes into the camera's slot."""

    def __init__(
        self,
        camera: CameraConfig,
        source: FrameSource,
        slot: FrameSlot,
        demand: Demand,
        stats: CameraStats,
        backoff: Backoff,
    ) -> None:
        self._camera = camera
        self._source = source
        self._slot = slot
        self._demand = demand
        self._stats = stats
        self._backoff = backoff
        # Every line about this camera carries it as a field (a key of its own in JSON logs).
        self._log = logging.LoggerAdapter(log, {"camera": camera.id})
        self._failures = FailureLog(self._log, f"camera {camera.id}: source {source.kind}")
        self._last_frame_at = 0.0
        self._frames_this_run = 0

    async def run(self) -> None:
        """Supervise the source; returns only when a finite source has ended."""
        while True:
            await self._demand.until_wanted()
            outcome, error = await self._run_source()
            if outcome is _Outcome.ENDED:
                self._log.info("camera %s: source ended", self._camera.id)
                return
            if outcome in (_Outcome.FAILED, _Outcome.STALLED):
                # A camera that keeps stalling is a failure like any other: log it once,
                # then rarely, and back off between reopenings.
                delay = self._backoff.next_delay()
                self._failures.failed(error, delay)
                await asyncio.sleep(delay)

    # -- private ----------------------------------------------------------------

    async def _run_source(self) -> tuple[_Outcome, str]:
        loop = asyncio.get_running_loop()
        self._last_frame_at = loop.time()
        self._frames_this_run = 0
        running = asyncio.create_task(self._source.run(self._on_frame))
        watchers = {running}
        idle = None
        if not self._demand.always_on:
            idle = asyncio.create_task(self._demand.until_idle_for(self._camera.idle_grace))
            watchers.add(idle)
        check_every = self._camera.stall_timeout / 4 if self._source.steady else None
        try:
            while True:
                done, _ = await asyncio.wait(
                    watchers, timeout=check_every, return_when=asyncio.FIRST_COMPLETED
                )
                if running in done:
                    return self._finished(running)
                if idle in done:
                    self._log.info(
                        "camera %s: no viewers for %gs, closing the source",
                        self._camera.id,
                        self._camera.idle_grace,
                    )
                    return _Outcome.IDLE, ""
                silent = loop.time() - self._last_frame_at
                if self._source.steady and silent > self._camera.stall_timeout:
                    self._stats.restarts += 1
                    return _Outcome.STALLED, f"no frame for {self._camera.stall_timeout:g}s, reopening it"
        finally:
            await _cancel(watchers)

    def _finished(self, running: asyncio.Task[None]) -> tuple[_Outcome, str]:
        error = running.exception()
        if error is None:
            return _Outcome.ENDED, ""
        if isinstance(error, SourceError):
            return _Outcome.FAILED, str(error)
        # An unexpected exception is a bug: keep its traceback for the report.
        self._log.error("camera %s: source crashed", self._camera.id, exc_info=error)
        return _Outcome.FAILED, f"{type(error).__name__}: {error}"

    def _on_frame(self, jpeg: bytes) -> None:
        self._last_frame_at = asyncio.get_running_loop().time()
        self._stats.captured += 1
        if self._frames_this_run == 0 and (self._failures.failing or self._backoff.attempts):
            self._failures.recovered("source is delivering frames again")
            self._backoff.reset()
        self._frames_this_run += 1
        self._slot.put(jpeg)


async def _cancel(tasks: set[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait until they have cleaned up (the source closes its device)."""
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            log.debug("task %s ended with %r while being cancelled", task.get_name(), task.exception())
