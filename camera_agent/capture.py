"""Run one camera's source while its frames are wanted, and keep it running."""

from __future__ import annotations

import asyncio
import enum
import logging

from .backoff import Backoff, FailureLog
from .config import CameraConfig
from .demand import Demand
from .jpeg import complete_jpeg
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
    BROKEN = "broken"  # max_bad_frames in a row were not complete JPEGs


class Capture:
    """Starts the source when frames are wanted, closes it after ``idle_grace`` without
    viewers, reopens it when no frame came for ``stall_timeout`` or ``max_bad_frames`` in
    a row were not complete JPEGs (a restart), and retries a failing source with backoff.
    Every complete frame goes into the camera's slot; the others are dropped and counted."""

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
        self._bad_this_run = 0
        self._bad_in_a_row = 0
        self._broken = asyncio.Event()

    async def run(self) -> None:
        """Supervise the source; returns only when a finite source has ended."""
        while True:
            await self._demand.until_wanted()
            outcome, error = await self._run_source()
            if outcome is _Outcome.ENDED:
                self._log.info("camera %s: source ended", self._camera.id)
                return
            if outcome in (_Outcome.FAILED, _Outcome.STALLED, _Outcome.BROKEN):
                # A camera that keeps stalling is a failure like any other: log it once,
                # then rarely, and back off between reopenings.
                delay = self._backoff.next_delay()
                self._failures.failed(error, delay)
                await asyncio.sleep(delay)

    # -- private ----------------------------------------------------------------

    async def _run_source(self) -> tuple[_Outcome, str]:
        loop = asyncio.get_running_loop()
        self._last_frame_at = loop.time()
        self._frames_this_run = self._bad_this_run = self._bad_in_a_row = 0
        self._broken.clear()
        running = asyncio.create_task(self._source.run(self._on_frame))
        broken = asyncio.create_task(self._broken.wait())
        watchers = {running, broken}
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
                if broken in done:
                    self._stats.restarts += 1
                    return _Outcome.BROKEN, (
                        f"{self._bad_in_a_row} frames in a row were not complete JPEGs, reopening it"
                    )
                if idle in done:
                    if self._demand.snapshot_only:
                        self._log.info(
                            "camera %s: the snapshots' demand ended, closing the source", self._camera.id
                        )
                    else:
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

    def _on_frame(self, data: bytes) -> None:
        # Checked here, before sending, for every source: a frame the broker would refuse
        # costs nothing but a count, and the connection stays up.
        jpeg = complete_jpeg(data)
        if jpeg is None:
            self._on_bad_frame(len(data))
            return
        self._bad_in_a_row = 0
        self._last_frame_at = asyncio.get_running_loop().time()
        self._stats.captured += 1
        if self._frames_this_run == 0 and (self._failures.failing or self._backoff.attempts):
            self._failures.recovered("source is delivering frames again")
            self._backoff.reset()
        self._frames_this_run += 1
        self._slot.put(jpeg)

    def _on_bad_frame(self, size: int) -> None:
        self._stats.bad += 1
        self._bad_this_run += 1
        self._bad_in_a_row += 1
        if self._bad_in_a_row >= self._camera.max_bad_frames:
            self._broken.set()
        elif self._bad_this_run == 1:
            # Once per run of the source; the stats line counts the rest.
            self._log.warning(
                "camera %s: dropped a frame that is not a complete JPEG (%d bytes); more are counted "
                "as bad in the stats, %d in a row reopen the source",
                self._camera.id,
                size,
                self._camera.max_bad_frames,
            )


async def _cancel(tasks: set[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait until they have cleaned up (the source closes its device)."""
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            log.debug("task %s ended with %r while being cancelled", task.get_name(), task.exception())
