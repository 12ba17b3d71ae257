"""Run a blocking frame reader on a worker thread so the event loop never waits on it."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import threading
import time
from typing import Protocol

from .base import FrameCallback
from .handoff import Handoff

__all__ = ["FrameReader", "ThreadedSource"]

log = logging.getLogger(__name__)


class FrameReader(Protocol):
    """The blocking half of a threaded source; only its worker thread touches it."""

    def read(self) -> bytes | None:
        """Return the next JPEG, or None at the end of the stream."""
        ...

    def close(self) -> None: ...


class ThreadedSource(abc.ABC):
    """Base for sources whose device API blocks (OpenCV, files, the test pattern).

    One worker thread opens the reader, reads, paces to ``fps`` (when given) and
    hands every JPEG to the event loop with ``call_soon_threadsafe``.
    """

    kind: str = "threaded"
    steady: bool = True
    #: How long a cancelled ``run()`` waits for the worker before abandoning it.
    stop_timeout: float = 3.0

    def __init__(self, fps: float | None) -> None:
        self.fps = fps

    @abc.abstractmethod
    def open_reader(self, stop: threading.Event) -> FrameReader:
        """Open the device (blocking); ``stop`` is set when the reader should give up."""

    async def run(self, on_frame: FrameCallback) -> None:
        """Read frames on a worker thread until cancelled or the stream ends."""
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        handoff = Handoff(loop, on_frame)
        done: asyncio.Future[None] = loop.create_future()
        thread = threading.Thread(
            target=self._work,
            args=(loop, stop, handoff, done),
            name=f"{self.kind}-source",
            daemon=True,  # a thread stuck inside a driver call must not block exit
        )
        thread.start()
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            stop.set()
            handoff.close()  # frames still in flight belong to this cancelled run
            await self._wait_stopped(done)
            raise

    # -- worker thread ----------------------------------------------------------

    def _work(
        self,
        loop: asyncio.AbstractEventLoop,
        stop: threading.Event,
        handoff: Handoff,
        done: asyncio.Future[None],
    ) -> None:
        error: BaseException | None = None
        try:
            reader = self.open_reader(stop)
            try:
                self._pump(reader, stop, handoff)
            finally:
                reader.close()
        except Exception as exc:
            error = exc
        # A closed loop (RuntimeError) means nobody is waiting for this thread any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, done, error)

    def _pump(self, reader: FrameReader, stop: threading.Event, handoff: Handoff) -> None:
        interval = 1.0 / self.fps if self.fps else 0.0
        next_at = time.monotonic()
        while not stop.is_set():
            jpeg = reader.read()
            if jpeg is None or not handoff.put(jpeg):
                return
            if interval:
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    stop.wait(delay)
                elif delay < -interval:
                    # Fell behind (slow read): restart the schedule instead of bursting.
                    next_at = time.monotonic()

    # -- event loop -------------------------------------------------------------

    async def _wait_stopped(self, done: asyncio.Future[None]) -> None:
        finished, _ = await asyncio.wait({done}, timeout=self.stop_timeout)
        if not finished:
            log.warning(
                "%s source thread did not stop within %.1fs; abandoning it",
                self.kind,
                self.stop_timeout,
            )
            # The thread may still settle the future later; retrieve its outcome then.
            done.add_done_callback(_consume)
        elif not done.cancelled() and done.exception() is not None:
            log.debug("%s source failed while stopping: %s", self.kind, done.exception())


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)


def _consume(done: asyncio.Future[None]) -> None:
    if not done.cancelled():
        done.exception()
