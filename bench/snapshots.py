"""Snapshot clients: keep-alive GET of snapshot.jpg, one request after the other, as fast as answered."""

from __future__ import annotations

import select
import time
from collections.abc import Callable

from .client import Buffers, Client, parse_head, split_head
from .tally import Tally
from .target import Target

__all__ = ["SnapshotClient"]

_monotonic_ns = time.monotonic_ns


class SnapshotClient(Client):
    """One keep-alive connection asking for the newest JPEG again as soon as the last one arrived.

    A 200 whose last byte arrives inside the window counts, with its latency from
    sending the request; any other status is an error. After the window no new
    request is sent.
    """

    __slots__ = ("_body", "_request", "_sent_ns", "_status", "buffers", "tally")

    def __init__(
        self,
        target: Target,
        poller: select.epoll,
        on_settled: Callable[[Client], None],
        *,
        tally: Tally,
        buffers: Buffers,
    ) -> None:
        super().__init__("snapshot", target, poller, on_settled)
        self.tally = tally
        self.buffers = buffers
        self._request = (
            f"GET {target.path('snapshot.jpg')} HTTP/1.1\r\nHost: {target.authority}\r\n\r\n".encode()
        )
        self._sent_ns = 0
        self._status = 0
        self._body = 0  # bytes of the current body still to take

    def request(self) -> bytes:
        """The GET; its send time starts the latency."""
        self._sent_ns = _monotonic_ns()
        return self._request

    def accept(self, status: int, status_line: str, headers: dict[str, str], rest: bytes) -> str | None:
        """Any answer opens the connection; the status is counted like every later one."""
        self._response(status, headers, rest)
        return None

    def on_readable(self) -> None:
        """Take body bytes (see Buffers), or read the next response head."""
        sock = self.sock
        assert sock is not None
        try:
            if self._body:
                count = self.buffers.take(sock, self._body)
                data = b""
            else:
                data = sock.recv(4096)
                count = len(data)
        except BlockingIOError:
            return
        except OSError as exc:
            self.fail(exc.strerror or str(exc))
            return
        if not count:
            self.fail("closed by the server")
        elif not data:
            self._body -= count
            if not self._body:
                self._done()
        else:
            self._head += data
            split = split_head(self._head)
            if split is not None:
                head, rest = split
                self._head.clear()
                status, _, headers = parse_head(head)
                self._response(status, headers, rest)

    def _response(self, status: int, headers: dict[str, str], rest: bytes) -> None:
        self._status = status
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            length = 0
        self._body = max(0, length - len(rest))
        if not self._body:
            self._done()

    def _done(self) -> None:
        now = _monotonic_ns()
        tally = self.tally
        if self._status != 200:
            tally.request_errors += 1
        elif tally.start_ns <= now < tally.end_ns:
            tally.requests += 1
            tally.request_latencies.append(now - self._sent_ns)
        if now >= tally.end_ns or self.sock is None:
            return
        try:
            self.sock.send(self.request())
        except OSError as exc:
            self.fail(exc.strerror or str(exc))
