"""Smaller copies of JPEG frames, made with Pillow in a thread pool of their own, off the event loop.

libjpeg can decode a JPEG at 1/2, 1/4 or 1/8 of its size for a fraction of the work of a
full decode (Pillow's `Image.draft`, what OpenCV calls `IMREAD_REDUCED_*`). A 320-pixel-wide
copy of a 1280x720 frame is decoded at 1/4 scale, needs no resize, and is encoded once.
Pillow is imported only when the first smaller copy is asked for, so the broker starts
without it.
"""

from __future__ import annotations

import asyncio
import io
import logging
from concurrent.futures import ThreadPoolExecutor

__all__ = ["DEFAULT_MAX_PIXELS", "ResizeUnavailable", "Resizer", "shrink_jpeg"]

log = logging.getLogger(__name__)

# --max-resize-pixels: a JPEG header may claim up to 65535x65535 pixels, and a few hundred
# bytes can make such a claim, so what a frame says must not size the decoding unchecked.
DEFAULT_MAX_PIXELS = 4096 * 4096
_TO_RGB = {"RGB", "L"}  # modes a JPEG encoder takes as they are; others (CMYK...) become RGB


class ResizeUnavailable(Exception):
    """Pillow cannot be imported: no smaller copies can be made."""


def shrink_jpeg(jpeg: bytes, width: int, quality: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """`jpeg` scaled down to `width` pixels wide (height in proportion), encoded at `quality`.

    Never upscales: a picture not wider than `width` comes back unchanged. Raises
    ValueError for a picture that cannot be decoded, or that would be decoded at more
    than `max_pixels` pixels (after the reduced-size decoding, so large cameras are fine;
    only a claimed shape no camera has, such as 1300x51600, is refused).
    """
    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as image:
        source_width, source_height = image.size
        if source_width <= width:
            return jpeg
        height = max(1, round(source_height * width / source_width))
        # Decode at the smallest 1/2^n scale that is still at least the target size.
        image.draft("RGB", (width, height))
        decoded_width, decoded_height = image.size
        if decoded_width * decoded_height > max_pixels:
            raise ValueError(
                f"its {source_width}x{source_height} pixels would be decoded at {decoded_width}x"
                f"{decoded_height}, more than max_resize_pixels={max_pixels}"
            )
        picture = image if image.mode in _TO_RGB else image.convert("RGB")
        if picture.size != (width, height):
            # Less than 2x down after the reduced decoding: an area average is sharp enough,
            # and cheaper than the bilinear or bicubic filters.
            picture = picture.resize((width, height), Image.Resampling.BOX)
        out = io.BytesIO()
        picture.save(out, "JPEG", quality=quality)
    return out.getvalue()


class Resizer:
    """The pool of threads that make smaller copies; one per broker.

    Pillow releases the GIL while it decodes, resizes and encodes, so these threads run
    beside the event loop rather than taking turns with it. Threads start on first use.
    """

    def __init__(self, threads: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self._threads = threads
        self._max_pixels = max_pixels
        self._executor: ThreadPoolExecutor | None = None
        self._available: bool | None = None

    @property
    def available(self) -> bool:
        """Whether Pillow can be imported (checked once)."""
        if self._available is None:
            try:
                import PIL.Image  # noqa: F401
            except ImportError as exc:
                log.warning("smaller sizes (?width=) are not available: Pillow cannot be imported: %s", exc)
                self._available = False
            else:
                self._available = True
        return self._available

    def require(self) -> None:
        """Raise ResizeUnavailable unless smaller copies can be made."""
        if not self.available:
            raise ResizeUnavailable(
                "this broker cannot make smaller sizes: Pillow is not installed (pip install Pillow)"
            )

    def shrink(self, jpeg: bytes, width: int, quality: int) -> asyncio.Future[bytes]:
        """`shrink_jpeg` in the pool; the future completes on the running loop."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix="resize")
        return asyncio.get_running_loop().run_in_executor(
            self._executor, shrink_jpeg, jpeg, width, quality, self._max_pixels
        )

    async def close(self) -> None:
        """Drop queued jobs and wait for the running ones (a few milliseconds each)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
            await asyncio.to_thread(executor.shutdown, wait=True)
