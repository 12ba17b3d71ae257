"""One nonblocking client connection on an epoll: connect, send a request, read the response head.

Viewers and snapshot clients build on `Client`; the worker's loop calls `on_event()`
for every epoll event of the connection. Sockets are level-triggered: a handler reads
once per event and the loop comes back while data is left.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable

from .target import Target

__all__ = ["CLOSED", "CONNECTING", "HEAD", "OPEN", "Buffers", "Client", "parse_head", "split_head"]

MAX_HEAD = 65536
CONNECTING, HEAD, OPEN, CLOSED = range(4)


class Buffers:
    """Receive buffers shared by every connection of one process (one socket is read at a time).

    The bytes a client does not look at (the JPEGs) go through `take()`. By default they
    are copied into user space, as a browser or any real viewer does. With `truncate` the
    kernel discards them (``recv`` with ``MSG_TRUNC``): the bench then costs much less, but
    the server is spared part of the work a real receiver causes, so its CPU per frame
    reads lower than it is. That is for when the bench itself is the bottleneck.
    """

    __slots__ = ("_flags", "scan", "scan_size", "scan_view", "sink", "sink_size", "truncate")

    def __init__(self, truncate: bool = False, scan_size: int = 512, sink_size: int = 4 << 20) -> None:
        self.truncate = truncate
        self.scan_size = scan_size
        self.scan = bytearray(scan_size)  # small copied reads, where headers and stamps are
        self.scan_view = memoryview(self.scan)
        self.sink_size = sink_size
        # Where take() receives; with MSG_TRUNC the kernel never writes here, it only has
        # to be large enough to be legal.
        self.sink = bytearray(sink_size)
        self._flags = socket.MSG_TRUNC if truncate else 0

    def take(self, sock: socket.socket, count: int) -> int:
        """Receive up to `count` bytes nobody looks at; how many came (0: the peer closed).

        Raises what ``recv`` raises (BlockingIOError when nothing is there).
        """
        return sock.recv_into(self.sink, min(count, self.sink_size), self._flags)


def split_head(buf: bytearray) -> tuple[bytes, bytes] | None:
    """(head, what follows) once `buf` holds a complete HTTP head, else None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    return bytes(buf[:end]), bytes(buf[end + 4 :])


def parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    """Status code, status line and headers (names in lower case) of a response head."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    try:
        status = int(parts[1])
    except (IndexError, ValueError):
        status = 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, lines[0], headers


class Client(ABC):
    """A connection's life up to its first response head; subclasses handle what comes next."""

    __slots__ = ("_head", "error", "fd", "kind", "on_settled", "opened", "poller", "sock", "state", "target")

    def __init__(
        self, kind: str, target: Target, poller: select.epoll, on_settled: Callable[[Client], None]
    ) -> None:
        self.kind = kind  # "ws", "mjpeg" or "snapshot"
        self.target = target
        self.poller = poller
        self.on_settled = on_settled  # called once: open, or failed before opening
        self.sock: socket.socket | None = None
        self.fd = -1
        self.state = CONNECTING
        self.opened = False
        self.error: str | None = None
        self._head = bytearray()

    def start(self) -> int:
        """Begin connecting; returns the socket's fd, registered for EPOLLOUT."""
        sock = self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.fd = sock.fileno()
        code = sock.connect_ex((self.target.host, self.target.port))
        if code not in (0, errno.EINPROGRESS):
            self.fail(os.strerror(code))
            return self.fd
        self.poller.register(self.fd, select.EPOLLOUT)
        return self.fd

    def on_event(self, events: int) -> None:
        """Handle one epoll event."""
        if self.state == OPEN:
            self.on_readable()
        elif self.state == CONNECTING:
            self._connected()
        elif self.state == HEAD:
            self._head_bytes()

    def fail(self, reason: str) -> None:
        """Close the connection because of `reason` (kept in `error`)."""
        if self.state == CLOSED:
            return
        self.error = reason
        self.close()
        if not self.opened:
            self.on_settled(self)

    def close(self) -> None:
        """Close the socket; nothing more is counted for this connection."""
        if self.state == CLOSED:
            return
        self.state = CLOSED
        if self.sock is not None:
            if self.fd >= 0:
                # It may never have been registered (refused at once), or the poller is closed.
                with contextlib.suppress(OSError, ValueError):
                    self.poller.unregister(self.fd)
            self.sock.close()

    @abstractmethod
    def request(self) -> bytes:
        """The request sent once connected."""

    @abstractmethod
    def accept(self, status: int, status_line: str, headers: dict[str, str], rest: bytes) -> str | None:
        """Check the first response head; None if the connection is good, else why not."""

    @abstractmethod
    def on_readable(self) -> None:
        """Read once from the open connection."""

    def _connected(self) -> None:
        assert self.sock is not None
        code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self.fail(os.strerror(code))
            return
        try:
            self.sock.send(self.request())  # a small request into an empty buffer: it all fits
        except OSError as exc:
            self.fail(exc.strerror or str(exc))
            return
        self.state = HEAD
        self.poller.modify(self.fd, select.EPOLLIN)

    def _head_bytes(self) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError as exc:
            self.fail(exc.strerror or str(exc))
            return
        if not data:
            self.fail("the server closed the connection before answering")
            return
        self._take_head(data)

    def _take_head(self, data: bytes) -> None:
        """Bytes read while the response head is due: open the connection once the head is complete."""
        self._head += data
        split = split_head(self._head)
        if split is None:
            if len(self._head) > MAX_HEAD:
                self.fail("response head too long")
            return
        head, rest = split
        self._head = bytearray()
        status, status_line, headers = parse_head(head)
        problem = self.accept(status, status_line, headers, rest)
        if problem is not None:
            self.fail(problem)
            return
        if self.state == HEAD:
            self.state = OPEN
            self.opened = True
            self.on_settled(self)
