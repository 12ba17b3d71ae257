"""A load process: stream viewers and snapshot clients on one epoll, steered by the main process.

The main process starts `work()` in a child process and talks to it over a pipe:

- the worker connects its clients (at most `max_in_flight` handshakes at a time)
  and answers ``("connected", opened, failed, first_failure)``;
- it keeps reading (and answering pings) until ``("window", start_ns, end_ns,
  stop_ns)`` arrives, then serves until `stop_ns` and answers ``("result",
  WorkerResult)``; ``("abort",)`` or a closed pipe ends it at any time.

While serving it writes its running totals to `progress` (deliveries so far and
open connections) twice a second, for the progress line.
"""

from __future__ import annotations

import select
import signal
import time
from array import array
from collections import deque
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from typing import Any

from .client import CLOSED, Buffers, Client
from .parser import WebSocketParser
from .snapshots import SnapshotClient
from .tally import Tally
from .target import Target
from .tlsviewer import TLS_READ, TlsViewer
from .viewers import Viewer

__all__ = ["WorkerResult", "WorkerSpec", "work"]

PROGRESS_INTERVAL_NS = 250_000_000


@dataclass(frozen=True)
class WorkerSpec:
    """What one load process runs."""

    target: Target
    ws: int
    mjpeg: int
    snapshots: int
    header: bool
    connect_timeout: float
    max_in_flight: int
    truncate: bool  # take JPEG bytes with MSG_TRUNC instead of copying them (see Buffers)


@dataclass(frozen=True)
class WorkerResult:
    """What one load process counted."""

    opened: dict[str, int]  # per kind: "ws", "mjpeg", "snapshot"
    failed: int
    failure: str | None  # the first reason a client could not connect
    lost: int  # connections that closed after opening
    lost_reason: str | None
    delivered: list[int]  # per stream viewer that opened
    dups: int
    repeats: int  # MJPEG keep-alive repeats of the newest frame
    latencies: array[int]
    requests: int
    request_errors: int
    request_latencies: array[int]
    unstamped: int  # binary WebSocket messages without a stamp
    malformed: int  # stamped WebSocket messages with a wrong length


def work(spec: WorkerSpec, control: Connection, progress: Any, slot: int) -> None:
    """Entry point of a load process (`progress`: a shared array of 2 ints per process)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the main process, which stops this one
    LoadWorker(spec, control, progress, slot).run()


class LoadWorker:
    """The clients of one process and the loop that drives them."""

    def __init__(self, spec: WorkerSpec, control: Connection, progress: Any, slot: int) -> None:
        self.spec = spec
        self.control = control
        self.progress = progress
        self.slot = slot
        self.poller = select.epoll()
        self.poller.register(control.fileno(), select.EPOLLIN)
        self.tally = Tally()
        buffers = Buffers(truncate=spec.truncate)
        context = spec.target.client_context()
        viewer_class = partial(TlsViewer, context=context, sink=bytearray(TLS_READ)) if context else Viewer
        viewers = [
            viewer_class(spec.target, self.poller, self._settled, kind=kind, header=spec.header,
                         tally=self.tally, buffers=buffers)
            for kind, count in (("ws", spec.ws), ("mjpeg", spec.mjpeg))
            for _ in range(count)
        ]  # fmt: skip
        snapshots = [
            SnapshotClient(spec.target, self.poller, self._settled, tally=self.tally, buffers=buffers)
            for _ in range(spec.snapshots)
        ]
        self.clients: list[Client] = [*viewers, *snapshots]
        self.viewers = viewers
        self.by_fd: dict[int, Client] = {}
        self.connecting: set[Client] = set()
        self.opened = 0
        self.failed = 0
        self.failure: str | None = None

    def run(self) -> None:
        """Connect, wait for the window, serve it, report."""
        try:
            if not self._connect():
                return
            self._report_progress()
            self.control.send(("connected", self.opened, self.failed, self.failure))
            message = self._serve(None)
            if message[0] != "window":
                return
            _, self.tally.start_ns, self.tally.end_ns, stop_ns = message
            if self._serve(stop_ns)[0] == "stop":
                self.control.send(("result", self._result()))
        finally:
            for client in self.clients:
                client.close()
            self.poller.close()

    def _connect(self) -> bool:
        """Open every client, `max_in_flight` at a time; False if told to stop meanwhile."""
        waiting = deque(self.clients)
        deadline = time.monotonic() + self.spec.connect_timeout
        while waiting or self.connecting:
            while waiting and len(self.connecting) < self.spec.max_in_flight:
                client = waiting.popleft()
                self.connecting.add(client)
                self.by_fd[client.start()] = client
            self._report_progress()
            left = deadline - time.monotonic()
            if left <= 0:
                for client in list(self.connecting):
                    client.fail(f"no answer within {self.spec.connect_timeout:g} s")
                self.failed += len(waiting)
                return True
            if self._poll(min(left, 0.25)) is not None:
                return False
        return True

    def _settled(self, client: Client) -> None:
        self.connecting.discard(client)
        if client.opened:
            self.opened += 1
        else:
            self.failed += 1
            self.failure = self.failure or client.error

    def _serve(self, stop_ns: int | None) -> tuple[Any, ...]:
        """Serve until `stop_ns` (then ("stop",)) or until the main process says something."""
        next_progress = 0
        while True:
            now = time.monotonic_ns()
            if stop_ns is not None and now >= stop_ns:
                return ("stop",)
            if now >= next_progress:
                self._report_progress()
                next_progress = now + PROGRESS_INTERVAL_NS
            timeout = PROGRESS_INTERVAL_NS if stop_ns is None else min(stop_ns - now, PROGRESS_INTERVAL_NS)
            message = self._poll(timeout / 1e9)
            if message is not None:
                return message

    def _poll(self, timeout: float) -> tuple[Any, ...] | None:
        control = self.control.fileno()
        by_fd = self.by_fd
        for fd, events in self.poller.poll(timeout):
            if fd == control:
                try:
                    return self.control.recv()
                except EOFError:
                    return ("abort",)
            by_fd[fd].on_event(events)
        return None

    def _report_progress(self) -> None:
        lost = sum(1 for client in self.clients if client.opened and client.state == CLOSED)
        self.progress[2 * self.slot] = self.tally.delivered
        self.progress[2 * self.slot + 1] = self.opened - lost

    def _result(self) -> WorkerResult:
        lost = [client for client in self.clients if client.opened and client.state == CLOSED]
        opened_viewers = [viewer for viewer in self.viewers if viewer.opened]
        parsers = [viewer.parser for viewer in self.viewers if isinstance(viewer.parser, WebSocketParser)]
        opened = {"ws": 0, "mjpeg": 0, "snapshot": 0}
        for client in self.clients:
            opened[client.kind] += client.opened
        return WorkerResult(
            opened=opened,
            failed=self.failed,
            failure=self.failure,
            lost=len(lost),
            lost_reason=lost[0].error if lost else None,
            delivered=[viewer.delivered for viewer in opened_viewers],
            dups=sum(viewer.dups for viewer in opened_viewers),
            repeats=sum(viewer.repeats for viewer in opened_viewers),
            latencies=self.tally.latencies,
            requests=self.tally.requests,
            request_errors=self.tally.request_errors,
            request_latencies=self.tally.request_latencies,
            unstamped=sum(parser.unstamped for parser in parsers),
            malformed=sum(parser.malformed for parser in parsers),
        )
