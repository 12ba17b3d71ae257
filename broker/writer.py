"""A viewer's socket: shared frame bytes go straight out while it keeps up; the newest waits otherwise."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp.abc import AbstractStreamWriter

from .frame import Frame

if TYPE_CHECKING:
    from .channel import Channel
    from .variants import Variant

__all__ = ["FrameWriter", "SocketWriter"]

log = logging.getLogger(__name__)

_monotonic = time.monotonic


class SocketWriter:
    """What every viewer socket shares: our own descriptor to send() on, drain waits, the send timeout.

    Subclasses keep what waits to be written and say what goes next; `_flush()` writes it
    each time the socket has taken everything before, and aborts a socket that accepts
    nothing for `send_timeout` seconds.
    """

    __slots__ = (
        "_closed",
        "_flusher",
        "_open",
        "_send_timeout",
        "_sock",
        "_stream",
        "_transport",
        "connected_at",
        "kind",
        "peer",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        stream: AbstractStreamWriter,
        *,
        kind: str,
        peer: str,
        send_timeout: float,
        sndbuf: int,
    ) -> None:
        self.kind = kind
        self.peer = peer
        self._transport = transport
        self._stream = stream
        self._send_timeout = send_timeout
        self._open = True
        self._flusher: asyncio.Task[None] | None = None
        self._closed = asyncio.get_running_loop().create_future()
        self.connected_at = time.time()
        # Pause the protocol as soon as anything is left unsent, and resume only when
        # all of it has gone to the kernel: the drain wait then means "ready for the next frame".
        transport.set_write_buffer_limits(high=0, low=0)
        self._sock = _own_socket(transport, sndbuf, peer)

    @property
    def closed(self) -> bool:
        """True once the writer stopped (closed, aborted, or its connection went away)."""
        return not self._open

    async def wait_closed(self) -> None:
        """Wait until the writer stops."""
        await asyncio.shield(self._closed)

    def close(self) -> None:
        """Stop writing; bytes already handed to the transport still go out."""
        self._open = False
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        self._drop_pending()
        if not self._closed.done():
            self._closed.set_result(None)

    def abort(self, reason: str) -> None:
        """Drop the connection at once (a stalled peer would never let a clean close finish)."""
        log.warning(
            "viewer %s (%s) disconnected: %s", self.peer, self.kind, reason, extra={"peer": self.peer}
        )
        self.close()
        self._transport.abort()

    # -- what subclasses provide ---------------------------------------------------

    def _has_pending(self) -> bool:
        raise NotImplementedError

    def _write_next(self) -> None:
        """Write what comes next; called when the socket has taken everything before."""
        raise NotImplementedError

    def _drop_pending(self) -> None:
        raise NotImplementedError

    # -- internals -----------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        """Write `data` now; only when nothing waits and the transport's buffer is empty.

        send() on our own descriptor of the socket costs less than the transport's
        write() path; whatever the kernel does not take goes to the (empty) transport
        buffer, so the byte order is kept.
        """
        sock = self._sock
        if sock is None:
            self._transport.write(data)
            return
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            # The peer is gone; the transport sees it too and the handler ends.
            self.close()
            return
        if sent < len(data):
            self._transport.write(memoryview(data)[sent:])

    def _may_send_now(self) -> bool:
        """Nothing waits and the socket took everything before: `_send()` may write at once."""
        transport = self._transport
        return (
            self._flusher is None
            and self._open
            and not transport.get_write_buffer_size()
            and not transport.is_closing()
        )

    def _write_if_idle(self, message: bytes) -> bool:
        """Write `message` at once if nothing waits before it; False if it has to wait its turn."""
        if self._flusher is None and not self._transport.get_write_buffer_size():
            self._write(message)
            return True
        return False

    def _write(self, data: bytes) -> None:
        if self._transport.is_closing():
            self.close()
            return
        self._transport.write(data)

    def _start_flush(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self._has_pending() and self._open:
                await self._wait_ready()
                if self._transport.is_closing():
                    break
                self._write_next()
        except TimeoutError:
            self._flusher = None
            self.abort(f"its socket accepted nothing for {self._send_timeout:g} s")
            return
        except ConnectionError:
            # The peer went away while we waited for the drain; close below, as for is_closing().
            pass
        except Exception as exc:
            # Anything else would leave this viewer connected but frozen, kept alive by
            # heartbeats: drop it, and keep the traceback for debugging.
            self._flusher = None
            log.debug("viewer %s (%s): writing failed", self.peer, self.kind, exc_info=True)
            self.abort(f"writing failed: {type(exc).__name__}: {exc}")
            return
        self._flusher = None
        if self._transport.is_closing():
            self.close()

    async def _wait_ready(self) -> None:
        async with asyncio.timeout(self._send_timeout):
            while self._transport.get_write_buffer_size() > 0 and not self._transport.is_closing():
                # aiohttp shares one drain future per connection: shield it so a timeout
                # here does not cancel it under another waiter. If this wait is cancelled
                # (shutdown, timeout), the drain may still fail later, when the peer resets:
                # its outcome is collected, not left for asyncio to report as an error.
                drain = asyncio.ensure_future(self._stream.drain())
                drain.add_done_callback(_collect)
                await asyncio.shield(drain)
                if self._transport.get_write_buffer_size() > 0:
                    # Not paused yet still buffered: only between a write and the
                    # transport's pause check; don't spin.
                    await asyncio.sleep(0.005)


class FrameWriter(SocketWriter):
    """Writes prebuilt frame bytes to one viewer's transport; newest frame wins while it is busy.

    `offer()` is synchronous and never awaits: a channel calls it for every viewer
    when a frame arrives. A viewer whose socket took the previous frame completely
    gets the new one written at once, with no task switch. Otherwise the frame is
    parked in a one-frame slot (a newer frame replaces it) and a flush task waits
    for the socket to drain. So a viewer holds at most one unsent frame beyond the
    kernel's send buffer, and one that accepts nothing for `send_timeout` seconds
    is aborted. Text messages (state changes) have a slot of their own and go first.
    """

    # offer() runs once per viewer per frame: slots keep the state it touches compact.
    __slots__ = (
        "_encode",
        "_last_write",
        "_min_interval",
        "_pending",
        "_pending_text",
        "frames_skipped",
        "frames_written",
        "last_seq",
        "variant",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        stream: AbstractStreamWriter,
        encode: Callable[[Frame], bytes],
        *,
        kind: str,
        peer: str,
        send_timeout: float,
        sndbuf: int,
        min_interval: float = 0.0,
        variant: Variant | None = None,
    ) -> None:
        self._encode = encode
        self._min_interval = min_interval
        self._pending: Frame | None = None
        self._pending_text: bytes | None = None
        self._last_write = float("-inf")
        self.variant = variant
        self.frames_written = 0
        self.frames_skipped = 0
        self.last_seq = 0  # sequence number of the last frame written: lag = newest - this
        super().__init__(transport, stream, kind=kind, peer=peer, send_timeout=send_timeout, sndbuf=sndbuf)

    # -- what the channel asks of a viewer (broker.channel.Viewer); subclasses differ here

    needs_tick = False

    def picture(self, channel: Channel) -> Frame | None:
        """The newest frame at this viewer's size: what it shows unless it says otherwise."""
        return channel.newest(self.variant)

    def joined(self, channel: Channel) -> None:
        """Nothing precedes the first picture."""

    def status_changed(self, channel: Channel) -> None:
        """State changes show in the pictures themselves."""

    def tick(self, channel: Channel, now: float, interval: float) -> None:
        """Nothing to repeat."""

    @property
    def last_write_mono(self) -> float:
        """Monotonic time of the last frame written (-inf before the first)."""
        return self._last_write

    def offer(self, frame: Frame, now: float) -> None:
        """Send `frame` now if the socket has room, else keep it as the newest pending frame.

        `now` is the monotonic time, read once by the caller for all its viewers.
        """
        transport = self._transport
        if (
            self._flusher is None
            and self._open
            and not transport.get_write_buffer_size()
            and not transport.is_closing()
            and (not self._min_interval or self._rate_allows(now))
        ):
            # The hot path: one call per viewer per frame.
            self._send(self._encode(frame))
            self._last_write = now
            self.frames_written += 1
            self.last_seq = frame.seq
            return
        if not self._open:
            return
        if self._pending is not None:
            self.frames_skipped += 1
        self._pending = frame
        self._start_flush()

    def offer_text(self, message: bytes) -> None:
        """Send a prebuilt text message; while busy only the newest one is kept."""
        if self._open and not self._write_if_idle(message):
            self._pending_text = message
            self._start_flush()

    # -- internals -----------------------------------------------------------------

    def _has_pending(self) -> bool:
        return self._pending is not None or self._pending_text is not None

    def _drop_pending(self) -> None:
        self._pending = None
        self._pending_text = None

    def _write_next(self) -> None:
        text, self._pending_text = self._pending_text, None
        if text is not None:
            self._write(text)
        frame = self._pending
        now = _monotonic()
        if frame is not None and self._rate_allows(now):
            self._pending = None
            self._write(self._encode(frame))
            self._last_write = now
            self.frames_written += 1
            self.last_seq = frame.seq

    async def _wait_ready(self) -> None:
        await super()._wait_ready()
        delay = self._min_interval - (_monotonic() - self._last_write)
        if delay > 0 and self._pending is not None:
            await asyncio.sleep(delay)

    def _rate_allows(self, now: float) -> bool:
        return now - self._last_write >= self._min_interval - 1e-3


def _collect(task: asyncio.Future[None]) -> None:
    """Retrieve a drain's outcome: a connection that went away is the handler's business."""
    if not task.cancelled():
        task.exception()


def _own_socket(transport: asyncio.Transport, sndbuf: int, peer: str) -> socket.socket | None:
    """Size the viewer's send buffer; return our own non-blocking descriptor of its socket.

    Frames are sent through that descriptor (see FrameWriter.offer). It is None when
    the transport exposes no socket, when no descriptor is left, or when the transport
    transforms the bytes (TLS, whoever set it up: the broker, gunicorn, another server);
    frames then go through the transport.
    """
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    except OSError as exc:
        log.warning("could not set SO_SNDBUF=%d for viewer %s: %s", sndbuf, peer, exc, extra={"peer": peer})
    if any(transport.get_extra_info(name) is not None for name in ("sslcontext", "ssl_object")):
        # A TLS transport (asyncio's or uvloop's) still reports the TCP socket underneath:
        # bytes sent there would skip the encryption and break the stream.
        return None
    try:
        own = sock.dup()
    except OSError as exc:
        log.warning(
            "viewer %s: sending through the transport (no socket of our own: %s)",
            peer,
            exc,
            extra={"peer": peer},
        )
        return None
    own.setblocking(False)
    return own
