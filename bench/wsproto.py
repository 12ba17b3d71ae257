"""The parts of RFC 6455 the bench speaks: opening handshake and frame headers, both directions."""

from __future__ import annotations

import base64
import hashlib
import os
import struct

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "accept_key",
    "client_frame",
    "frame_header",
    "header_size",
    "new_key",
    "parse_header",
    "upgrade_request",
]

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
_FIN = 0x80
_MASKED = 0x80
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def new_key() -> str:
    """A fresh Sec-WebSocket-Key."""
    return base64.b64encode(os.urandom(16)).decode()


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept a server must answer to `key`."""
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def upgrade_request(host: str, path: str, key: str, headers: dict[str, str] | None = None) -> bytes:
    """The HTTP/1.1 GET that opens a WebSocket on `path`."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def frame_header(opcode: int, length: int, masked: bool = False) -> bytes:
    """The header of one unfragmented frame of `length` payload bytes (mask key not included)."""
    mask_bit = _MASKED if masked else 0
    if length < 126:
        return struct.pack("!BB", _FIN | opcode, mask_bit | length)
    if length < 65536:
        return struct.pack("!BBH", _FIN | opcode, mask_bit | 126, length)
    return struct.pack("!BBQ", _FIN | opcode, mask_bit | 127, length)


def client_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """A complete masked client-to-server frame (clients must mask, RFC 6455 5.3)."""
    mask = mask or os.urandom(4)
    length = len(payload)
    repeated = (mask * (length // 4 + 1))[:length]
    body = (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(length, "little")
    return frame_header(opcode, length, masked=True) + mask + body


def header_size(second_byte: int) -> int:
    """Length of a frame header, mask key included, from its second byte."""
    short = second_byte & 0x7F
    extended = 2 if short == 126 else 8 if short == 127 else 0
    return 2 + extended + (4 if second_byte & _MASKED else 0)


def parse_header(header: bytes | bytearray | memoryview) -> tuple[int, int, bytes]:
    """(opcode, payload length, mask key or b"") of a complete frame header."""
    opcode = header[0] & 0x0F
    short = header[1] & 0x7F
    if short == 126:
        length, at = struct.unpack_from("!H", header, 2)[0], 4
    elif short == 127:
        length, at = struct.unpack_from("!Q", header, 2)[0], 10
    else:
        length, at = short, 2
    mask = bytes(header[at : at + 4]) if header[1] & _MASKED else b""
    return opcode, length, mask
