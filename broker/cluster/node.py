"""One broker as a node of the cluster: the parts wired together, and the hooks the broker calls."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import secrets
import socket
import time
from typing import Any

from ..channel import Channel, Publisher
from ..config import Settings
from ..frame import Frame
from ..hub import Hub
from ..sessions import Sessions
from . import framewire
from .demand import NO_DEMAND, ClusterPublisher, Count, Demand
from .keys import Keys
from .link import RedisLink
from .ownership import Ownership, RemotePublisher
from .relay import FrameRelay
from .revocations import Revocations
from .subscriber import Subscriber

__all__ = ["ClusterNode", "default_node_name"]

log = logging.getLogger("broker.cluster")


def default_node_name(settings: Settings) -> str:
    """hostname:port (with port 0, which every node could share, the process id instead)."""
    port = str(settings.port) if settings.port else f"pid{os.getpid()}"
    return f"{socket.gethostname()}:{port}"


class ClusterNode:
    """This broker's part in the cluster. The broker calls it when a publisher comes or goes,
    for a snapshot of a camera held elsewhere, and for /api/cameras and /healthz."""

    def __init__(self, settings: Settings, link: RedisLink, hub: Hub, sessions: Sessions) -> None:
        self.name = settings.node_name or default_node_name(settings)
        self._hub = hub
        self.link = link
        self.keys = keys = Keys(link.db)
        self._interval = settings.node_ttl / 3
        self._forget_after = settings.forget_after
        self.relay = FrameRelay(link, keys, self.name, settings.forget_after, self._refused)
        self.subscriber = Subscriber(link, keys, self._remote_frame, self._control)
        self.ownership = Ownership(
            link,
            keys,
            hub,
            self.name,
            settings.node_ttl,
            remember=settings.forget_after,
            on_remote_viewers=self._remote_viewers,
            on_holder_changed=self._holder_changed,
            announce=self._announce,
        )
        # Counts are filed under this process, not its name: two nodes given the same name (two
        # hosts called "localhost", gunicorn's workers) must not overwrite each other's.
        instance = f"{self.name}#{secrets.token_hex(4)}"
        self.demand = Demand(link, keys, instance, settings.node_ttl, self._announce)
        self.revocations = Revocations(link, keys, sessions, self._announce)
        self._scripts = [self.relay.script, *self.ownership.scripts, *self.demand.scripts]
        link.on_connect(self._load_scripts)
        link.on_up(self.subscriber.start)  # first, so that no news is missed during the rest
        link.on_up(self.revocations.sync)
        link.on_up(self._tick)
        link.on_up(self._resend_newest)
        link.on_down(self._down)
        self._tasks: list[asyncio.Task[None]] = []
        self._snapshots_waiting: dict[str, int] = {}  # per camera, for a frame from another node
        self._learning = False  # reading the last frames of cameras this node does not know

    # -- running ---------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (in the background: the broker serves its own cameras whatever Redis does)."""
        log.info("node %s of the cluster in redis %s", self.name, self.link.location)
        self._tasks = [asyncio.ensure_future(self.link.run()), asyncio.ensure_future(self._ticker())]

    async def stop(self) -> None:
        """Let go of this node's cameras and disconnect."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.subscriber.stop()
        await self.link.close()

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            if not self.link.up:
                continue
            try:
                await asyncio.wait_for(self._tick(), self.link.timeout * 2)
            except Exception as exc:
                self.link.broken("refreshing claims and viewer counts", exc)

    async def _load_scripts(self) -> None:
        for script in self._scripts:
            await script.load()

    async def _tick(self) -> None:
        """Renew this node's claims, numbers and counts, learn every holder (and the cameras nobody
        holds), add up our cameras' viewers."""
        await self.ownership.refresh()
        self._learn(self.ownership.unheld)
        await self.demand.renew(
            {c.camera: Count(c.demand, c.snapshot_only) for c in self._hub.cameras() if c.demand}
        )
        await self._update_totals(list(self.ownership.claims))

    async def _resend_newest(self) -> None:
        """Pass on the newest frame of each camera held here: frames that came while Redis was
        unreachable (or not yet reached) were not kept, and a camera that sends rarely, or
        has paused for want of viewers, would leave the other nodes without its picture."""
        for camera, claim in list(self.ownership.claims.items()):
            channel = self._hub.channel(camera)
            # A frame numbered before the claim told this node the camera's number is older
            # than frames the other nodes may have shown: the next frame goes on from there.
            if channel is not None and channel.latest is not None and channel.latest.seq == channel.last_seq:
                self.relay.send(channel.latest, claim.holder)

    def _down(self) -> None:
        self.relay.clear()
        self.subscriber.stop()
        for claim in self.ownership.claims.values():
            if isinstance(claim.publisher, ClusterPublisher):
                claim.publisher.remote_changed(NO_DEMAND)  # no other node's viewer can be served now

    # -- hooks: publishers -------------------------------------------------------------

    async def publisher_connected(self, channel: Channel, session: Publisher) -> Publisher:
        """A WebSocket publisher here: claim the camera; the publisher returned goes to the channel."""
        claim = await self.ownership.claim(channel)
        publisher = ClusterPublisher(session, channel.camera, self.demand.changed)
        claim.publisher = publisher
        if self.link.up:
            try:
                publisher.remote = (await self.demand.totals([channel.camera]))[channel.camera]
            except Exception as exc:
                self.link.broken(f"camera {channel.camera}: counting viewers", exc)
        self._holder_changed(channel)
        return publisher

    def publisher_gone(self, channel: Channel, publisher: Publisher) -> None:
        """The publisher returned by `publisher_connected` left."""
        claim = self.ownership.holds(channel.camera)
        if claim is not None and claim.publisher is publisher:
            self.ownership.released(channel, claim)

    async def claim_post(self, channel: Channel, source: str) -> str | None:
        """None if `source` may POST to the camera here, else who holds it."""
        return await self.ownership.claim_post(channel, source)

    def publisher_node(self, channel: Channel) -> str | None:
        """The node that holds the camera's publisher, for /api/cameras."""
        if isinstance(channel.publisher, RemotePublisher):
            return channel.publisher.node
        if self.ownership.holds(channel.camera) is not None or channel.publisher is not None:
            return self.name
        return None

    # -- hooks: viewers ---------------------------------------------------------------

    async def newest(self, channel: Channel) -> Frame | None:
        """The camera's newest frame for a snapshot: from Redis when this node has no fresh one."""
        camera = channel.camera
        if self.ownership.holds(camera) or self.subscriber.watching(camera) or not self.link.up:
            return channel.latest
        await self._fetch_latest(channel)
        return channel.latest

    async def next_frame(self, channel: Channel, timeout: float) -> Frame | None:
        """The camera's next frame within `timeout` seconds, for a snapshot that waits for a fresh one.

        This node receives the camera's frames while a snapshot waits, and only then: the
        snapshot's grace counts as a viewer towards the holder's agent, but streaming every
        frame to a node that has no viewers, to answer a poller, would cost a frame's
        traffic per frame instead of one read of the latest-frame key per snapshot.
        """
        camera = channel.camera
        self._snapshots_waiting[camera] = self._snapshots_waiting.get(camera, 0) + 1
        self._holder_changed(channel)
        try:
            return await channel.next_frame(timeout)
        finally:
            if waiting := self._snapshots_waiting[camera] - 1:
                self._snapshots_waiting[camera] = waiting
            else:
                del self._snapshots_waiting[camera]
            self._holder_changed(channel)

    def health(self) -> dict[str, Any]:
        """The node and its Redis link, for /healthz."""
        return {"node": self.name, "redis": self.link.status()}

    # -- internals -------------------------------------------------------------------

    def _holder_changed(self, channel: Channel) -> None:
        """Relay frames of a camera we hold; receive those of one held elsewhere while it has viewers
        or a waiting snapshot."""
        claim = self.ownership.holds(channel.camera)
        if claim is not None:
            channel.relay = functools.partial(self.relay.send, holder=claim.holder)
            self.subscriber.want(channel.camera, False)
            return
        channel.relay = None
        # Viewers and waiting snapshots want the camera's frames here; a snapshot's grace does not.
        wanted = isinstance(channel.publisher, RemotePublisher) and bool(
            channel.viewer_count or self._snapshots_waiting.get(channel.camera)
        )
        was = self.subscriber.watching(channel.camera)
        self.subscriber.want(channel.camera, wanted)
        if wanted and not was and self.link.up:
            self.link.spawn(self._fetch_latest(channel))  # the new viewer gets a picture at once

    def _remote_viewers(self, channel: Channel, count: int, snapshot_only: bool) -> None:
        self.demand.changed(channel.camera, Count(count, snapshot_only))
        self._holder_changed(channel)

    def _learn(self, cameras: list[str]) -> None:
        """Know the cameras nobody holds that this node does not know (it started after their
        publishers left), as the nodes that remember them do: offline, with their last frame.
        Off the tick: the frames are read one at a time, however many there are."""
        unknown = [c for c in cameras if (channel := self._hub.channel(c)) is None or not channel.seen]
        if unknown and not self._learning:
            self._learning = True
            self.link.spawn(self._read_unknown(unknown))

    async def _read_unknown(self, cameras: list[str]) -> None:
        try:
            for camera in cameras:
                if not self.link.up:
                    return
                channel = self.ownership.channel_for(camera, "(offline, its last frame in Redis)")
                if channel is None:
                    return  # the broker is full: the others would not fit either
                if channel.seen:
                    continue
                message = await self._read_latest(camera)
                # A frame this old is one this node would forget at once (or just forgot).
                if message is not None and time.time() - message.received_at < self._forget_after:
                    self._remote_frame(message, stored=True)
                self._hub.release(channel)  # unless it shows that frame now, or a viewer waits
        finally:
            self._learning = False

    async def _fetch_latest(self, channel: Channel) -> None:
        message = await self._read_latest(channel.camera)
        if message is not None:
            self._remote_frame(message, stored=True)

    async def _read_latest(self, camera: str) -> framewire.FrameMessage | None:
        """The camera's latest-frame message in Redis; None if there is none or it is not readable."""
        try:
            data = await self.link.client.get(self.keys.latest(camera))
        except Exception as exc:
            self.link.broken(f"camera {camera}: reading its latest frame", exc)
            return None
        if data is None:
            return None
        try:
            message = framewire.decode(data)
            if message.camera != camera:
                raise framewire.WireError(f"it is camera {message.camera!r}'s")
        except framewire.WireError as exc:
            log.warning("camera %s: ignoring its latest frame in Redis: %s", camera, exc)
            return None
        return message

    def _remote_frame(self, message: framewire.FrameMessage, *, stored: bool = False) -> None:
        """Show another node's frame: relayed live over pub/sub, or `stored` (read from its
        latest-frame key, possibly long after it arrived)."""
        channel = self._hub.channel(message.camera)
        if channel is None or self.ownership.holds(message.camera) is not None:
            return
        if message.seq <= channel.last_seq:
            return  # not newer than what this node shows: time never runs backwards
        channel.show(message.frame(), stored=stored)

    def _refused(self, camera: str) -> None:
        """Redis refused our frame: another node holds the camera now."""
        self.link.spawn(self._check(camera))

    async def _check(self, camera: str) -> None:
        try:
            await self.ownership.check(camera)
        except Exception as exc:
            self.link.broken(f"camera {camera}: reading its holder", exc)

    async def _update_totals(self, cameras: list[str]) -> None:
        totals = await self.demand.totals(cameras)
        for camera, count in totals.items():
            claim = self.ownership.holds(camera)
            if claim is not None and isinstance(claim.publisher, ClusterPublisher):
                claim.publisher.remote_changed(count)

    async def _totals_of(self, camera: str) -> None:
        try:
            await self._update_totals([camera])
        except Exception as exc:
            self.link.broken(f"camera {camera}: counting viewers", exc)

    def _control(self, news: dict[str, Any]) -> None:
        kind, camera = news["t"], news.get("c")
        if kind == "holder" and isinstance(camera, str):
            self.link.spawn(self._check(camera))
        elif kind == "demand" and isinstance(camera, str):
            if self.ownership.holds(camera) is not None:
                self.link.spawn(self._totals_of(camera))
        elif (
            kind == "signed-out" and isinstance(news.get("s"), str) and isinstance(news.get("u"), int | float)
        ):
            self.revocations.heard(news["s"], float(news["u"]))

    def _announce(self, news: dict[str, object]) -> None:
        if self.link.up:
            self.link.spawn(self._publish(json.dumps(news)))

    async def _publish(self, text: str) -> None:
        try:
            await self.link.client.publish(self.keys.control, text)
        except Exception as exc:
            self.link.broken("sending a control message", exc)
