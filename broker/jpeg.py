"""What the broker needs to know about JPEG bytes, read from the markers without decoding."""

from __future__ import annotations

__all__ = ["is_complete_jpeg", "jpeg_dimensions"]

SOI = b"\xff\xd8"
EOI = b"\xff\xd9"
# Start-of-frame markers carry the picture size: SOF0-SOF15 except DHT, JPG and DAC.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that stand alone, without a length field.
_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01}


def is_complete_jpeg(data: bytes) -> bool:
    """True when `data` starts with the SOI marker and ends with EOI, as every whole JPEG does."""
    return len(data) >= 4 and data.startswith(SOI) and data.endswith(EOI)


def jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first start-of-frame segment, or None if there is none."""
    pos = 2
    end = len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker == 0xDA:  # start of scan: no SOF before the entropy-coded data
            return None
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in _SOF_MARKERS:
            if pos + 9 > end:
                return None
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            return width, height
        pos += 2 + length
    return None
