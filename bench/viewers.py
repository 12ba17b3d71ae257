"""Stream viewers (WebSocket or MJPEG): each counts the stamped frames it receives in the window."""

from __future__ import annotations

import contextlib
import select
import struct
import time
from collections.abc import Callable

from . import wsproto
from .client import CLOSED, Buffers, Client
from .parser import MjpegParser, WebSocketParser
from .tally import Tally
from .target import Target

__all__ = ["Viewer"]

_monotonic_ns = time.monotonic_ns


class Viewer(Client):
    """One viewer; `kind` is "ws" or "mjpeg".

    A frame is delivered when the last byte of its JPEG has been received, if its
    send time is inside the measured window and its sequence number is newer than
    any this viewer has seen. A frame of the window seen again counts apart: an MJPEG
    stream repeating its newest frame is the broker's keep-alive (`repeats`, expected
    when the camera is quiet, as in the drain); anything else, an older frame or a
    WebSocket message repeated, is a duplicate (`dups`).
    """

    __slots__ = ("_key", "buffers", "delivered", "dups", "header", "last_seq", "parser", "repeats", "tally")

    def __init__(
        self,
        target: Target,
        poller: select.epoll,
        on_settled: Callable[[Client], None],
        *,
        kind: str,
        header: bool,
        tally: Tally,
        buffers: Buffers,
    ) -> None:
        super().__init__(kind, target, poller, on_settled)
        self.header = header
        self.tally = tally
        self.buffers = buffers
        self.delivered = 0
        self.dups = 0
        self.repeats = 0
        self.last_seq = 0
        self._key = wsproto.new_key()
        self.parser: WebSocketParser | MjpegParser = (
            WebSocketParser(self._on_frame, self._on_control) if kind == "ws" else MjpegParser(self._on_frame)
        )

    def request(self) -> bytes:
        """The WebSocket upgrade, or the MJPEG GET."""
        if self.kind == "ws":
            path = self.target.path("ws") + ("?header=1" if self.header else "")
            return wsproto.upgrade_request(self.target.authority, path, self._key)
        return f"GET {self.target.path('mjpeg')} HTTP/1.1\r\nHost: {self.target.authority}\r\n\r\n".encode()

    def accept(self, status: int, status_line: str, headers: dict[str, str], rest: bytes) -> str | None:
        """101 with the right accept key (WebSocket) or 200 multipart (MJPEG); then parse what followed."""
        if self.kind == "ws":
            if status != 101:
                return f"WebSocket refused: {status_line}"
            if headers.get("sec-websocket-accept") != wsproto.accept_key(self._key):
                return "WebSocket handshake answered with a wrong Sec-WebSocket-Accept"
        elif status != 200:
            return f"MJPEG refused: {status_line}"
        elif not headers.get("content-type", "").startswith("multipart/x-mixed-replace"):
            return f"MJPEG answered with Content-Type {headers.get('content-type')!r}"
        if rest:
            self.parser.feed(rest)
        return None

    def on_readable(self) -> None:
        """Take the JPEG's bytes while skipping (see Buffers); otherwise read a little and parse it."""
        parser = self.parser
        sock = self.sock
        assert sock is not None
        buffers = self.buffers
        try:
            if not parser.skip:
                count = sock.recv_into(buffers.scan, buffers.scan_size)
                if not count:
                    self.fail("closed by the server")
                    return
                parser.feed(buffers.scan_view[:count])
                if not parser.skip or self.state == CLOSED:
                    return
                # The JPEG usually follows at once: take it now rather than after
                # another trip through epoll.
            count = buffers.take(sock, parser.skip)
        except BlockingIOError:
            return
        except OSError as exc:
            self.fail(exc.strerror or str(exc))
            return
        if count:
            parser.skipped(count)
        else:
            self.fail("closed by the server")

    def _on_frame(self, seq: int, send_ns: int) -> None:
        now = _monotonic_ns()
        tally = self.tally
        if seq > self.last_seq:
            self.last_seq = seq
            if tally.start_ns <= send_ns < tally.end_ns:
                self.delivered += 1
                tally.delivered += 1
                tally.latencies.append(now - send_ns)
        elif tally.start_ns <= send_ns < tally.end_ns:
            if seq == self.last_seq and self.kind == "mjpeg":
                self.repeats += 1
            else:
                self.dups += 1

    def _on_control(self, opcode: int, payload: bytes) -> None:
        assert self.sock is not None
        if opcode == wsproto.OP_PING:
            try:
                self.sock.send(wsproto.client_frame(wsproto.OP_PONG, payload))
            except BlockingIOError:
                pass  # a full send buffer on a viewer that sends nothing else: the next ping will do
            except OSError as exc:
                self.fail(exc.strerror or str(exc))
        elif opcode == wsproto.OP_CLOSE:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            with contextlib.suppress(OSError):  # closing anyway
                self.sock.send(wsproto.client_frame(wsproto.OP_CLOSE, payload[:2]))
            self.fail(f"closed by the server with code {code}")
