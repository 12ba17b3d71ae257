"""Viewers over all nodes: each node writes its own counts, the camera's holder adds them up.

Each count is written with an expiry (Redis' own clock) that the node renews every tick,
so the counts of a node that died stop counting within `--node-ttl`. The holder tells its
publisher the total, so an agent capturing on demand starts when the only viewer is on
another node. A count made up of a snapshot's grace alone says so, and the holder tells its
publisher when every node's demand is such: the agent then pauses as soon as the grace ends,
wherever the snapshots were taken.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import NamedTuple

from ..channel import Publisher
from .keys import Keys, Script
from .link import RedisLink

__all__ = ["NO_DEMAND", "ClusterPublisher", "Count", "Demand"]

# KEYS: demand hashes; ARGV: node, ttl ms, then per key a count and 1 if snapshots alone
# make it up. Write this node's counts (0 deletes) as "count expiry_ms", followed by
# " snapshots" for a snapshot's grace alone, each with an expiry; the hash itself lives as
# long as its newest count.
WRITE = """
local now = redis.call('TIME')
local expires = now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  local count = tonumber(ARGV[2 * i + 1])
  if count > 0 then
    local kind = ARGV[2 * i + 2] == '1' and ' snapshots' or ''
    redis.call('HSET', key, ARGV[1], count .. ' ' .. expires .. kind)
    redis.call('PEXPIRE', key, ARGV[2])
  else
    redis.call('HDEL', key, ARGV[1])
  end
end
return 0
"""

# KEYS: demand hashes; ARGV: node. For each camera, {the viewers of every other node whose
# count has not expired, 1 if any of those counts is not a snapshot's alone} (expired counts
# are removed). A count without the word is a live viewer's: that is the safe reading.
TOTALS = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local out = {}
for i, key in ipairs(KEYS) do
  local sum, live = 0, 0
  local entries = redis.call('HGETALL', key)
  for j = 1, #entries, 2 do
    local count, expires, kind = string.match(entries[j + 1], '^(%d+) (%d+) ?(%a*)')
    if not expires or tonumber(expires) <= ms then
      redis.call('HDEL', key, entries[j])
    elseif entries[j] ~= ARGV[1] then
      sum = sum + tonumber(count)
      if kind ~= 'snapshots' then live = 1 end
    end
  end
  out[i] = {sum, live}
end
return out
"""


class Count(NamedTuple):
    """One node's demand for a camera, or the sum of other nodes'."""

    viewers: int
    snapshot_only: bool  # a snapshot's grace alone makes it up (on every node counted)

    @property
    def live(self) -> bool:
        """Some of it is a viewer, not a snapshot's grace."""
        return self.viewers > 0 and not self.snapshot_only


NO_DEMAND = Count(0, False)


class ClusterPublisher:
    """This node's publisher as its channel sees it: told the viewers of every node, not just ours."""

    def __init__(self, session: Publisher, camera: str, on_local: Callable[[str, Count], None]) -> None:
        self.session = session
        self.peer = session.peer
        self._camera = camera
        self._on_local = on_local
        self.local = NO_DEMAND
        self.remote = NO_DEMAND  # other nodes' demand, as last counted
        self._told: tuple[bool, bool] | None = None

    def viewers_changed(self, count: int, snapshot_only: bool = False) -> None:
        """This node's viewers changed (`snapshot_only`: only snapshots count here)."""
        self.local = Count(count, snapshot_only)
        self._on_local(self._camera, self.local)
        self._tell()

    def replaced(self) -> None:
        """A publisher on this node or another took over."""
        self.session.replaced()

    def remote_changed(self, remote: Count) -> None:
        """Other nodes' demand, as last counted."""
        self.remote = remote
        self._tell()

    def _tell(self) -> None:
        # As on a single broker, the publisher hears of changes between none and some, and
        # of whether only snapshots remain (on every node: a live viewer anywhere keeps the
        # agent's own idle grace after it).
        total = self.local.viewers + self.remote.viewers
        snapshot_only = total > 0 and not self.local.live and not self.remote.live
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
        self.local: dict[str, Count] = {}  # this node's demand per camera, as last written
        self._dirty: set[str] = set()
        self._flushing: asyncio.Task[None] | None = None

    def changed(self, camera: str, count: Count) -> None:
        """This node's demand for `camera` changed between none and some, or between a snapshot's
        grace alone and live viewers: tell the holder soon."""
        if count.viewers:
            self.local[camera] = count
        else:
            self.local.pop(camera, None)
        self._dirty.add(camera)
        if self._link.up and self._flushing is None:
            self._flushing = asyncio.ensure_future(self._flush())

    async def write(self, counts: dict[str, Count]) -> None:
        """Write these counts of this node (refreshing their expiry)."""
        if counts:
            keys = [self._keys.demand(camera) for camera in counts]
            fields = [int(part) for count in counts.values() for part in count]
            await self._write(keys, [self._node, self._ttl_ms, *fields])

    async def totals(self, cameras: Iterable[str]) -> dict[str, Count]:
        """Demand of the other nodes for each camera."""
        cameras = list(cameras)
        if not cameras:
            return {}
        sums = await self._totals([self._keys.demand(camera) for camera in cameras], [self._node])
        return {
            camera: Count(int(viewers), int(viewers) > 0 and not int(live))
            for camera, (viewers, live) in zip(cameras, sums, strict=True)
        }

    async def renew(self, counts: dict[str, Count]) -> None:
        """Write every count of this node again (each tick, and after reconnecting)."""
        self._dirty.clear()
        await self.write(counts)

    async def _flush(self) -> None:
        try:
            while self._dirty and self._link.up:
                dirty, self._dirty = self._dirty, set()
                await self.write({camera: self.local.get(camera, NO_DEMAND) for camera in dirty})
                for camera in dirty:
                    self._announce({"t": "demand", "c": camera})
        except Exception as exc:
            self._link.broken("writing viewer counts", exc)
        finally:
            self._flushing = None
