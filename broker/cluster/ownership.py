"""One publisher per camera across the cluster: claims in Redis, and the other nodes' publishers.

A node that gets a publisher claims the camera (a key naming the node, with a TTL the
node refreshes); the claim tells it the camera's last sequence number, so numbers keep
rising across a takeover. Every node learns claims from control messages and from a
periodic read of all claims, and attaches a `RemotePublisher` to its channel of a
camera held elsewhere: the channel then closes its own publisher (4000), refuses POSTs
(409), lists the camera, and counts it online as it does for a local publisher. The
periodic read also names the cameras nobody holds that still have a frame in Redis, so a
node that never knew them can show them offline, as the nodes that remember them do.

The number outlives the claim and the frames: every node keeps it alive in Redis for each
camera it still remembers, as a single broker keeps counting while it remembers a camera.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from ..channel import Channel, Publisher
from ..hub import Hub, TooManyCameras
from ..lograte import LogLimiter
from .keys import Keys, Script
from .link import RedisLink

__all__ = ["Claim", "Ownership", "RemotePublisher"]

log = logging.getLogger("broker.cluster")

# KEYS: owner, seq, cameras; ARGV: holder, ttl ms, camera. Takes the camera over.
# Returns {previous holder, last sequence number}.
CLAIM = """
local previous = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
return {previous, redis.call('GET', KEYS[2])}
"""

# KEYS: owner, seq, cameras; ARGV: holder, ttl ms, camera, source. A POST may take a camera
# that nobody holds, or that POSTs from the same source hold (through any node); it gets
# the frame's sequence number. Returns {holder that refuses it, or false; sequence number;
# 1 if the camera was not already this holder's}.
CLAIM_POST = """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then
  local ok, owner = pcall(cjson.decode, current)
  if not ok or owner.kind ~= 'post' or owner.source ~= ARGV[4] then return {current, false, 0} end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
return {false, redis.call('INCR', KEYS[2]), current == ARGV[1] and 0 or 1}
"""

# KEYS: owner; ARGV: holder. Let go of a camera unless another publisher took it.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: owner, cameras, seq, agent; ARGV: holder, ttl ms, camera, agent JSON. Keep a claim
# alive (or make it again if it expired, or was made while Redis was away) with what the
# agent said of itself. Returns {the other holder that has it now, or false; the last
# sequence number}.
REFRESH = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
elseif not current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('SADD', KEYS[2], ARGV[3])
else
  return {current, false}
end
redis.call('SET', KEYS[4], ARGV[4], 'PX', ARGV[2])
return {false, redis.call('GET', KEYS[3])}
"""

# KEYS: seq of each camera this node remembers; ARGV: ttl ms, then each camera's last
# sequence number here. A number never goes back (not after it expired, nor after Redis
# restarted empty): each key rises to at least this node's, and lives at least ttl more.
REMEMBER = """
for i, key in ipairs(KEYS) do
  if tonumber(redis.call('GET', key) or '0') < tonumber(ARGV[i + 1]) then
    redis.call('SET', key, ARGV[i + 1], 'KEEPTTL')
  end
  if redis.call('PTTL', key) < tonumber(ARGV[1]) then redis.call('PEXPIRE', key, ARGV[1]) end
end
return 0
"""

# KEYS: cameras; ARGV: owner, latest and agent key prefixes. Every camera held or with a
# frame left: its holder (or "" when none) and its agent's hello (or ""); cameras with
# neither are dropped from the set.
HOLDERS = """
local out = {}
for _, camera in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local holder = redis.call('GET', ARGV[1] .. camera)
  if holder or redis.call('EXISTS', ARGV[2] .. camera) == 1 then
    table.insert(out, camera)
    table.insert(out, holder or '')
    table.insert(out, redis.call('GET', ARGV[3] .. camera) or '')
  else
    redis.call('SREM', KEYS[1], camera)
  end
end
return out
"""


def _agent(raw: bytes) -> dict[str, object]:
    """What the holder's agent said in its hello, as /api/cameras shows it."""
    try:
        agent = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return agent if isinstance(agent, dict) else {}


class RemotePublisher:
    """The publisher of a camera as seen on the nodes that do not hold it."""

    def __init__(self, holder: str, node: str, on_viewers: Callable[[int, bool], None]) -> None:
        self.holder = holder
        self.node = node
        self.peer = f"on node {node}"
        self._on_viewers = on_viewers

    def viewers_changed(self, count: int, snapshot_only: bool = False) -> None:
        """This node's viewers of the camera changed (the holder is told the total, snapshots included,
        and whether a snapshot's grace is all of it)."""
        self._on_viewers(count, snapshot_only)

    def replaced(self) -> None:
        """Another publisher took over: the node that held this one closes it."""


@dataclass
class Claim:
    """A camera this node holds: its holder value in Redis and the publisher the channel sees."""

    holder: str
    kind: str  # "ws" or "post"
    publisher: Publisher | None = None
    fields: dict[str, str] = field(default_factory=dict)


class Ownership:
    """Claims of this node, and the holders of all other cameras."""

    def __init__(
        self,
        link: RedisLink,
        keys: Keys,
        hub: Hub,
        node: str,
        ttl: float,
        *,
        remember: float,
        on_remote_viewers: Callable[[Channel, int, bool], None],
        on_holder_changed: Callable[[Channel], None],
        announce: Callable[[dict[str, object]], None],
    ) -> None:
        self._link = link
        self._keys = keys
        self._hub = hub
        self.node = node
        self._ttl_ms = max(1, int(ttl * 1000))
        # A remembered camera's number lives while this node may forget it (or dies) and then some.
        self._remember_ms = max(self._ttl_ms, int(remember * 1000))
        self._on_remote_viewers = on_remote_viewers
        self._on_holder_changed = on_holder_changed
        self._announce = announce
        self.claims: dict[str, Claim] = {}
        # Counts this node's claims: a holder read from Redis before one of them is out of date.
        self._claims_made = 0
        self.unheld: list[str] = []  # cameras nobody holds that have a frame left, as last read
        self._claim = Script(link.client, CLAIM)
        self._claim_post = Script(link.client, CLAIM_POST)
        self._release = Script(link.client, RELEASE)
        self._refresh = Script(link.client, REFRESH)
        self._holders = Script(link.client, HOLDERS)
        self._remember = Script(link.client, REMEMBER)
        self.scripts = [
            self._claim,
            self._claim_post,
            self._release,
            self._refresh,
            self._holders,
            self._remember,
        ]
        self._full_log = LogLimiter(log)

    def _holder(self, kind: str, **more: str) -> str:
        return json.dumps(
            {"node": self.node, "kind": kind, "id": secrets.token_hex(6), **more}, sort_keys=True
        )

    # -- this node's publishers --------------------------------------------------------

    async def claim(self, channel: Channel) -> Claim:
        """Take the camera for a WebSocket publisher of this node (locally only while Redis is down)."""
        claim = Claim(self._holder("ws"), "ws")
        self.claims[channel.camera] = claim
        self._claims_made += 1
        if self._link.up:
            keys = self._keys
            try:
                previous, seq = await self._claim(
                    [keys.owner(channel.camera), keys.seq(channel.camera), keys.cameras],
                    [claim.holder, self._ttl_ms, channel.camera],
                )
            except Exception as exc:
                self._link.broken(f"camera {channel.camera}: claiming it", exc)
            else:
                channel.last_seq = max(channel.last_seq, int(seq or 0))
                if previous != claim.holder.encode():
                    self._announce({"t": "holder", "c": channel.camera})
        return claim

    async def claim_post(self, channel: Channel, source: str) -> str | None:
        """Let a POST from `source` publish here; else a description of who holds the camera."""
        if not self._link.up:
            return None
        current = self.claims.get(channel.camera)
        claim = current if current is not None and current.kind == "post" else None
        claim = claim or Claim(self._holder("post", source=source), "post")
        keys = self._keys
        try:
            refused, seq, taken = await self._claim_post(
                [keys.owner(channel.camera), keys.seq(channel.camera), keys.cameras],
                [claim.holder, self._ttl_ms, channel.camera, source],
            )
        except Exception as exc:
            self._link.broken(f"camera {channel.camera}: claiming it for a POST", exc)
            return None
        if refused:
            try:
                holder = json.loads(refused)
                return f"a publisher on node {holder['node']}"
            except (ValueError, KeyError, TypeError):
                return "a publisher on another node"
        channel.last_seq = max(channel.last_seq, int(seq) - 1)
        self._claims_made += 1
        if isinstance(channel.publisher, RemotePublisher):
            channel.detach_publisher(channel.publisher)
        if taken:
            # Another publisher held it since this one last posted (or nobody did): tell the nodes.
            self._announce({"t": "holder", "c": channel.camera})
        if current is not claim or channel.relay is None:
            self.claims[channel.camera] = claim
            self._on_holder_changed(channel)
        return None

    def released(self, channel: Channel, claim: Claim) -> None:
        """The publisher of `claim` left: let the camera go (unless it was taken over already)."""
        if self.claims.get(channel.camera) is not claim:
            return
        del self.claims[channel.camera]
        self._on_holder_changed(channel)
        if self._link.up:
            self._link.spawn(self._let_go(channel.camera, claim.holder))

    async def _let_go(self, camera: str, holder: str) -> None:
        try:
            if await self._release([self._keys.owner(camera)], [holder]):
                self._announce({"t": "holder", "c": camera})
        except Exception as exc:
            self._link.broken(f"camera {camera}: releasing it", exc)

    def holds(self, camera: str) -> Claim | None:
        """This node's claim on the camera, if it has one."""
        return self.claims.get(camera)

    # -- all holders -------------------------------------------------------------------

    async def refresh(self) -> None:
        """Keep the numbers of the cameras this node remembers and its claims alive, then learn
        every holder (each tick, and on reconnect)."""
        keys = self._keys
        pipe = self._link.client.pipeline(transaction=False)
        remembered = [channel for channel in self._hub.cameras() if channel.last_seq]
        self._remember.queue(
            pipe,
            [keys.seq(channel.camera) for channel in remembered],
            [self._remember_ms, *(channel.last_seq for channel in remembered)],
        )
        mine = [(camera, claim) for camera, claim in self.claims.items() if claim.kind == "ws"]
        for camera, claim in mine:
            channel = self._hub.channel(camera)
            self._refresh.queue(
                pipe,
                [keys.owner(camera), keys.cameras, keys.seq(camera), keys.agent(camera)],
                [claim.holder, self._ttl_ms, camera, json.dumps(channel.agent if channel else {})],
            )
        self._holders.queue(pipe, [keys.cameras], [keys.owner_prefix, keys.latest_prefix, keys.agent_prefix])
        claims_made = self._claims_made
        _, *refreshed, holders = await pipe.execute()
        stale = self._claims_made != claims_made
        for (camera, claim), (other, seq) in zip(mine, refreshed, strict=True):
            if self.claims.get(camera) is not claim:
                continue
            if other:
                self._apply(camera, other.decode(), stale)
            elif (channel := self._hub.channel(camera)) is not None:
                # Numbers go on from the cluster's, also after frames published while Redis was away.
                channel.last_seq = max(channel.last_seq, int(seq or 0))
        held = set()
        self.unheld = []
        for camera_raw, holder, agent in zip(holders[::3], holders[1::3], holders[2::3], strict=True):
            camera = camera_raw.decode()
            if not holder:
                self.unheld.append(camera)
                continue
            held.add(camera)
            self._apply(camera, holder.decode(), stale)
            channel = self._hub.channel(camera)
            if channel is not None and isinstance(channel.publisher, RemotePublisher):
                channel.agent = _agent(agent)
        for channel in self._hub.cameras():
            if channel.camera not in held and isinstance(channel.publisher, RemotePublisher):
                self._gone(channel)

    async def check(self, camera: str) -> None:
        """Learn the camera's holder now (a control message said it changed)."""
        claims_made = self._claims_made
        holder = await self._link.client.get(self._keys.owner(camera))
        if holder is None:
            channel = self._hub.channel(camera)
            if channel is not None and isinstance(channel.publisher, RemotePublisher):
                self._gone(channel)
        else:
            self._apply(camera, holder.decode(), self._claims_made != claims_made)

    def _apply(self, camera: str, holder: str, stale: bool = False) -> None:
        """`holder` has the camera, as read from Redis; `stale`: read before a claim this node made since."""
        claim = self.claims.get(camera)
        if claim is not None and (claim.holder == holder or stale):
            # Ours, or ours since the read: a publisher that takes it from us later says so again.
            return
        try:
            node = json.loads(holder)["node"]
        except (ValueError, KeyError, TypeError):
            log.warning("camera %s: ignoring a holder in Redis that is not ours: %r", camera, holder[:200])
            return
        channel = self.channel_for(camera, f"of node {node}")
        if channel is None:
            return
        current = channel.publisher
        if isinstance(current, RemotePublisher) and current.holder == holder:
            return
        if claim is not None:
            del self.claims[camera]
            log.info(
                "camera %s: taken over by a publisher on node %s", camera, node, extra={"camera": camera}
            )
        remote = RemotePublisher(
            holder, node, lambda count, snapshot_only: self._on_remote_viewers(channel, count, snapshot_only)
        )
        channel.attach_publisher(remote)  # closes this node's publisher, if any, with 4000
        self._on_holder_changed(channel)

    def channel_for(self, camera: str, whose: str) -> Channel | None:
        """The channel of a camera published elsewhere (`whose`, for the log), counted against
        --max-cameras as a publisher here would be; None when the broker holds as many (logged)."""
        try:
            return self._hub.channel_for_publisher(camera)
        except TooManyCameras as exc:
            self._full_log.warning("cameras full", "camera %s %s not shown here: %s", camera, whose, exc)
            return None

    def _gone(self, channel: Channel) -> None:
        assert channel.publisher is not None
        channel.detach_publisher(channel.publisher)
        self._on_holder_changed(channel)
