"""Frames and news in: one pub/sub connection per node, read so that it never falls behind.

The node subscribes to the control channel always, and to a camera's frames only while
it has viewers of a camera published on another node, or a snapshot waits for its next
frame. The reader keeps at most one frame per camera between passes of the event loop:
when frames arrive faster than this node can show them, it skips to the newest, so
nothing queues in the broker or in redis-py's reader. Redis bounds its side with
`client-output-buffer-limit pubsub` (README).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio.client import PubSub

from . import framewire
from .keys import Keys
from .link import RedisLink

__all__ = ["Subscriber"]

log = logging.getLogger("broker.cluster")

# Read this many buffered messages in a row at most before letting the loop run (and
# deliver the newest frames): a busy link must not starve this node's viewers.
READ_BURST = 16


class Subscriber:
    """The node's subscriptions, their reader, and delivery of the newest frame per camera."""

    def __init__(
        self,
        link: RedisLink,
        keys: Keys,
        on_frame: Callable[[framewire.FrameMessage], None],
        on_control: Callable[[dict[str, Any]], None],
    ) -> None:
        self._link = link
        self._keys = keys
        self._on_frame = on_frame
        self._on_control = on_control
        self._wanted: set[str] = set()
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[str, bytes] = {}
        self._delivery: asyncio.Handle | None = None
        self.frames_received = 0
        self.frames_skipped = 0  # replaced by a newer frame of the same camera before delivery

    def watching(self, camera: str) -> bool:
        """Whether this node receives the camera's frames now."""
        return camera in self._wanted and self._link.up

    def want(self, camera: str, wanted: bool) -> None:
        """Subscribe to the camera's frames, or stop."""
        if wanted == (camera in self._wanted):
            return
        if wanted:
            self._wanted.add(camera)
        else:
            self._wanted.discard(camera)
            self._pending.pop(camera, None)
        if self._pubsub is not None and self._link.up:
            self._link.spawn(self._change(self._pubsub, camera, wanted))

    async def start(self) -> None:
        """(Re)subscribe after the link came up, and start reading."""
        self.stop()
        pubsub = self._link.client.pubsub()
        await pubsub.subscribe(self._keys.control, *(self._keys.frames(c) for c in self._wanted))
        self._pubsub = pubsub
        self._reader = asyncio.ensure_future(self._read(pubsub))

    def stop(self) -> None:
        """Stop reading (the link went down); what was not delivered is dropped."""
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None
        if self._pubsub is not None:
            self._link.spawn(self._pubsub.aclose())
            self._pubsub = None
        self._pending.clear()

    async def _change(self, pubsub: PubSub, camera: str, wanted: bool) -> None:
        try:
            if wanted:
                await pubsub.subscribe(self._keys.frames(camera))
            else:
                await pubsub.unsubscribe(self._keys.frames(camera))
        except Exception as exc:
            self._link.broken(f"camera {camera}: {'subscribing' if wanted else 'unsubscribing'}", exc)

    async def _read(self, pubsub: PubSub) -> None:
        timeout = self._link.timeout
        heard = pinged = time.monotonic()
        burst = 0
        try:
            while True:
                message = await pubsub.get_message(timeout=timeout / 4)
                now = time.monotonic()
                if message is None:
                    burst = 0
                    # A frozen server keeps the socket open and says nothing: ask, and give up
                    # when nothing at all (not even the answer) came for two timeouts.
                    if now - heard > 2 * timeout:
                        raise TimeoutError(f"nothing from the pub/sub connection for {now - heard:.1f} s")
                    if now - pinged >= timeout:
                        pinged = now
                        await pubsub.ping()
                    continue
                heard = now
                if message["type"] == "message":
                    self._dispatch(message["channel"], message["data"])
                    burst += 1
                    if burst >= READ_BURST:
                        burst = 0
                        await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._link.broken("reading pub/sub messages", exc)

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        camera = self._keys.camera_of(channel)
        if camera is None:
            if channel == self._keys.control:
                self._control(data)
            return
        if camera not in self._wanted:
            return  # the unsubscribe is on its way
        self.frames_received += 1
        if camera in self._pending:
            self.frames_skipped += 1
        self._pending[camera] = data
        if self._delivery is None:
            self._delivery = asyncio.get_running_loop().call_soon(self._deliver)

    def _deliver(self) -> None:
        self._delivery = None
        pending, self._pending = self._pending, {}
        for camera, data in pending.items():
            try:
                message = framewire.decode(data)
                if message.camera != camera:
                    raise framewire.WireError(f"it is camera {message.camera!r}'s")
            except framewire.WireError as exc:
                log.warning(
                    "camera %s: ignoring a frame message from Redis: %s",
                    camera,
                    exc,
                    extra={"camera": camera},
                )
                continue
            self._on_frame(message)

    def _control(self, data: bytes) -> None:
        try:
            news = json.loads(data)
        except ValueError:
            news = None
        if not isinstance(news, dict) or not isinstance(news.get("t"), str):
            log.warning("ignoring a control message from Redis that is not a JSON object with a 't'")
            return
        self._on_control(news)
