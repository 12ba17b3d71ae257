"""Frame sources for tests: frames that carry their own number and capture time,
a wrapper that reports when a source opens and closes, and a source that hangs."""

from __future__ import annotations

import asyncio
import struct
import threading
import time
from collections.abc import Callable

import cv2
import numpy as np

from camera_agent.sources import FrameCallback, FrameSource
from camera_agent.sources.threaded import FrameReader, ThreadedSource

_COM = b"\xff\xfe"  # JPEG comment segment marker
_MAX_SEGMENT = 65533


def stamped_jpeg(base: bytes, index: int, padding: int = 0) -> bytes:
    """``base`` with comment segments after SOI: index and time.monotonic(), then padding."""
    stamp = b"agent-test" + struct.pack(">Qd", index, time.monotonic())
    segments = [_COM + struct.pack(">H", len(stamp) + 2) + stamp]
    while padding > 0:
        chunk = min(padding, _MAX_SEGMENT)
        segments.append(_COM + struct.pack(">H", chunk + 2) + b"\0" * chunk)
        padding -= chunk
    return base[:2] + b"".join(segments) + base[2:]


def read_stamp(jpeg: bytes) -> tuple[int, float]:
    """(index, capture time) written by ``stamped_jpeg``."""
    at = jpeg.index(b"agent-test") + len(b"agent-test")
    index, captured = struct.unpack(">Qd", jpeg[at : at + 16])
    return index, captured


def small_jpeg(width: int = 64, height: int = 48) -> bytes:
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2] = (0, 0, 255)
    return cv2.imencode(".jpg", image)[1].tobytes()


class StampedSource:
    """An async source of stamped JPEGs at ``fps``; frames are numbered across restarts.
    Frames whose number ``corrupt(index)`` accepts come out cut short, as from a flaky camera."""

    kind = "stamped"
    steady = True

    def __init__(
        self, fps: float = 30.0, padding: int = 0, corrupt: Callable[[int], bool] = lambda index: False
    ) -> None:
        self.fps = fps
        self.padding = padding
        self.corrupt = corrupt
        self.index = 0
        self.runs = 0
        self._base = small_jpeg()

    async def run(self, on_frame: FrameCallback) -> None:
        self.runs += 1
        while True:
            jpeg = stamped_jpeg(self._base, self.index, self.padding)
            on_frame(jpeg[: len(jpeg) // 2] if self.corrupt(self.index) else jpeg)
            self.index += 1
            await asyncio.sleep(1.0 / self.fps)


class TrackedSource:
    """Wraps a source and sets events as it opens and closes."""

    def __init__(self, inner: FrameSource) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.steady = inner.steady
        self.runs = 0
        self.running = False
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()

    async def run(self, on_frame: FrameCallback) -> None:
        self.runs += 1
        self.running = True
        self.stopped.clear()
        self.started.set()
        try:
            await self.inner.run(on_frame)
        finally:
            self.running = False
            self.started.clear()
            self.stopped.set()


class HangingSource(ThreadedSource):
    """Every open gives ``frames`` frames, then ``read()`` blocks in a call that ignores
    the stop request, like a driver stuck on a pulled cable, until ``release()``."""

    kind = "hanging"
    stop_timeout = 0.2

    def __init__(self, frames: int = 3, fps: float = 50.0) -> None:
        super().__init__(fps)
        self.frames = frames
        self.opens = 0
        self.released = threading.Event()
        self._base = small_jpeg()

    def release(self) -> None:
        """Unblock every hung read so the worker threads can end."""
        self.released.set()

    def open_reader(self, stop: threading.Event) -> FrameReader:
        self.opens += 1
        return _HangingReader(self, self.opens)


class _HangingReader:
    def __init__(self, source: HangingSource, run: int) -> None:
        self._source = source
        self._left = source.frames
        self._run = run

    def read(self) -> bytes | None:
        if self._left == 0:
            self._source.released.wait()
            return None
        self._left -= 1
        return stamped_jpeg(self._source._base, self._run)

    def close(self) -> None:
        """Nothing to release."""
