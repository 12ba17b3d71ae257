"""The synthetic camera: one publisher WebSocket in a process of its own, sending on a fixed schedule.

Until the main process sends the window, it publishes one frame a second (so the
camera is online and MJPEG and snapshot URLs answer while the clients connect); from
then on tick k is due at t0 + k / fps (an absolute schedule, so late ticks do not shift
the later ones). A tick that finds the previous frame still being written, or that came
and went while the process was not running, is skipped and counted. Each distinct
frame's masked WebSocket message is built once; a send only rewrites the 16 stamp
bytes (sequence number and send time), masked, so publishing costs next to nothing.

The main process talks to `publish()` over a pipe: it answers ``("ready",)`` or
``("error", text)`` after the handshake, publishes at once, takes ``("window",
start_ns, end_ns)`` (full rate from then on; it stops publishing at `end_ns`), and
answers ``("close",)`` with ``("result", PublisherResult)``. A broker closing the
connection is reported as ``("error", text)``.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection

from . import wsproto
from .client import parse_head, split_head
from .errors import BenchError
from .parser import WebSocketParser
from .stamp import SEND_NS_END, SEQ_AT
from .tally import NEVER
from .target import Target
from .tls import WOULD_BLOCK

__all__ = ["PublisherResult", "StampedMessages", "publish"]

_STAMP_FIELDS = struct.Struct(">QQ")  # seq, send_ns, as at SEQ_AT in the stamp
# Until the window is known (clients still connecting) the camera publishes once a second:
# often enough to stay online and to be served, not so often that the frames already
# flowing to thousands of connected viewers slow down the others' handshakes.
IDLE_PERIOD_NS = 1_000_000_000


class StampedMessages:
    """The masked client message of each distinct stamped JPEG; `stamp()` fills in one send."""

    def __init__(self, jpegs: list[bytes]) -> None:
        self._messages: list[bytearray] = []
        self._stamp_at: list[int] = []
        self._masks: list[int] = []
        for jpeg in jpegs:
            mask = os.urandom(4)
            message = bytearray(wsproto.client_frame(wsproto.OP_BINARY, jpeg, mask))
            self._messages.append(message)
            self._stamp_at.append(len(message) - len(jpeg) + SEQ_AT)
            # Payload byte i is masked with mask[i % 4]: the 16 stamp bytes start at SEQ_AT.
            rotated = mask[SEQ_AT % 4 :] + mask[: SEQ_AT % 4]
            self._masks.append(int.from_bytes(rotated * 4, "big"))

    def stamp(self, seq: int, send_ns: int) -> memoryview:
        """The message for frame `seq` (distinct frames in turn) stamped with `seq` and `send_ns`."""
        index = (seq - 1) % len(self._messages)
        at = self._stamp_at[index]
        plain = int.from_bytes(_STAMP_FIELDS.pack(seq, send_ns), "big")
        message = self._messages[index]
        message[at : at + SEND_NS_END - SEQ_AT] = (plain ^ self._masks[index]).to_bytes(16, "big")
        return memoryview(message)


@dataclass(frozen=True)
class PublisherResult:
    """What the publisher sent."""

    sent: int  # frames, whole run
    published: int  # frames sent inside the window
    skipped: int  # ticks skipped inside the window
    first_seq: int  # first and last seq sent inside the window (0 if none)
    last_seq: int


def publish(
    target: Target, token: str, jpegs: list[bytes], fps: float, connect_timeout: float, control: Connection
) -> None:
    """Entry point of the publisher process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the main process, which stops this one
    try:
        sock, rest = _open(target, token, connect_timeout)
    except BenchError as exc:
        control.send(("error", str(exc)))
        return
    control.send(("ready",))
    with sock:
        _Pacer(sock, StampedMessages(jpegs), fps, control).run(rest)


def _open(target: Target, token: str, timeout: float) -> tuple[socket.socket, bytes]:
    """The publisher's WebSocket, after a successful handshake; the bytes read past the head."""
    try:
        sock = socket.create_connection((target.host, target.port), timeout=timeout)
    except OSError as exc:
        raise BenchError(f"cannot connect to {target.url}: {exc.strerror or exc}") from None
    try:
        context = target.client_context()
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname=target.host)
        key = wsproto.new_key()
        headers = {"Authorization": f"Bearer {token}"}
        sock.sendall(wsproto.upgrade_request(target.authority, target.path("publish"), key, headers))
        received = bytearray()
        while (split := split_head(received)) is None:
            data = sock.recv(65536)
            if not data:
                raise BenchError(f"{target.url} closed the publisher connection without answering")
            received += data
    except TimeoutError:
        sock.close()
        raise BenchError(
            f"{target.url} did not answer the publisher's handshake within {timeout:g} s"
        ) from None
    except OSError as exc:
        sock.close()
        raise BenchError(f"publisher connection to {target.url} failed: {exc.strerror or exc}") from None
    head, rest = split
    status, status_line, response_headers = parse_head(head)
    if status != 101 or response_headers.get("sec-websocket-accept") != wsproto.accept_key(key):
        sock.close()
        if status in (401, 403):
            raise BenchError(
                f"the broker refused the publish token ({status_line}): "
                "pass --token or set FRAMEBROKER_PUBLISH_TOKEN"
            )
        raise BenchError(f"the broker refused the publisher: {status_line}")
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock, rest


class _Pacer:
    """The publishing loop."""

    def __init__(
        self, sock: socket.socket, messages: StampedMessages, fps: float, control: Connection
    ) -> None:
        self.sock = sock
        self.messages = messages
        self.rate_period_ns = round(1e9 / fps)
        self.period_ns = IDLE_PERIOD_NS  # until the window is known
        self.t0 = 0  # tick k is due at t0 + k * period_ns
        self.ticks = 0  # ticks handled so far
        self.control = control
        self.poller = select.epoll()
        self.poller.register(sock.fileno(), select.EPOLLIN)
        self.poller.register(control.fileno(), select.EPOLLIN)
        self.queue: deque[memoryview] = deque()  # unsent bytes: a frame's rest, then pongs
        self.watching_out = False
        self.parser = WebSocketParser(lambda seq, send_ns: None, self._on_control)
        self.closed_by_broker: str | None = None
        self.seq = 0
        self.start_ns = self.end_ns = NEVER  # publish until told when the window ends
        self.published = self.skipped = 0
        self.first_seq = self.last_seq = 0

    def run(self, rest: bytes) -> None:
        """Publish until the window ends; serve the socket until told to close."""
        self.parser.feed(rest)
        self.t0 = time.monotonic_ns()
        while True:
            now = time.monotonic_ns()
            publishing = now < self.end_ns
            if publishing and now >= self.t0 + self.ticks * self.period_ns:
                due = (now - self.t0) // self.period_ns + 1
                missed = due - self.ticks - (0 if self.queue else 1)
                self.ticks = due
                if not self.queue:
                    self._send_frame()
                if self.start_ns <= now < self.end_ns:
                    self.skipped += missed
            next_tick = self.t0 + self.ticks * self.period_ns
            timeout_ns = next_tick - time.monotonic_ns() if publishing else 500_000_000
            for fd, events in self.poller.poll(max(timeout_ns, 0) / 1e9):
                if fd == self.control.fileno():
                    if self._on_message():
                        return
                else:
                    self._on_socket(events)
            if self.closed_by_broker is not None:
                self.control.send(("error", self.closed_by_broker))
                return

    def _on_message(self) -> bool:
        try:
            message = self.control.recv()
        except EOFError:
            return True
        if message[0] == "window":
            _, self.start_ns, self.end_ns = message
            # Full rate from now on: the warm-up before the window covers the ramp.
            self.t0, self.ticks, self.period_ns = time.monotonic_ns(), 0, self.rate_period_ns
            return False
        result = PublisherResult(self.seq, self.published, self.skipped, self.first_seq, self.last_seq)
        self.control.send(("result", result))
        return True

    def _send_frame(self) -> None:
        self.seq += 1
        send_ns = time.monotonic_ns()
        self.queue.append(self.messages.stamp(self.seq, send_ns))
        if self.start_ns <= send_ns < self.end_ns:
            self.published += 1
            self.first_seq = self.first_seq or self.seq
            self.last_seq = self.seq
        self._flush()

    def _flush(self) -> None:
        queue = self.queue
        while queue:
            try:
                sent = self.sock.send(queue[0])
            except WOULD_BLOCK:  # under TLS the same bytes are offered again, as OpenSSL wants
                break
            except OSError as exc:
                self.closed_by_broker = f"the publisher connection failed: {exc.strerror or exc}"
                queue.clear()
                return
            if sent < len(queue[0]):
                queue[0] = queue[0][sent:]
                break
            queue.popleft()
        if bool(queue) != self.watching_out:
            self.watching_out = bool(queue)
            self.poller.modify(self.sock, select.EPOLLIN | (select.EPOLLOUT if queue else 0))

    def _on_socket(self, events: int) -> None:
        if events & select.EPOLLOUT:
            self._flush()
        if not events & ~select.EPOLLOUT:
            return
        try:
            # Under TLS this takes a whole record (16 kB at most): nothing stays decrypted
            # in OpenSSL unseen by epoll.
            data = self.sock.recv(65536)
        except WOULD_BLOCK:
            return
        except OSError as exc:
            data = b""
            self.closed_by_broker = f"the publisher connection failed: {exc.strerror or exc}"
        if not data:
            self.closed_by_broker = self.closed_by_broker or "the broker closed the publisher connection"
            return
        self.parser.feed(data)

    def _on_control(self, opcode: int, payload: bytes) -> None:
        if opcode == wsproto.OP_PING:
            self.queue.append(memoryview(wsproto.client_frame(wsproto.OP_PONG, payload)))
            self._flush()
        elif opcode == wsproto.OP_CLOSE:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            reason = payload[2:].decode("utf-8", "replace")
            self.closed_by_broker = f"the broker closed the publisher connection (code {code}: {reason})"
