"""One viewer socket carrying many cameras (GET /ws): a one-frame slot per subscription, drained in turn."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING

from aiohttp.abc import AbstractStreamWriter

from .frame import STREAM_HEADER, Frame
from .writer import SocketWriter

if TYPE_CHECKING:
    from .channel import Channel
    from .variants import Variant

__all__ = ["MuxWriter", "Subscription"]


class Subscription:
    """One camera watched over a /ws socket: the channel's viewer, with its own slot in the writer."""

    __slots__ = (
        "active",
        "camera",
        "connected_at",
        "frames_skipped",
        "frames_written",
        "full_size_header",
        "header",
        "last_seq",
        "peer",
        "pending",
        "pending_status",
        "queued",
        "stream",
        "variant",
        "writer",
    )

    kind = "ws"  # counted with the per-camera WebSocket viewers
    needs_tick = False

    def __init__(self, writer: MuxWriter, camera: str, variant: Variant | None, stream: int) -> None:
        self.writer = writer
        self.camera = camera
        self.variant = variant
        self.stream = stream
        self.header = STREAM_HEADER.pack(
            stream, variant.width if variant else 0, variant.quality if variant else 0
        )
        # For frames of a smaller size's feed that are full size (the camera is no wider).
        self.full_size_header = STREAM_HEADER.pack(stream, 0, 0)
        self.peer = writer.peer
        self.connected_at = time.time()
        self.frames_written = 0
        self.frames_skipped = 0
        self.last_seq = 0
        # Kept by the writer: the newest unsent frame and state message, and whether
        # this subscription waits in the writer's queue.
        self.pending: Frame | None = None
        self.pending_status: bytes | None = None
        self.queued = False
        self.active = True

    def header_of(self, frame: Frame) -> bytes:
        """The stream header of `frame`: its width and quality are those of the size it is."""
        return self.header if frame.variant is not None else self.full_size_header

    def offer(self, frame: Frame, now: float) -> None:
        """Sent now if the socket has room, else kept as this subscription's newest frame."""
        self.writer.offer(self, frame, now)

    def picture(self, channel: Channel) -> Frame | None:
        """The newest frame at this subscription's size."""
        return channel.newest(self.variant)

    def joined(self, channel: Channel) -> None:
        """The camera's state first, as on the camera's own socket."""
        self.writer.status(self, channel.status_message)

    def status_changed(self, channel: Channel) -> None:
        """Online and offline arrive as JSON naming the camera."""
        self.writer.status(self, channel.status_message)

    def tick(self, channel: Channel, now: float, interval: float) -> None:
        """Nothing to repeat."""


class MuxWriter(SocketWriter):
    """Writes a /ws socket's frames, state messages and replies; the newest frame wins per subscription.

    While the socket keeps up, a frame goes out at once, as with FrameWriter. Otherwise
    each subscription keeps its newest frame and state message in its own slot, and
    the subscriptions that have something wait in a queue, taken in turn as the socket
    drains: a busy camera never starves a quiet one, and the socket holds at most one
    unsent frame per subscription beyond the kernel's buffer. Replies to the client's
    requests go first, in order.
    """

    __slots__ = ("_ready", "_replies", "_replies_sent")

    def __init__(
        self,
        transport: asyncio.Transport,
        stream: AbstractStreamWriter,
        *,
        peer: str,
        send_timeout: float,
        sndbuf: int,
    ) -> None:
        self._ready: deque[Subscription] = deque()
        self._replies: deque[bytes] = deque()
        self._replies_sent: asyncio.Future[None] | None = None
        super().__init__(transport, stream, kind="ws", peer=peer, send_timeout=send_timeout, sndbuf=sndbuf)

    def offer(self, subscription: Subscription, frame: Frame, now: float) -> None:
        """Send `frame` now if the socket has room, else keep it as the subscription's newest."""
        if self._may_send_now():
            self._send(frame.stream_message(subscription.header_of(frame)))
            subscription.frames_written += 1
            subscription.last_seq = frame.seq
            return
        if not self._open or not subscription.active:
            return
        if subscription.pending is not None:
            subscription.frames_skipped += 1
        subscription.pending = frame
        self._queue(subscription)

    def status(self, subscription: Subscription, message: bytes) -> None:
        """Send a prebuilt state message for the subscription; while busy only its newest is kept."""
        if self._open and subscription.active and not self._write_if_idle(message):
            subscription.pending_status = message
            self._queue(subscription)

    def reply(self, message: bytes) -> None:
        """Send a prebuilt answer to one of the client's requests; answers keep their order."""
        if self._open and not self._write_if_idle(message):
            self._replies.append(message)
            self._start_flush()

    def cancel(self, subscription: Subscription) -> None:
        """The subscription ended: nothing more of it is written."""
        subscription.active = False
        subscription.pending = None
        subscription.pending_status = None

    @property
    def replies_waiting(self) -> int:
        """Answers not yet handed to the socket."""
        return len(self._replies)

    async def replies_sent(self) -> None:
        """Wait until every answer has been handed to the socket (or the writer stopped)."""
        if not self._replies or not self._open:
            return
        if self._replies_sent is None:
            self._replies_sent = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._replies_sent)

    # -- internals -------------------------------------------------------------------

    def _queue(self, subscription: Subscription) -> None:
        if not subscription.queued:
            subscription.queued = True
            self._ready.append(subscription)
        self._start_flush()

    def _has_pending(self) -> bool:
        return bool(self._replies or self._ready)

    def _write_next(self) -> None:
        if self._replies:
            self._write(b"".join(self._replies))
            self._replies.clear()
            self._wake_reply_waiters()
        while self._ready:
            subscription = self._ready.popleft()
            subscription.queued = False
            if not subscription.active:
                continue
            status, subscription.pending_status = subscription.pending_status, None
            frame, subscription.pending = subscription.pending, None
            if status is not None:
                self._write(status)
            if frame is not None:
                self._write(frame.stream_message(subscription.header_of(frame)))
                subscription.frames_written += 1
                subscription.last_seq = frame.seq
            return

    def _drop_pending(self) -> None:
        for subscription in self._ready:
            subscription.queued = False
            subscription.pending = None
            subscription.pending_status = None
        self._ready.clear()
        self._replies.clear()
        self._wake_reply_waiters()

    def _wake_reply_waiters(self) -> None:
        waiters, self._replies_sent = self._replies_sent, None
        if waiters is not None and not waiters.done():
            waiters.set_result(None)
