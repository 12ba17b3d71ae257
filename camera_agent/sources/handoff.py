"""Hand frames from a device thread to the event loop, newest frame wins."""

from __future__ import annotations

import asyncio
import threading

from .base import FrameCallback

__all__ = ["Handoff"]


class Handoff:
    """A one-frame slot between a producer thread and the event loop.

    ``put()`` (any thread) stores the frame and schedules at most one delivery; a
    frame the loop has not picked up yet is replaced, so a busy loop never piles up
    callbacks holding old frames. ``on_frame`` runs on the loop thread.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, on_frame: FrameCallback) -> None:
        self._loop = loop
        self._on_frame = on_frame
        self._lock = threading.Lock()
        self._frame: bytes | None = None
        self._scheduled = False
        self._closed = False
        self.replaced = 0  # frames overwritten before the loop took them

    def put(self, jpeg: bytes) -> bool:
        """Offer a frame; returns False once closed or when the loop is gone."""
        with self._lock:
            if self._closed:
                return False
            if self._frame is not None:
                self.replaced += 1
            self._frame = jpeg
            if self._scheduled:
                return True
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed
            self.close()
            return False
        return True

    def close(self) -> None:
        """Deliver nothing more, even frames already offered."""
        with self._lock:
            self._closed = True
            self._frame = None

    def _deliver(self) -> None:
        with self._lock:
            frame, self._frame = self._frame, None
            self._scheduled = False
            if self._closed:
                return
        if frame is not None:
            self._on_frame(frame)
