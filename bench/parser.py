"""What a viewer receives, parsed while copying as little as possible: find each stamp, skip the JPEG.

Both parsers take the bytes a socket delivered in two ways. `feed(data)` gives them
bytes that were copied (the few hundred around a stamp, headers, control messages);
`skip` says how many of the next bytes they do not need to see, and the socket loop
may discard those in the kernel (``recv`` with ``MSG_TRUNC``) and report them with
`skipped(n)`. When the last byte of a stamped JPEG has gone by, `on_frame(seq,
send_ns)` is called: that is the moment a frame is received.
"""

from __future__ import annotations

from collections.abc import Callable

from . import wsproto
from .stamp import SIGNATURE, STAMP_SIZE, parse_stamp

__all__ = ["MjpegParser", "WebSocketParser"]

FrameCallback = Callable[[int, int], None]
ControlCallback = Callable[[int, bytes], None]

VIEWER_HEADER_SIZE = 16  # the broker's optional ?header=1 prefix (seq and time)
_STAMP_SEARCH = VIEWER_HEADER_SIZE + STAMP_SIZE  # payload bytes that hold the stamp either way

_HEAD, _STAMP, _CONTROL, _SKIP = range(4)


class WebSocketParser:
    """Server-to-client WebSocket frames: stamped binary messages, text, ping and close.

    It follows the frames rather than scanning for stamps because pings must be
    answered (the broker drops a viewer that misses a pong) and they can only be told
    from JPEG bytes by position. A binary message may start with the 16-byte viewer
    header; the stamp is looked for at offset 0 and 16. Pings and closes go to
    `on_control(opcode, payload)`; text and pongs are skipped.
    """

    __slots__ = (
        "_buf",
        "_frame",
        "_opcode",
        "_payload",
        "_state",
        "_want",
        "malformed",
        "on_control",
        "on_frame",
        "skip",
        "unstamped",
    )

    def __init__(self, on_frame: FrameCallback, on_control: ControlCallback) -> None:
        self.on_frame = on_frame
        self.on_control = on_control
        self.skip = 0
        self.unstamped = 0  # binary messages without a stamp (not published by the bench)
        self.malformed = 0  # stamped messages whose length disagrees with the stamp
        self._buf = bytearray()
        self._state = _HEAD
        self._want = 2  # bytes _buf must hold before the state can advance
        self._opcode = 0  # of the current frame
        self._payload = 0  # payload length of the current frame
        self._frame: tuple[int, int] | None = None  # (seq, send_ns) completed when the skip ends

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Parse copied bytes."""
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end:
            if self.skip:
                taken = min(self.skip, end - pos)
                pos += taken
                self.skipped(taken)
                continue
            taken = min(self._want - len(self._buf), end - pos)
            self._buf += view[pos : pos + taken]
            pos += taken
            while not self.skip and len(self._buf) == self._want:
                self._advance()

    def skipped(self, count: int) -> None:
        """`count` bytes of the current skip were discarded without being fed."""
        self.skip -= count
        if not self.skip:
            self._payload_done()

    def _advance(self) -> None:
        buf = self._buf
        if self._state == _HEAD:
            size = wsproto.header_size(buf[1])
            if len(buf) < size:
                self._want = size
                return
            self._opcode, self._payload, _ = wsproto.parse_header(buf)
            buf.clear()
            if self._opcode == wsproto.OP_BINARY:
                self._state, self._want = _STAMP, min(self._payload, _STAMP_SEARCH)
            elif self._opcode in (wsproto.OP_PING, wsproto.OP_CLOSE):
                self._state, self._want = _CONTROL, self._payload
            else:
                self._start_skip(self._payload)
        elif self._state == _STAMP:
            self._frame = self._find_stamp(buf)
            self._start_skip(self._payload - len(buf))
        else:
            payload = bytes(buf)
            self._start_skip(0)
            self.on_control(self._opcode, payload)

    def _find_stamp(self, head: bytearray) -> tuple[int, int] | None:
        for offset in (0, VIEWER_HEADER_SIZE):
            stamp = parse_stamp(head, offset) if len(head) >= offset + STAMP_SIZE else None
            if stamp is not None:
                seq, send_ns, jpeg_len = stamp
                if offset + jpeg_len != self._payload:
                    self.malformed += 1
                    return None
                return seq, send_ns
        self.unstamped += 1
        return None

    def _start_skip(self, count: int) -> None:
        self._buf.clear()
        self._state, self._want = _SKIP, 0
        self.skip = count
        if not count:
            self._payload_done()

    def _payload_done(self) -> None:
        frame, self._frame = self._frame, None
        self._state, self._want = _HEAD, 2
        if frame is not None:
            self.on_frame(*frame)


class MjpegParser:
    """Any byte stream with stamped JPEGs in it: MJPEG, chunked or not.

    Everything between two JPEGs (part headers, boundaries, chunk sizes) is scanned
    for the signature and otherwise ignored; the stamp tells the JPEG's length, so the
    rest of the JPEG is skipped. Unstamped JPEGs (the broker's "no signal" picture) are
    scanned through like headers.
    """

    __slots__ = ("_frame", "_stamp", "_tail", "on_frame", "skip")

    def __init__(self, on_frame: FrameCallback) -> None:
        self.on_frame = on_frame
        self.skip = 0
        self._tail = b""  # the last bytes scanned, in case a signature is split across reads
        self._stamp: bytearray | None = None  # a stamp being collected
        self._frame: tuple[int, int] | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Parse copied bytes."""
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end:
            if self.skip:
                taken = min(self.skip, end - pos)
                pos += taken
                self.skipped(taken)
            elif self._stamp is not None:
                taken = min(STAMP_SIZE - len(self._stamp), end - pos)
                self._stamp += view[pos : pos + taken]
                pos += taken
                if len(self._stamp) == STAMP_SIZE:
                    self._stamp_done()
            else:
                window = self._tail + view[pos:end].tobytes()
                found = window.find(SIGNATURE)
                if found < 0:
                    self._tail = window[-(len(SIGNATURE) - 1) :]
                    return
                # The signature cannot lie inside the tail alone (one byte too short), so
                # at least one byte of `view` is consumed here.
                pos += found + len(SIGNATURE) - len(self._tail)
                self._tail = b""
                self._stamp = bytearray(SIGNATURE)

    def skipped(self, count: int) -> None:
        """`count` bytes of the current skip were discarded without being fed."""
        self.skip -= count
        if not self.skip:
            self._jpeg_done()

    def _stamp_done(self) -> None:
        fields = parse_stamp(self._stamp) if self._stamp is not None else None
        self._stamp = None
        if fields is None or fields[2] < STAMP_SIZE:
            return  # a corrupt length: keep scanning
        seq, send_ns, jpeg_len = fields
        self._frame = (seq, send_ns)
        self.skip = jpeg_len - STAMP_SIZE
        if not self.skip:
            self._jpeg_done()

    def _jpeg_done(self) -> None:
        frame, self._frame = self._frame, None
        if frame is not None:
            self.on_frame(*frame)
