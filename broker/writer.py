"""One viewer's socket: shared frame bytes go straight out while it keeps up; the newest waits otherwise."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable

from aiohttp.abc import AbstractStreamWriter

from .frame import Frame

__all__ = ["FrameWriter"]

log = logging.getLogger(__name__)


class FrameWriter:
    """Writes prebuilt frame bytes to one viewer's transport; newest frame wins while it is busy.

    `offer()` is synchronous and never awaits: a channel calls it for every viewer
    when a frame arrives. A viewer whose socket took the previous frame completely
    gets the new one written at once, with no task switch. Otherwise the frame is
    parked in a one-frame slot (a newer frame replaces it) and a flush task waits
    for the socket to drain. So a viewer holds at most one unsent frame beyond the
    kernel's send buffer, and one that accepts nothing for `send_timeout` seconds
    is aborted. Text messages (state changes) have a slot of their own and go first.
    """

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
        is_open: Callable[[], bool] | None = None,
    ) -> None:
        self.kind = kind
        self.peer = peer
        self._transport = transport
        self._stream = stream
        self._encode = encode
        self._send_timeout = send_timeout
        self._min_interval = min_interval
        # The protocol layer above may close the stream (a WebSocket close frame) before
        # the transport closes; nothing may be written after that.
        self._is_open = is_open
        self._pending: Frame | None = None
        self._pending_text: bytes | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._last_write = float("-inf")
        self._closed = asyncio.get_running_loop().create_future()
        self.frames_written = 0
        self.frames_skipped = 0
        # Pause the protocol as soon as anything is left unsent, and resume only when
        # all of it has gone to the kernel: the drain wait then means "ready for the next frame".
        transport.set_write_buffer_limits(high=0, low=0)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            except OSError as exc:
                log.warning("could not set SO_SNDBUF=%d for viewer %s: %s", sndbuf, peer, exc)

    @property
    def last_write_mono(self) -> float:
        """Monotonic time of the last frame written (-inf before the first)."""
        return self._last_write

    @property
    def closed(self) -> bool:
        """True once the writer stopped (closed, aborted, or its connection went away)."""
        return self._closed.done()

    async def wait_closed(self) -> None:
        """Wait until the writer stops."""
        await asyncio.shield(self._closed)

    def offer(self, frame: Frame) -> None:
        """Send `frame` now if the socket has room, else keep it as the newest pending frame."""
        if self._closed.done():
            return
        if self._flusher is not None:
            if self._pending is not None:
                self.frames_skipped += 1
            self._pending = frame
            return
        if self._ready():
            self._write(self._encode(frame))
            self._mark_written()
        else:
            self._pending = frame
            self._start_flush()

    def offer_text(self, message: bytes) -> None:
        """Send a prebuilt text message; while busy only the newest one is kept."""
        if self._closed.done():
            return
        if self._flusher is None and self._ready(ignore_rate=True):
            self._write(message)
        else:
            self._pending_text = message
            self._start_flush()

    def close(self) -> None:
        """Stop writing; bytes already handed to the transport still go out."""
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        self._pending = None
        self._pending_text = None
        if not self._closed.done():
            self._closed.set_result(None)

    def abort(self, reason: str) -> None:
        """Drop the connection at once (a stalled peer would never let a clean close finish)."""
        log.warning("viewer %s (%s) disconnected: %s", self.peer, self.kind, reason)
        self.close()
        self._transport.abort()

    # -- internals -----------------------------------------------------------------

    def _ready(self, ignore_rate: bool = False) -> bool:
        if self._transport.get_write_buffer_size() > 0:
            return False
        return ignore_rate or time.monotonic() - self._last_write >= self._min_interval

    def _write(self, data: bytes) -> None:
        if self._transport.is_closing() or (self._is_open is not None and not self._is_open()):
            self.close()
            return
        self._transport.write(data)

    def _mark_written(self) -> None:
        self._last_write = time.monotonic()
        self.frames_written += 1

    def _start_flush(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while (self._pending is not None or self._pending_text is not None) and not self.closed:
                await self._wait_ready()
                if self._transport.is_closing():
                    break
                text, self._pending_text = self._pending_text, None
                if text is not None:
                    self._write(text)
                frame = self._pending
                if frame is not None and self._rate_allows():
                    self._pending = None
                    self._write(self._encode(frame))
                    self._mark_written()
        except TimeoutError:
            self._flusher = None
            self.abort(f"its socket accepted nothing for {self._send_timeout:g} s")
            return
        except ConnectionError:
            # The peer went away while we waited for the drain; close below, as for is_closing().
            pass
        self._flusher = None
        if self._transport.is_closing():
            self.close()

    async def _wait_ready(self) -> None:
        async with asyncio.timeout(self._send_timeout):
            while self._transport.get_write_buffer_size() > 0 and not self._transport.is_closing():
                # aiohttp shares one drain future per connection: shield it so a timeout
                # here does not cancel it under another waiter.
                await asyncio.shield(self._stream.drain())
                if self._transport.get_write_buffer_size() > 0:
                    # Not paused yet still buffered: only between a write and the
                    # transport's pause check; don't spin.
                    await asyncio.sleep(0.005)
        delay = self._min_interval - (time.monotonic() - self._last_write)
        if delay > 0 and self._pending is not None:
            await asyncio.sleep(delay)

    def _rate_allows(self) -> bool:
        return time.monotonic() - self._last_write >= self._min_interval - 1e-3
