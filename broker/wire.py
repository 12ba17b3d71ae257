"""Bytes as they go on the wire, built once and written to every viewer unchanged."""

from __future__ import annotations

import struct
from collections.abc import Iterable

__all__ = [
    "OP_BINARY",
    "OP_TEXT",
    "http_chunk",
    "http_head",
    "mjpeg_part",
    "websocket_frame",
]

OP_TEXT = 0x1
OP_BINARY = 0x2
_FIN = 0x80


def websocket_frame(payload: bytes, opcode: int = OP_BINARY) -> bytes:
    """One unmasked, uncompressed server-to-client WebSocket frame (RFC 6455 section 5.2)."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", _FIN | opcode, length)
    elif length < 65536:
        header = struct.pack("!BBH", _FIN | opcode, 126, length)
    else:
        header = struct.pack("!BBQ", _FIN | opcode, 127, length)
    return header + payload


def mjpeg_part(jpeg: bytes, boundary: bytes) -> bytes:
    """One multipart part followed at once by the next boundary.

    Browsers show a part only when the boundary after it arrives, so writing the
    boundary right after the frame (instead of before the next one) saves a frame
    interval of latency.
    """
    head = b"Content-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
    return b"".join((head, jpeg, b"\r\n--", boundary, b"\r\n"))


def http_chunk(data: bytes) -> bytes:
    """`data` as one chunk of an HTTP/1.1 chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def http_head(status_line: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """A response's status line and header lines, each ending in CRLF; the blank line is not included."""
    lines = [status_line, *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")
