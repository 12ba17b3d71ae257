"""The picture MJPEG viewers see while their camera is offline: they cannot read state messages.

Drawn with Pillow, imported only when a camera goes offline, so that the broker starts
without it (and needs neither OpenCV nor numpy at all).
"""

from __future__ import annotations

import io
import time

from .channel import Channel
from .frame import Frame

__all__ = ["MAX_SIZE", "no_signal_size", "render_no_signal"]

DEFAULT_SIZE = (640, 480)
# A frame's header may claim any size up to 65535x65535: never draw larger than this.
MAX_SIZE = (1920, 1080)


def no_signal_size(width: int | None, height: int | None) -> tuple[int, int]:
    """The camera's size, scaled down (keeping its shape) to fit MAX_SIZE; DEFAULT_SIZE if unknown."""
    if not width or not height:
        return DEFAULT_SIZE
    scale = min(1.0, MAX_SIZE[0] / width, MAX_SIZE[1] / height)
    return max(16, round(width * scale)), max(16, round(height * scale))


def render_no_signal(channel: Channel, since: float, width: int | None, height: int | None) -> Frame:
    """A dark JPEG, at the camera's own size within MAX_SIZE, saying "no signal since HH:MM:SS"."""
    from PIL import Image

    from camera_agent.sources.lettering import text_mask

    width, height = no_signal_size(width, height)
    image = Image.new("RGB", (width, height), (40, 40, 40))
    texts = (channel.camera, "no signal since " + time.strftime("%H:%M:%S", time.localtime(since)))
    size = max(8, min(width // 20, height // 10))
    lines = [text_mask(text, size) for text in texts]
    widest = max(line.width for line in lines)
    if widest > width * 0.9:  # a long camera id: smaller letters
        size = max(8, int(size * width * 0.9 / widest))
        lines = [text_mask(text, size) for text in texts]
    y = (height - sum(line.height for line in lines) - size) // 2
    for line in lines:
        image.paste((200, 200, 200), ((width - line.width) // 2, y), line)
        y += line.height + size
    out = io.BytesIO()
    image.save(out, "JPEG", quality=70)
    latest = channel.latest
    seq = latest.seq if latest else 0
    return Frame(channel.camera, seq, out.getvalue(), time.time(), time.monotonic())
