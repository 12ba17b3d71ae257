"""Viewers over all nodes: each node writes its own counts, the camera's holder adds them up.

Each count is written with an expiry (Redis' own clock) that the node renews every tick,
so the counts of a node that died stop counting within `--node-ttl`. The holder tells its
publisher the total, so an agent capturing on demand starts when the only viewer is on
another node.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from ..channel import Publisher
from .keys import Keys, Script
from .link import RedisLink

__all__ = ["ClusterPublisher", "Demand"]

# KEYS: demand hashes; ARGV: node, ttl ms, one count per key. Write this node's counts
# (0 deletes), each with an expiry; the hash itself lives as long as its newest count.
WRITE = """
local now = redis.call('TIME')
local expires = now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  local count = tonumber(ARGV[i + 2])
  if count > 0 then
    redis.call('HSET', key, ARGV[1], count .. ' ' .. expires)
    redis.call('PEXPIRE', key, ARGV[2])
  else
    redis.call('HDEL', key, ARGV[1])
  end
end
return 0
"""

# KEYS: demand hashes; ARGV: node. For each camera, the viewers of every other node whose
# count has not expired (expired ones are removed).
TOTALS = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local out = {}
for i, key in ipairs(KEYS) do
  local sum = 0
  local entries = redis.call('HGETALL', key)
  for j = 1, #entries, 2 do
    local count, expires = string.match(entries[j + 1], '(%d+) (%d+)')
    if not expires or tonumber(expires) <= ms then
      redis.call('HDEL', key, entries[j])
    elseif entries[j] ~= ARGV[1] then
      sum = sum + tonumber(count)
    end
  end
  out[i] = sum
end
return out
"""


class ClusterPublisher:
    """This node's publisher as its channel sees it: told the viewers of every node, not just ours."""

    def __init__(self, session: Publisher, camera: str, on_local: Callable[[str, int], None]) -> None:
        self.session = session
        self.peer = session.peer
        self._camera = camera
        self._on_local = on_local
        self.local = 0
        self.remote = 0
        self._local_snapshot_only = False
        self._told: tuple[bool, bool] | None = None

    def viewers_changed(self, count: int, snapshot_only: bool = False) -> None:
        """This node's viewers changed (`snapshot_only`: only snapshots count here)."""
        self.local = count
        self._local_snapshot_only = snapshot_only
        self._on_local(self._camera, count)
        self._tell()

    def replaced(self) -> None:
        """A publisher on this node or another took over."""
        self.session.replaced()

    def remote_changed(self, count: int) -> None:
        """Other nodes' viewers, as last counted."""
        self.remote = count
        self._tell()

    def _tell(self) -> None:
        # As on a single broker, the publisher hears of changes between none and some, and
        # of whether only snapshots (of this node: other nodes' kinds are not known) remain.
        total = self.local + self.remote
        snapshot_only = total > 0 and self.remote == 0 and self._local_snapshot_only
        if self._told != (total > 0, snapshot_only):
            self._told = (total > 0, snapshot_only)
            self.session.viewers_changed(total, snapshot_only)


class Demand:
    """This node's counts in Redis, and the totals of the cameras it holds."""

    def __init__(
        self,
        link: RedisLink,
        keys: Keys,
        node: str,
        ttl: float,
        announce: Callable[[dict[str, object]], None],
    ) -> None:
        self._link = link
        self._keys = keys
        self._node = node
        self._ttl_ms = max(1, int(ttl * 1000))
        self._announce = announce
        self._write = Script(link.client, WRITE)
        self._totals = Script(link.client, TOTALS)
        self.scripts = [self._write, self._totals]
        self.local: dict[str, int] = {}  # this node's viewers per camera, as last written
        self._dirty: set[str] = set()
        self._flushing: asyncio.Task[None] | None = None

    def changed(self, camera: str, count: int) -> None:
        """This node's viewers of `camera` changed between none and some: tell the holder soon."""
        if count:
            self.local[camera] = count
        else:
            self.local.pop(camera, None)
        self._dirty.add(camera)
        if self._link.up and self._flushing is None:
            self._flushing = asyncio.ensure_future(self._flush())

    async def write(self, counts: dict[str, int]) -> None:
        """Write these counts of this node (refreshing their expiry)."""
        if counts:
            keys = [self._keys.demand(camera) for camera in counts]
            await self._write(keys, [self._node, self._ttl_ms, *counts.values()])

    async def totals(self, cameras: Iterable[str]) -> dict[str, int]:
        """Viewers of other nodes for each camera."""
        cameras = list(cameras)
        if not cameras:
            return {}
        sums = await self._totals([self._keys.demand(camera) for camera in cameras], [self._node])
        return dict(zip(cameras, (int(n) for n in sums), strict=True))

    async def renew(self, counts: dict[str, int]) -> None:
        """Write every count of this node again (each tick, and after reconnecting)."""
        self._dirty.clear()
        await self.write(counts)

    async def _flush(self) -> None:
        try:
            while self._dirty and self._link.up:
                dirty, self._dirty = self._dirty, set()
                await self.write({camera: self.local.get(camera, 0) for camera in dirty})
                for camera in dirty:
                    self._announce({"t": "demand", "c": camera})
        except Exception as exc:
            self._link.broken("writing viewer counts", exc)
        finally:
            self._flushing = None
