"""The one-frame slot between capture and uplink: the newest frame wins, nothing queues."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from .stats import CameraStats

__all__ = ["Frame", "FrameSlot"]


@dataclass(frozen=True)
class Frame:
    """One captured JPEG, numbered per camera from 1."""

    seq: int
    jpeg: bytes
    captured_at: float  # time.monotonic()


class FrameSlot:
    """Holds at most one unsent frame. ``put()`` never waits: a frame the sender has
    not taken yet is replaced and counted as dropped, so a slow link costs frames,
    never memory or latency."""

    def __init__(self, stats: CameraStats) -> None:
        self._stats = stats
        self._frame: Frame | None = None
        self._seq = 0
        self._ready = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()

    def put(self, jpeg: bytes) -> Frame:
        """Store the newest frame (event-loop thread only)."""
        if self._frame is not None:
            self._stats.dropped += 1
        self._seq += 1
        self._frame = Frame(self._seq, jpeg, time.monotonic())
        self._ready.set()
        self._empty.clear()
        return self._frame

    async def take(self) -> Frame:
        """Wait for a frame and remove it from the slot."""
        while self._frame is None:
            self._ready.clear()
            await self._ready.wait()
        frame, self._frame = self._frame, None
        self._empty.set()
        return frame

    async def until_empty(self) -> None:
        """Wait until the sender has taken the waiting frame."""
        await self._empty.wait()

    def discard(self) -> None:
        """Drop the waiting frame: after a reconnect it would be stale."""
        if self._frame is not None:
            self._stats.dropped += 1
            self._frame = None
            self._empty.set()
