"""A frame as it crosses Redis: a small binary header, then the JPEG (README, "Scaling out")."""

from __future__ import annotations

import struct
import time

from ..frame import Frame

__all__ = ["FrameMessage", "WireError", "decode", "encode"]

MAGIC = b"FB"
VERSION = 1
# magic, version, camera id length, node name length, sequence number, receive time
# (seconds since the Unix epoch, the publisher's node's clock), then camera, node, JPEG.
HEADER = struct.Struct("!2sBBBQd")


class WireError(ValueError):
    """Bytes that are not a frame message of this version."""


class FrameMessage:
    """A decoded frame message."""

    __slots__ = ("camera", "jpeg", "node", "received_at", "seq")

    def __init__(self, camera: str, node: str, seq: int, received_at: float, jpeg: bytes) -> None:
        self.camera = camera
        self.node = node
        self.seq = seq
        self.received_at = received_at
        self.jpeg = jpeg

    def frame(self) -> Frame:
        """A Frame for this node's viewers; its age runs from the publishing node's receive time."""
        now_wall, now_mono = time.time(), time.monotonic()
        return Frame(
            self.camera,
            self.seq,
            self.jpeg,
            self.received_at,
            now_mono - max(0.0, now_wall - self.received_at),
        )


def encode(frame: Frame, node: bytes) -> bytes:
    """Header and JPEG in one bytes object: it is sent once, to PUBLISH and to the latest-frame key."""
    camera = frame.camera.encode()
    head = HEADER.pack(MAGIC, VERSION, len(camera), len(node), frame.seq, frame.received_at)
    return b"".join((head, camera, node, frame.jpeg))


def decode(data: bytes) -> FrameMessage:
    """The frame message in `data`; WireError if it is not one."""
    if len(data) < HEADER.size:
        raise WireError(f"{len(data)} bytes is shorter than a frame header")
    magic, version, camera_len, node_len, seq, received_at = HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise WireError(f"not a frame message of version {VERSION}")
    start = HEADER.size
    camera = data[start : start + camera_len].decode("ascii", "replace")
    node = data[start + camera_len : start + camera_len + node_len].decode("utf-8", "replace")
    jpeg = data[start + camera_len + node_len :]
    if not jpeg:
        raise WireError("a frame message without a JPEG")
    return FrameMessage(camera, node, seq, received_at, jpeg)
