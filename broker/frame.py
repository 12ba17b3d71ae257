"""A frame as the broker keeps it: immutable JPEG bytes plus the wire forms built from them."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from . import wire
from .jpeg import jpeg_dimensions

if TYPE_CHECKING:
    from .variants import Variant

__all__ = ["STREAM_HEADER", "VIEWER_HEADER", "Frame"]

# The opt-in header of viewer messages: sequence number and the broker's receive time
# in milliseconds since the Unix epoch, both big-endian (README, "Protocol").
VIEWER_HEADER = struct.Struct("!Qd")
# What precedes VIEWER_HEADER in messages of the viewer socket for many cameras (GET /ws):
# the stream (one camera at one size), that size's width and quality (0 and 0: full size).
STREAM_HEADER = struct.Struct("!IHH")


class Frame:
    """One JPEG of one camera. Wire forms are built on first use and shared by every viewer."""

    __slots__ = (
        "_mjpeg_chunk",
        "_mjpeg_part",
        "_stream_message",
        "_ws_message",
        "_ws_message_with_header",
        "camera",
        "height",
        "jpeg",
        "received_at",
        "received_mono",
        "seq",
        "snapshot_head",
        "variant",
        "width",
    )

    def __init__(
        self,
        camera: str,
        seq: int,
        jpeg: bytes,
        received_at: float,
        received_mono: float,
        variant: Variant | None = None,
    ) -> None:
        self.camera = camera
        self.seq = seq
        self.jpeg = jpeg
        self.variant = variant  # the smaller size this is, of the camera's frame `seq`; None: the frame
        self.received_at = received_at  # wall clock, for people and Last-Modified
        self.received_mono = received_mono  # monotonic, for ages and rates
        self.width, self.height = jpeg_dimensions(jpeg) or (None, None)
        self._ws_message: bytes | None = None
        self._ws_message_with_header: bytes | None = None
        self._mjpeg_part: bytes | None = None
        self._mjpeg_chunk: bytes | None = None
        self._stream_message: bytes | None = None
        # The snapshot answer's status line and headers, built by broker/snapshot.py on the
        # first request for this frame (they carry the broker's ETag and HTTP formats).
        self.snapshot_head: bytes | None = None

    def __repr__(self) -> str:
        return f"<Frame {self.camera} #{self.seq} {len(self.jpeg)} bytes>"

    def ws_message(self) -> bytes:
        """The WebSocket binary frame holding the bare JPEG."""
        if self._ws_message is None:
            self._ws_message = wire.websocket_frame(self.jpeg)
        return self._ws_message

    def ws_message_with_header(self) -> bytes:
        """The WebSocket binary frame holding the viewer header, then the JPEG."""
        if self._ws_message_with_header is None:
            header = VIEWER_HEADER.pack(self.seq, self.received_at * 1000.0)
            self._ws_message_with_header = wire.websocket_frame(header + self.jpeg)
        return self._ws_message_with_header

    def stream_message(self, stream_header: bytes) -> bytes:
        """The binary frame for GET /ws: `stream_header` (STREAM_HEADER), the viewer header, the JPEG.

        A frame belongs to one stream, so `stream_header` is the same on every call.
        """
        if self._stream_message is None:
            header = stream_header + VIEWER_HEADER.pack(self.seq, self.received_at * 1000.0)
            self._stream_message = wire.websocket_frame(header + self.jpeg)
        return self._stream_message

    def mjpeg_part(self, boundary: bytes) -> bytes:
        """The multipart part for HTTP/1.0 MJPEG viewers (boundary is the broker's, fixed)."""
        if self._mjpeg_part is None:
            self._mjpeg_part = wire.mjpeg_part(self.jpeg, boundary)
        return self._mjpeg_part

    def mjpeg_chunk(self, boundary: bytes) -> bytes:
        """The multipart part as one HTTP/1.1 chunk."""
        if self._mjpeg_chunk is None:
            self._mjpeg_chunk = wire.http_chunk(self.mjpeg_part(boundary))
        return self._mjpeg_chunk
