"""Frames out: each frame of this node's publishers to Redis, newest wins, never blocking ingest."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..frame import Frame
from . import framewire
from .keys import Keys, Script
from .link import RedisLink

__all__ = ["FrameRelay"]

# One round trip, the payload sent once: only the camera's current holder may publish
# (a publisher taken over elsewhere is fenced off), the message becomes the latest-frame
# key and goes to the camera's channel. KEYS: owner, latest, seq; ARGV: message, holder,
# ttl ms, channel, seq. Returns the number of nodes that got it, or -1 when not the holder.
PUBLISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[2] then return -1 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
if tonumber(redis.call('GET', KEYS[3]) or '0') < tonumber(ARGV[5]) then
  redis.call('SET', KEYS[3], ARGV[5], 'PX', ARGV[3])
else
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
end
return redis.call('PUBLISH', ARGV[4], ARGV[1])
"""


class FrameRelay:
    """Sends frames to Redis from a task of its own: at most one batch in flight, and while it
    is, at most one frame per camera waits (a newer one replaces it). During an outage
    frames are not kept at all."""

    def __init__(
        self, link: RedisLink, keys: Keys, node: str, ttl: float, refused: Callable[[str], None]
    ) -> None:
        self._link = link
        self._keys = keys
        self._node = node.encode()
        self._ttl_ms = max(1, int(ttl * 1000))
        self._refused = refused
        self.script = Script(link.client, PUBLISH)
        self._waiting: dict[str, tuple[Frame, str]] = {}
        self._sending: asyncio.Task[None] | None = None
        self.frames_sent = 0
        self.frames_replaced = 0

    def send(self, frame: Frame, holder: str) -> None:
        """Pass `frame` on to the other nodes soon, as camera holder `holder`. Never awaits."""
        if not self._link.up:
            return
        if self._waiting.get(frame.camera) is not None:
            self.frames_replaced += 1
        self._waiting[frame.camera] = (frame, holder)
        if self._sending is None:
            self._sending = asyncio.ensure_future(self._drain())

    def clear(self) -> None:
        """Drop whatever waits (the link went down)."""
        self._waiting.clear()

    async def _drain(self) -> None:
        try:
            while self._waiting and self._link.up:
                batch, self._waiting = self._waiting, {}
                pipe = self._link.client.pipeline(transaction=False)
                for camera, (frame, holder) in batch.items():
                    keys = self._keys
                    self.script.queue(
                        pipe,
                        [keys.owner(camera), keys.latest(camera), keys.seq(camera)],
                        [
                            framewire.encode(frame, self._node),
                            holder,
                            self._ttl_ms,
                            keys.frames(camera),
                            frame.seq,
                        ],
                    )
                results = await pipe.execute()
                self.frames_sent += len(batch)
                for camera, result in zip(batch, results, strict=True):
                    if result == -1:
                        self._refused(camera)
        except Exception as exc:
            self._waiting.clear()
            self._link.broken("publishing a frame", exc)
        finally:
            self._sending = None
