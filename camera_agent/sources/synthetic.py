"""A moving test pattern: colour bars, a bouncing box, camera name, clock and frame counter."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np

from .threaded import FrameReader, ThreadedSource

__all__ = ["SyntheticSource"]

# 75% colour bars (BGR): white, yellow, cyan, green, magenta, red, blue.
_BARS = np.array(
    [
        [191, 191, 191],
        [0, 191, 191],
        [191, 191, 0],
        [0, 191, 0],
        [191, 0, 191],
        [0, 0, 191],
        [191, 0, 0],
    ],
    dtype=np.uint8,
)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


class SyntheticSource(ThreadedSource):
    """A test camera that needs no hardware; ``render(index)`` gives one JPEG.

    With ``deterministic=True`` the clock shows the stream time (index / fps) instead
    of the wall clock, so the same index always gives the same bytes.
    """

    kind = "synthetic"

    def __init__(
        self,
        camera: str = "demo",
        width: int = 640,
        height: int = 480,
        fps: float = 15.0,
        quality: int = 80,
        deterministic: bool = False,
    ) -> None:
        if width < 16 or height < 16:
            raise ValueError(f"size {width}x{height} is too small for the test pattern")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        super().__init__(fps)
        self.camera = camera
        self.width = width
        self.height = height
        self.quality = quality
        self.deterministic = deterministic
        self._params = [cv2.IMWRITE_JPEG_QUALITY, quality]
        self._scale = height / 480
        # Twice as wide as the frame and periodic in `width`: scrolling is one slice.
        self._background = self._make_background()
        self._box = max(8, height // 6)

    def render(self, index: int) -> bytes:
        """Render frame ``index`` and return it as one JPEG."""
        ok, buf = cv2.imencode(".jpg", self.draw(index), self._params)
        if not ok:
            raise RuntimeError("cv2.imencode failed on the test pattern")
        return buf.tobytes()

    def draw(self, index: int) -> np.ndarray:
        """Frame ``index`` as a BGR image (what ``render`` encodes)."""
        w, h, box = self.width, self.height, self._box
        # Scroll one full frame width every 8 seconds of stream time.
        offset = int(index * w / (8 * self.fps)) % w
        frame = self._background[:, offset : offset + w].copy()

        x = _bounce(index * 7, w - box)
        y = _bounce(index * 5, h * 2 // 3 - box)
        cv2.rectangle(frame, (x, y), (x + box, y + box), (255, 255, 255), -1)
        cv2.rectangle(frame, (x, y), (x + box, y + box), (0, 0, 0), max(1, box // 16))

        scale, thick = 0.8 * self._scale, max(1, round(2 * self._scale))
        band = int(40 * self._scale)
        frame[h - band :, :] //= 3  # darken the caption band so text reads on any bar
        baseline = h - int(12 * self._scale)
        cv2.putText(
            frame,
            self.camera,
            (int(10 * self._scale), baseline),
            _FONT,
            scale,
            (255, 255, 255),
            thick,
            cv2.LINE_AA,
        )
        clock = f"{self._clock(index)}  #{index}"
        (text_w, _), _ = cv2.getTextSize(clock, _FONT, scale, thick)
        cv2.putText(
            frame,
            clock,
            (w - text_w - int(10 * self._scale), baseline),
            _FONT,
            scale,
            (255, 255, 255),
            thick,
            cv2.LINE_AA,
        )
        return frame

    def open_reader(self, stop: threading.Event) -> FrameReader:
        """Start at frame 0; the worker thread paces reads to ``fps``."""
        return _PatternReader(self)

    # -- private ----------------------------------------------------------------

    def _clock(self, index: int) -> str:
        if self.deterministic:
            seconds = int(index / self.fps)
            return f"{seconds // 3600 % 24:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        return time.strftime("%H:%M:%S")

    def _make_background(self) -> np.ndarray:
        w, h = self.width, self.height
        bars_h = h * 2 // 3
        columns = (np.arange(2 * w) % w) * len(_BARS) // w
        background = np.empty((h, 2 * w, 3), dtype=np.uint8)
        background[:bars_h] = _BARS[columns][np.newaxis]
        ramp = ((np.arange(2 * w) % w) * 255 // max(1, w - 1)).astype(np.uint8)
        background[bars_h:] = ramp[np.newaxis, :, np.newaxis]
        return background


class _PatternReader:
    """Endless frames of one SyntheticSource, numbered from 0."""

    def __init__(self, source: SyntheticSource) -> None:
        self._source = source
        self._index = 0

    def read(self) -> bytes:
        jpeg = self._source.render(self._index)
        self._index += 1
        return jpeg

    def close(self) -> None:
        """Nothing to release."""


def _bounce(t: int, span: int) -> int:
    """Triangle wave over 0..span so the box bounces off the edges."""
    if span <= 0:
        return 0
    phase = t % (2 * span)
    return phase if phase <= span else 2 * span - phase
