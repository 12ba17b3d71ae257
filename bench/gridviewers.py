"""Grid viewers in one process: sockets on /ws subscribed to many cameras, or on one camera's own /ws.

Each socket's bytes are read into one buffer and parsed in place: a binary message's
header gives the broker's receive time (the last 8 bytes of the 24-byte /ws header, or
of the 16-byte `?header=1` one), the rest of the message is only counted. Pings are
answered. A frame counts when its last byte arrives inside the measured window.

The main process talks to `watch()` over a pipe: it answers ``("ready", connected,
failure)`` once every socket is open (and subscribed), then takes ``("window", start,
end)`` (wall-clock seconds) and answers ``("result", GridResult)`` after `end`.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import struct
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from . import wsproto
from .client import parse_head, split_head
from .target import Target

__all__ = ["GridResult", "GridViewer", "parse", "watch"]

GRID_HEADER = 24  # README, "Viewing many cameras on one socket"
CAMERA_HEADER = 16  # ?header=1 on /cameras/ID/ws
READ_SIZE = 1 << 18
_TIME = struct.Struct("!d")


@dataclass
class GridResult:
    """What the viewers received inside the window."""

    connected: int
    frames: list[int] = field(default_factory=list)  # per viewer
    bytes: list[int] = field(default_factory=list)  # per viewer, WebSocket frames included
    latencies_ms: list[float] = field(default_factory=list)  # broker receipt to last byte, sampled
    failures: list[str] = field(default_factory=list)


class GridViewer:
    """One viewer connection and the state of its parse (see `parse`)."""

    __slots__ = ("buffer", "bytes", "frames", "prefix", "skip", "sock", "stamp")

    def __init__(self, sock: socket.socket, prefix: int) -> None:
        self.sock = sock
        self.prefix = prefix
        self.buffer = bytearray()  # a frame's head (and a control message) until complete
        self.skip = 0  # payload bytes of the current binary message still to come
        self.stamp = 0.0  # its broker receive time, ms since the epoch
        self.frames = 0
        self.bytes = 0


def watch(target: Target, viewers: int, cameras: list[str], width: int, control: Connection) -> None:
    """Entry point of the viewer process. With several `cameras` each socket is a /ws subscribed to
    all of them at `width`; with one, each socket is that camera's own WebSocket at full size."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    grid = len(cameras) > 1
    sockets: list[GridViewer] = []
    failure = ""
    for _ in range(viewers):
        try:
            sockets.append(_open(target, cameras, width, grid))
        except OSError as exc:
            failure = str(exc)
    control.send(("ready", len(sockets), failure))
    message = control.recv()
    assert message[0] == "window"
    _, start, end = message
    result = GridResult(len(sockets))
    _read(sockets, start, end, result)
    for each in sockets:
        result.frames.append(each.frames)
        result.bytes.append(each.bytes)
        each.sock.close()
    control.send(("result", result))


def _open(target: Target, cameras: list[str], width: int, grid: bool) -> GridViewer:
    sock = socket.create_connection((target.host, target.port), timeout=20)
    key = wsproto.new_key()
    path = "/ws" if grid else f"/cameras/{cameras[0]}/ws?header=1"
    sock.sendall(wsproto.upgrade_request(target.authority, path, key))
    received = bytearray()
    while (split := split_head(received)) is None:
        data = sock.recv(65536)
        if not data:
            raise OSError("closed during the handshake")
        received += data
    head, rest = split
    status, status_line, headers = parse_head(head)
    if status != 101 or headers.get("sec-websocket-accept") != wsproto.accept_key(key):
        raise OSError(f"refused: {status_line}")
    if grid:
        for camera in cameras:
            request = json.dumps({"type": "subscribe", "camera": camera, "width": width}).encode()
            sock.sendall(wsproto.client_frame(wsproto.OP_TEXT, request))
    sock.setblocking(False)
    viewer = GridViewer(sock, GRID_HEADER if grid else CAMERA_HEADER)
    parse(viewer, memoryview(rest), 0.0, 0.0, None)
    return viewer


def _read(sockets: list[GridViewer], start: float, end: float, result: GridResult) -> None:
    poller = select.epoll()
    by_fd = {each.sock.fileno(): each for each in sockets}
    for fd in by_fd:
        poller.register(fd, select.EPOLLIN)
    buffer = bytearray(READ_SIZE)
    view = memoryview(buffer)
    while (now := time.time()) < end:
        for fd, _ in poller.poll(min(0.5, end - now)):
            viewer = by_fd[fd]
            try:
                count = viewer.sock.recv_into(buffer)
            except BlockingIOError:
                continue
            except OSError as exc:
                count, reason = 0, str(exc)
            else:
                reason = "closed by the broker"
            if not count:
                result.failures.append(reason)
                poller.unregister(fd)
                continue
            parse(viewer, view[:count], start, end, result)
    poller.close()


def parse(viewer: GridViewer, data: memoryview, start: float, end: float, result: GridResult | None) -> None:
    """Walk the frames in `data`; count each binary message whose last byte is in it."""
    now = time.time()
    counting = result is not None and start <= now < end
    if counting:
        viewer.bytes += len(data)
    pos, size = 0, len(data)
    buffer = viewer.buffer
    while pos < size:
        if viewer.skip:
            taken = min(viewer.skip, size - pos)
            pos += taken
            viewer.skip -= taken
            if not viewer.skip:
                _frame_done(viewer, now, counting, result)
            continue
        # The header (its size is in its second byte), then a binary message's prefix, or
        # a control message whole.
        pos = _fill(buffer, data, pos, 2)
        if len(buffer) < 2:
            break
        head = wsproto.header_size(buffer[1])
        pos = _fill(buffer, data, pos, head)
        if len(buffer) < head:
            break
        opcode, length, _ = wsproto.parse_header(buffer)
        binary = opcode == wsproto.OP_BINARY
        want = head + (min(length, viewer.prefix) if binary else length)
        pos = _fill(buffer, data, pos, want)
        if len(buffer) < want:
            break
        if binary:
            viewer.stamp = _TIME.unpack_from(buffer, want - 8)[0]
            viewer.skip = length - (want - head)
            if not viewer.skip:
                _frame_done(viewer, now, counting, result)
        elif opcode == wsproto.OP_PING:
            viewer.sock.send(wsproto.client_frame(wsproto.OP_PONG, bytes(buffer[head:want])))
        buffer.clear()


def _fill(buffer: bytearray, data: memoryview, pos: int, want: int) -> int:
    """Move bytes of `data` from `pos` into `buffer` until it holds `want`; the new position."""
    missing = want - len(buffer)
    if missing <= 0:
        return pos
    taken = data[pos : pos + missing]
    buffer += taken
    return pos + len(taken)


def _frame_done(viewer: GridViewer, now: float, counting: bool, result: GridResult | None) -> None:
    if not counting or result is None:
        return
    viewer.frames += 1
    if viewer.frames % 16 == 1:  # a sample is enough, and keeps the list short
        result.latencies_ms.append(now * 1000 - viewer.stamp)
