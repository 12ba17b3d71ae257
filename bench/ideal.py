"""An ideal fan-out relay: the floor any broker implementation can be compared with.

Run: ``python -m bench.ideal --port 9000``. One thread, raw ``select.epoll`` on
nonblocking sockets, no asyncio and no framework: each frame's WebSocket message,
MJPEG part and snapshot response are built once and ``send()`` goes straight to every
viewer whose socket has room. A viewer still busy with an earlier frame keeps only the
newest pending one, and frames that reach the relay together replace each other, as in
the broker, so what remains is mostly the kernel's copy.

It speaks what the bench needs of the broker's protocol (README, "Protocol"): the
publisher WebSocket ``/cameras/{camera}/publish`` (any token is accepted), viewers on
``/cameras/{camera}/ws`` (``?header=1`` too), ``/cameras/{camera}/mjpeg`` (HTTP/1.0
style: no chunking, the body ends when the connection does), keep-alive
``/cameras/{camera}/snapshot.jpg`` and ``/healthz``. Not a server for real use: no
limits beyond the frame size, no timeouts, no heartbeat.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import re
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from urllib.parse import parse_qs

import numpy as np

from . import wsproto

__all__ = ["Relay", "main"]

BOUNDARY = b"idealframeboundary"
MAX_FRAME = 64 << 20
MAX_REQUEST = 16384
_ROUTE = re.compile(rb"/cameras/([A-Za-z0-9_-]{1,64})/(publish|ws|mjpeg|snapshot\.jpg)")
_VIEWER_HEADER = struct.Struct("!Qd")  # as the broker's ?header=1: seq, receive time in ms since the epoch
_IN = select.EPOLLIN
_OUT = select.EPOLLOUT


class Frame:
    """One JPEG and its wire forms, each built on first use and then shared by every viewer."""

    __slots__ = ("jpeg", "received", "seq", "wires")

    def __init__(self, seq: int, jpeg: bytes) -> None:
        self.seq = seq
        self.jpeg = jpeg
        self.received = time.time()
        self.wires: dict[str, bytes] = {}

    def wire(self, kind: str) -> bytes:
        """The bytes a viewer of `kind` ("ws", "ws-header", "mjpeg", "snapshot") is sent."""
        data = self.wires.get(kind)
        if data is None:
            data = self.wires[kind] = self._build(kind)
        return data

    def _build(self, kind: str) -> bytes:
        jpeg = self.jpeg
        if kind == "ws":
            return wsproto.frame_header(wsproto.OP_BINARY, len(jpeg)) + jpeg
        if kind == "ws-header":
            header = _VIEWER_HEADER.pack(self.seq, self.received * 1000.0)
            return wsproto.frame_header(wsproto.OP_BINARY, len(header) + len(jpeg)) + header + jpeg
        if kind == "mjpeg":
            head = b"Content-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
            return b"".join((head, jpeg, b"\r\n--", BOUNDARY, b"\r\n"))
        head = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
        return head + jpeg


class Camera:
    """The newest frame of one camera and who watches it."""

    __slots__ = ("latest", "seq", "sinks")

    def __init__(self) -> None:
        self.latest: Frame | None = None
        self.seq = 0
        self.sinks: set[Sink] = set()

    def publish(self, jpeg: bytes) -> None:
        """Make `jpeg` the newest frame and offer it to every viewer."""
        self.seq += 1
        frame = self.latest = Frame(self.seq, jpeg)
        for sink in tuple(self.sinks):  # a failed send removes its sink from the set
            sink.offer(frame.wire(sink.kind))


class Sink:
    """One viewer socket (WebSocket or MJPEG): the frame being written and the newest one waiting."""

    __slots__ = ("camera", "kind", "out", "pending", "relay", "sock")

    def __init__(self, relay: Relay, sock: socket.socket, camera: Camera, kind: str) -> None:
        self.relay = relay
        self.sock = sock
        self.camera = camera
        self.kind = kind
        self.out: memoryview | None = None  # the rest of a frame the socket did not take yet
        self.pending: bytes | None = None  # newest frame waiting for `out` to finish

    def offer(self, data: bytes) -> None:
        """Send `data` now if the socket is free, else keep it as the newest pending frame."""
        if self.out is None:
            self._write(data)
        else:
            self.pending = data

    def on_event(self, events: int) -> None:
        """Flush on EPOLLOUT; read and drop what the viewer sends (it has nothing to say)."""
        if events & _OUT:
            self._flush()
        if events & ~_OUT:
            try:
                if self.sock.recv(4096):
                    return
            except BlockingIOError:
                return
            except OSError:
                pass
            self.close()

    def close(self) -> None:
        """Forget the viewer and close its socket."""
        self.camera.sinks.discard(self)
        self.relay.forget(self.sock)

    def _write(self, data: bytes | memoryview) -> None:
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close()
            return
        was_waiting = self.out is not None
        self.out = memoryview(data)[sent:] if sent < len(data) else None
        if (self.out is not None) != was_waiting:
            self.relay.watch(self.sock, _IN | _OUT if self.out is not None else _IN)

    def _flush(self) -> None:
        if self.out is not None:
            self._write(self.out)
        if self.out is None and self.pending is not None:
            data, self.pending = self.pending, None
            self._write(data)


class Publisher:
    """A publisher WebSocket: masked client frames in; each binary message is published."""

    __slots__ = ("_buf", "_got", "_head", "_mask", "_newest", "_opcode", "_want", "camera", "relay", "sock")

    def __init__(self, relay: Relay, sock: socket.socket, camera: Camera) -> None:
        self.relay = relay
        self.sock = sock
        self.camera = camera
        self._head = bytearray()
        self._buf = bytearray(4)
        self._got = 0
        self._want = 0  # payload bytes of the current frame; 0 while reading a header
        self._opcode = 0
        self._mask = 0
        self._newest: bytes | None = None  # the last complete frame of this event

    def on_event(self, events: int) -> None:
        """Read all that has arrived, then publish the newest complete frame.

        Frames that arrived together replace each other, as in the broker. Reading only
        one piece per event would take several trips through a busy epoll loop per frame,
        and frames would queue in the kernel's socket buffers.
        """
        while self.relay.owner(self.sock) is self:
            try:
                if self._want:
                    count = self.sock.recv_into(memoryview(self._buf)[self._got : self._want])
                    self._got += count
                else:
                    # Header bytes are read exactly, so the payload lands in its own buffer uncopied.
                    need = wsproto.header_size(self._head[1]) if len(self._head) >= 2 else 2
                    chunk = self.sock.recv(need - len(self._head))
                    count = len(chunk)
                    self._head += chunk
            except BlockingIOError:
                break
            except OSError:
                count = 0
            if not count:
                self.relay.forget(self.sock)
                break
            if not self._want:
                self._header_progress()
            elif self._got == self._want:
                self._message(self._want)
        newest, self._newest = self._newest, None
        if newest is not None:
            self.camera.publish(newest)

    def _header_progress(self) -> None:
        if len(self._head) < 2 or len(self._head) < wsproto.header_size(self._head[1]):
            return
        self._opcode, length, mask = wsproto.parse_header(self._head)
        self._head.clear()
        if length > MAX_FRAME:
            self.relay.forget(self.sock)
            return
        self._mask = int.from_bytes(mask or bytes(4), "little")
        if len(self._buf) < length + 4:
            self._buf = bytearray(length + 4)  # room to unmask in whole 4-byte words
        self._got, self._want = 0, length
        if not length:
            self._message(0)

    def _message(self, length: int) -> None:
        self._want = 0
        words = np.frombuffer(self._buf, dtype="<u4", count=(length + 3) // 4)
        words ^= np.uint32(self._mask)
        payload = bytes(memoryview(self._buf)[:length])
        if self._opcode == wsproto.OP_BINARY:
            self._newest = payload
        elif self._opcode == wsproto.OP_PING:
            self._reply(wsproto.frame_header(wsproto.OP_PONG, length) + payload)
        elif self._opcode == wsproto.OP_CLOSE:
            self._reply(wsproto.frame_header(wsproto.OP_CLOSE, min(length, 2)) + payload[:2])
            self.relay.forget(self.sock)

    def _reply(self, data: bytes) -> None:
        try:
            self.sock.send(data)
        except OSError:
            self.relay.forget(self.sock)


class HttpConnection:
    """A plain HTTP connection: requests one after the other; may turn into a viewer or publisher."""

    __slots__ = ("_in", "_out", "relay", "sock")

    def __init__(self, relay: Relay, sock: socket.socket) -> None:
        self.relay = relay
        self.sock = sock
        self._in = bytearray()
        self._out: memoryview | None = None

    def on_event(self, events: int) -> None:
        """Write what is left of a response, or read and answer requests."""
        if self._out is not None:
            self._send(self._out)
            if self._out is None:
                self._answer_buffered()
            return
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.relay.forget(self.sock)
            return
        self._in += data
        self._answer_buffered()

    def _answer_buffered(self) -> None:
        while self._out is None and self.relay.owner(self.sock) is self:
            end = self._in.find(b"\r\n\r\n")
            if end < 0:
                if len(self._in) > MAX_REQUEST:
                    self.relay.forget(self.sock)
                return
            head = bytes(self._in[:end])
            del self._in[: end + 4]
            self._answer(head)

    def _answer(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        method, _, rest = lines[0].partition(b" ")
        target = rest.partition(b" ")[0]
        path, _, query = target.partition(b"?")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if method != b"GET":
            self._respond(405, b"only GET\n")
        elif path == b"/healthz":
            self._respond(200, b'{"status": "ok"}\n', b"application/json")
        elif (match := _ROUTE.fullmatch(path)) is None:
            self._respond(404, b"not found\n")
        else:
            camera, route = match.group(1).decode(), match.group(2)
            self._route(camera, route, headers, parse_qs(query.decode("latin-1")))

    def _route(
        self, name: str, route: bytes, headers: dict[bytes, bytes], query: dict[str, list[str]]
    ) -> None:
        relay = self.relay
        if route in (b"publish", b"ws"):
            key = headers.get(b"sec-websocket-key")
            if key is None or headers.get(b"upgrade", b"").lower() != b"websocket":
                self._respond(400, b"WebSocket upgrade expected\n")
                return
            if self._in:
                self.relay.refuse(self.sock, "data sent before the WebSocket handshake was answered")
                return
            accept = wsproto.accept_key(key.decode("latin-1")).encode()
            self._send(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            if relay.owner(self.sock) is not self:
                return  # the handshake could not be sent
            camera = relay.camera(name)
            if route == b"publish":
                relay.adopt(self.sock, Publisher(relay, self.sock, camera))
            else:
                with_header = query.get("header", ["0"])[0].lower() in ("1", "true", "yes")
                self._become_sink(camera, "ws-header" if with_header else "ws")
            return
        camera = relay.cameras.get(name)
        if camera is None:
            self._respond(404, f"camera {name!r} has never published\n".encode())
        elif camera.latest is None:
            self._respond(503, f"camera {name!r} has no frame yet\n".encode())
        elif route == b"snapshot.jpg":
            self._send(camera.latest.wire("snapshot"))
        else:
            self._send(
                b"HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary="
                + BOUNDARY
                + b"\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n--"
                + BOUNDARY
                + b"\r\n"
            )
            if relay.owner(self.sock) is self:
                self._become_sink(camera, "mjpeg")

    def _become_sink(self, camera: Camera, kind: str) -> None:
        sink = Sink(self.relay, self.sock, camera, kind)
        sink.out = self._out  # the rest of the handshake, if the socket did not take it all
        self.relay.adopt(self.sock, sink)
        self.relay.watch(self.sock, _IN | _OUT if sink.out is not None else _IN)
        camera.sinks.add(sink)
        if camera.latest is not None:
            sink.offer(camera.latest.wire(kind))

    def _respond(self, status: int, body: bytes, content_type: bytes = b"text/plain") -> None:
        reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed"}
        head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n" % (
            status,
            reason.get(status, b"Service Unavailable"),
            content_type,
            len(body),
        )
        self._send(head + body)

    def _send(self, data: bytes | memoryview) -> None:
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.relay.forget(self.sock)
            return
        waiting = self._out is not None
        self._out = memoryview(data)[sent:] if sent < len(data) else None
        if (self._out is not None) != waiting:
            self.relay.watch(self.sock, _OUT if self._out is not None else _IN)


Handler = HttpConnection | Publisher | Sink


class Relay:
    """The listening socket, every connection and every camera, on one epoll."""

    def __init__(self, host: str, port: int, sndbuf: int) -> None:
        self.sndbuf = sndbuf
        self.cameras: dict[str, Camera] = {}
        self._handlers: dict[int, Handler] = {}
        self._poller = select.epoll()
        self._listener = socket.create_server((host, port), backlog=4096)
        self._listener.setblocking(False)
        self._poller.register(self._listener.fileno(), _IN)

    @property
    def port(self) -> int:
        """The port actually bound."""
        return self._listener.getsockname()[1]

    def camera(self, name: str) -> Camera:
        """The camera called `name`, created on first use."""
        camera = self.cameras.get(name)
        if camera is None:
            camera = self.cameras[name] = Camera()
        return camera

    def owner(self, sock: socket.socket) -> Handler | None:
        """Who handles `sock` now."""
        return self._handlers.get(sock.fileno())

    def adopt(self, sock: socket.socket, handler: Handler) -> None:
        """Hand `sock` to another handler (after an upgrade)."""
        self._handlers[sock.fileno()] = handler

    def watch(self, sock: socket.socket, events: int) -> None:
        """Change which events of `sock` are reported."""
        self._poller.modify(sock.fileno(), events)

    def forget(self, sock: socket.socket) -> None:
        """Close `sock` and drop its handler."""
        fd = sock.fileno()
        if fd >= 0 and self._handlers.pop(fd, None) is not None:
            self._poller.unregister(fd)
        sock.close()

    def refuse(self, sock: socket.socket, reason: str) -> None:
        """Close a connection that broke the protocol."""
        print(f"ideal relay: closing a connection: {reason}", file=sys.stderr)
        self.forget(sock)

    def serve(self, running: Callable[[], bool]) -> None:
        """Serve until `running()` turns false (checked at least twice a second)."""
        poll = self._poller.poll
        handlers = self._handlers
        listener = self._listener.fileno()
        while running():
            for fd, events in poll(0.5):
                if fd == listener:
                    self._accept()
                    continue
                handler = handlers.get(fd)
                if handler is not None:
                    handler.on_event(events)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    print(f"ideal relay: cannot accept: {exc}", file=sys.stderr)
                    return
                raise
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # The broker bounds each viewer's kernel buffer the same way: same load, same limit.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
            self._handlers[sock.fileno()] = HttpConnection(self, sock)
            self._poller.register(sock.fileno(), _IN)


def main(argv: list[str] | None = None) -> None:
    """Command line: run the relay until SIGTERM or Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m bench.ideal", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9000, help="TCP port (default 9000, 0 = any free)")
    parser.add_argument(
        "--sndbuf",
        type=int,
        default=131072,
        help="SO_SNDBUF of each connection (default 131072, as the broker)",
    )
    args = parser.parse_args(argv)
    try:
        relay = Relay(args.host, args.port, args.sndbuf)
    except OSError as exc:
        parser.exit(1, f"ideal relay: cannot listen on {args.host}:{args.port}: {exc}\n")
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stop.append(signum))
    print(f"ideal relay: listening on http://{args.host}:{relay.port}", file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        relay.serve(lambda: not stop)


if __name__ == "__main__":
    main()
