"""The timestamp the bench embeds in every JPEG it publishes, so a viewer can tell latency and order.

A stamped JPEG starts with SOI and a comment (COM) segment, so it stays a valid JPEG
that any decoder shows unchanged::

    FF D8                 SOI
    FF FE 00 1A           COM marker, segment length 26 (the length field counts itself)
    46 42 42 31           "FBB1"
    seq      u64 BE       the publisher's sequence number, 1 for its first frame
    send_ns  u64 BE       time.monotonic_ns() just before the publisher's send()
    jpeg_len u32 BE       length of the whole stamped JPEG, stamp included
    ...                   the rest of the original JPEG, from the marker after its SOI

The first 10 bytes never change (SIGNATURE): a viewer finds a frame by looking for them.
"""

from __future__ import annotations

import struct

__all__ = [
    "SEND_NS_END",
    "SEQ_AT",
    "SIGNATURE",
    "STAMP_SIZE",
    "parse_stamp",
    "stamped",
]

SIGNATURE = b"\xff\xd8\xff\xfe\x00\x1aFBB1"
_FIELDS = struct.Struct(">QQI")  # seq, send_ns, jpeg_len
STAMP_SIZE = len(SIGNATURE) + _FIELDS.size  # 30
SEQ_AT = len(SIGNATURE)  # seq and send_ns are the bytes SEQ_AT..SEND_NS_END, rewritten per send
SEND_NS_END = SEQ_AT + 16


def stamped(jpeg: bytes) -> bytes:
    """`jpeg` with a stamp segment (seq and send_ns zero, to be filled in at send time)."""
    if jpeg[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG: it does not start with SOI (FF D8)")
    total = len(jpeg) - 2 + STAMP_SIZE
    return SIGNATURE + _FIELDS.pack(0, 0, total) + jpeg[2:]


def parse_stamp(data: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int, int] | None:
    """(seq, send_ns, jpeg_len) of the stamp at `offset`, or None if no stamp starts there."""
    if data[offset : offset + SEQ_AT] != SIGNATURE:
        return None
    seq, send_ns, jpeg_len = _FIELDS.unpack_from(data, offset + SEQ_AT)
    return seq, send_ns, jpeg_len
