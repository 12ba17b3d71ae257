"""A moving test pattern: colour bars, a bouncing box, camera name, clock and frame counter.

Drawn and encoded with Pillow, so the pattern (and the broker's --demo, which uses it)
needs neither OpenCV nor numpy.
"""

from __future__ import annotations

import io
import threading
import time

from PIL import Image, ImageDraw

from .lettering import text_mask
from .threaded import FrameReader, ThreadedSource

__all__ = ["SyntheticSource"]

# 75% colour bars (RGB): white, yellow, cyan, green, magenta, red, blue.
_BARS = (
    (191, 191, 191),
    (191, 191, 0),
    (0, 191, 191),
    (0, 191, 0),
    (191, 0, 191),
    (191, 0, 0),
    (0, 0, 191),
)
_WHITE = (255, 255, 255)


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
        scale = height / 480
        self._margin = int(10 * scale)
        self._band = int(40 * scale)  # the caption band at the bottom
        self._text_size = max(8, int(20 * scale))
        self._box = max(8, height // 6)
        # Twice as wide as the frame and periodic in `width`: scrolling is one crop.
        self._background = self._make_background()
        self._name = text_mask(camera, self._text_size)

    def render(self, index: int) -> bytes:
        """Render frame ``index`` and return it as one JPEG."""
        out = io.BytesIO()
        self.draw(index).save(out, "JPEG", quality=self.quality)
        return out.getvalue()

    def draw(self, index: int) -> Image.Image:
        """Frame ``index`` as an RGB image (what ``render`` encodes)."""
        w, h, box = self.width, self.height, self._box
        # Scroll one full frame width every 8 seconds of stream time.
        offset = int(index * w / (8 * self.fps)) % w
        frame = self._background.crop((offset, 0, offset + w, h))

        x = _bounce(index * 7, w - box)
        y = _bounce(index * 5, h * 2 // 3 - box)
        ImageDraw.Draw(frame).rectangle(
            (x, y, x + box - 1, y + box - 1), fill=_WHITE, outline=(0, 0, 0), width=max(1, box // 16)
        )

        top = h - self._band + (self._band - self._name.height) // 2
        frame.paste(_WHITE, (self._margin, top), self._name)
        clock = text_mask(f"{self._clock(index)}  #{index}", self._text_size)
        frame.paste(_WHITE, (w - clock.width - self._margin, top), clock)
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

    def _make_background(self) -> Image.Image:
        """Bars over the top two thirds, a grey ramp below; the caption band darkened so that
        white text reads on it. The box never reaches the band, so the band is drawn once."""
        w, h = self.width, self.height
        bars_h = h * 2 // 3
        one = Image.new("RGB", (w, h))
        draw = ImageDraw.Draw(one)
        for n, colour in enumerate(_BARS):
            draw.rectangle((n * w // len(_BARS), 0, (n + 1) * w // len(_BARS) - 1, bars_h - 1), fill=colour)
        ramp = Image.frombytes("L", (w, 1), bytes(x * 255 // max(1, w - 1) for x in range(w)))
        one.paste(ramp.resize((w, h - bars_h)).convert("RGB"), (0, bars_h))
        band = one.crop((0, h - self._band, w, h)).point(lambda v: v // 3)
        one.paste(band, (0, h - self._band))
        background = Image.new("RGB", (2 * w, h))
        background.paste(one, (0, 0))
        background.paste(one, (w, 0))
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
