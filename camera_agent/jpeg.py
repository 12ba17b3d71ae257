"""Checks on JPEG bytes: the broker accepts only complete JPEGs (SOI ... EOI)."""

from __future__ import annotations

__all__ = ["complete_jpeg"]

_SOI = b"\xff\xd8"
_EOI = b"\xff\xd9"
# Some UVC webcams pad the driver buffer with zeros after EOI; look this far back for it.
_PADDING_WINDOW = 4096


def complete_jpeg(data: bytes) -> bytes | None:
    """Return ``data`` if it is a complete JPEG (trailing zero padding cut off), else None."""
    if len(data) < 4 or not data.startswith(_SOI):
        return None
    if data.endswith(_EOI):
        return data
    end = data.rfind(_EOI, max(2, len(data) - _PADDING_WINDOW))
    if end < 0 or data[end + 2 :].strip(b"\x00"):
        return None
    return data[: end + 2]
