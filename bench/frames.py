"""Camera-like JPEGs for the publisher, stamped (see stamp.py) and about the size a real camera sends."""

from __future__ import annotations

import cv2
import numpy as np

from .stamp import stamped

__all__ = ["DISTINCT_FRAMES", "synthesize", "target_bytes"]

DISTINCT_FRAMES = 8
_REFERENCE_PIXELS = 1280 * 720
_REFERENCE_BYTES = 120_000  # a 720p camera frame; 640x480 comes out near 50 kB


def target_bytes(width: int, height: int) -> int:
    """About what a camera's JPEG of this size weighs (120 kB at 720p, 50 kB at 640x480)."""
    return round(_REFERENCE_BYTES * (width * height / _REFERENCE_PIXELS) ** 0.8)


def _picture(width: int, height: int, index: int, rng: np.random.Generator) -> np.ndarray:
    """Gradients, shapes and sensor-like noise: flat colour would encode unrealistically small."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    shift = index * width / DISTINCT_FRAMES
    gradients = np.dstack(
        (
            (x + shift) % width / width * 255,
            y / height * 255,
            128 + 100 * np.sin((x + 2 * y + shift) / 40),
        )
    )
    picture = np.ascontiguousarray(gradients.astype(np.uint8))
    for _ in range(6):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        radius = int(rng.integers(height // 20, height // 5))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        cv2.circle(picture, center, radius, colour, -1)
    cv2.putText(picture, f"framebroker bench {index}", (width // 20, height // 2), cv2.FONT_HERSHEY_SIMPLEX,
                height / 400, (255, 255, 255), max(1, height // 240))  # fmt: skip
    noisy = picture + rng.normal(0, 6, picture.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _encode(picture: np.ndarray, quality: int) -> bytes:
    ok, encoded = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("cv2.imencode failed")
    return encoded.tobytes()


def synthesize(width: int, height: int, count: int = DISTINCT_FRAMES) -> list[bytes]:
    """`count` distinct stamped JPEGs of `width`x`height`, quality chosen to be near target_bytes()."""
    rng = np.random.default_rng(width * 10007 + height)
    pictures = [_picture(width, height, index, rng) for index in range(count)]
    target = target_bytes(width, height)
    low, high = 5, 98  # search the quality whose first frame is closest to the target size
    while low < high:
        middle = (low + high) // 2
        if len(_encode(pictures[0], middle)) < target:
            low = middle + 1
        else:
            high = middle
    return [stamped(_encode(picture, low)) for picture in pictures]
