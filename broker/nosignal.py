"""The picture MJPEG viewers see while their camera is offline: they cannot read state messages."""

from __future__ import annotations

import time

import cv2
import numpy as np

from .channel import Channel
from .frame import Frame

__all__ = ["render_no_signal"]

DEFAULT_SIZE = (640, 480)


def render_no_signal(channel: Channel, since: float, width: int | None, height: int | None) -> Frame:
    """A dark JPEG, at the camera's own size, saying "no signal since HH:MM:SS"."""
    width, height = (width, height) if width and height else DEFAULT_SIZE
    image = np.full((height, width, 3), 40, np.uint8)
    scale = max(0.5, width / 640)
    thickness = max(1, round(scale * 2))
    lines = (channel.camera, "no signal since " + time.strftime("%H:%M:%S", time.localtime(since)))
    y = height // 2 - int(20 * scale)
    for text in lines:
        (text_width, text_height), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        cv2.putText(
            image,
            text,
            ((width - text_width) // 2, y),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (200, 200, 200),
            thickness,
            cv2.LINE_AA,
        )
        y += text_height + int(24 * scale)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 70])
    if not ok:
        raise RuntimeError("OpenCV could not encode the no-signal picture")
    latest = channel.latest
    seq = latest.seq if latest else 0
    return Frame(channel.camera, seq, encoded.tobytes(), time.time(), time.monotonic())
