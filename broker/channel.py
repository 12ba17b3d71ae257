"""One camera: its newest frame, its publisher, its viewers and its online state."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from . import wire
from .frame import Frame
from .variants import Sizes, Variant, Variants

__all__ = ["Channel", "Publisher", "Viewer"]

CAPTURING_AT_LEAST = 0.5  # seconds a frame counts as "just in" however fast the camera runs


class Publisher(Protocol):
    """What a channel needs from the connection that feeds it frames."""

    peer: str

    def viewers_changed(self, count: int, snapshot_only: bool = False) -> None:
        """Tell the publisher how many viewers the camera has now (`snapshot_only`: snapshots alone)."""

    def replaced(self) -> None:
        """Another publisher took over this camera: close this one."""


class Viewer(Protocol):
    """What a channel needs from a viewer; how it encodes frames and shows state is its own business."""

    kind: str  # for counting only ("ws", "mjpeg")
    variant: Variant | None  # the smaller size it watches; None: full size
    needs_tick: bool  # tick() wanted on every sweep (MJPEG keep-alives)
    peer: str
    connected_at: float  # Unix time
    frames_written: int
    frames_skipped: int
    last_seq: int  # sequence number of the last frame written

    def offer(self, frame: Frame, now: float) -> None:
        """Take the newest frame (sent now, or kept as the one pending)."""

    def picture(self, channel: Channel) -> Frame | None:
        """The frame this viewer should show now (the newest, or a no-signal picture)."""

    def joined(self, channel: Channel) -> None:
        """Just added: send what precedes the first picture (a state message)."""

    def status_changed(self, channel: Channel) -> None:
        """The camera went online or offline, or got its no-signal picture."""

    def tick(self, channel: Channel, now: float, interval: float) -> None:
        """Periodic call while `needs_tick`: repeat the picture if quiet for `interval` seconds."""


class Channel:
    """One camera's newest frame and the viewers waiting for the next one.

    `publish()` is synchronous: it stores the frame and schedules one fan-out, which
    offers the newest frame to every viewer's writer; a writer either writes it at
    once or keeps it as that viewer's newest pending frame. No viewer can delay the
    publisher or another viewer. When frames arrive faster than the fan-out runs
    (an overloaded core), the ones no fan-out reached are dropped: newest wins at
    ingest too, so latency stays bounded instead of queueing up behind the publisher.
    """

    def __init__(
        self,
        camera: str,
        *,
        offline_after: float,
        fan_out_took: Callable[[float], None] | None = None,
        sizes: Sizes,
    ) -> None:
        self.camera = camera
        # Names the full-size frames in /ws frame headers; each variant has its own.
        self.stream = sizes.next_stream()
        self.variants = Variants(self, sizes)
        self.latest: Frame | None = None
        self.publisher: Publisher | None = None
        # A camera fed by POSTs is held by the address that posts, until it pauses.
        self._post_source: str | None = None
        self._post_until = 0.0
        self.seen = False  # a publisher has connected or posted: the camera "exists"
        self.agent: dict[str, object] = {}
        self.frames = 0
        self.last_seq = 0  # per camera, across nodes and takeovers (README, "Scaling out")
        # Passes each frame of this node's publisher on to the other nodes of a cluster.
        self.relay: Callable[[Frame], None] | None = None
        self.frames_dropped = 0  # replaced by a newer frame before any viewer got them
        self.frames_bad = 0  # not complete JPEGs: dropped on receipt
        self.bytes = 0
        self.fps = 0.0
        self.bytes_per_second = 0.0
        self._offline_after = offline_after
        self._frame_gap: float | None = None  # the usual seconds between frames, pauses left out
        self._viewers: set[Viewer] = set()
        self._full_size: set[Viewer] = set()  # the others are fed by self.variants
        self._ticking: set[Viewer] = set()
        # Frames written and skipped by viewers that have left; those present count their own.
        self.departed_sent = 0
        self.departed_skipped = 0
        self._fan_out_took = fan_out_took
        self._fan_out_handle: asyncio.Handle | None = None
        self._latest_stored = False  # the newest frame was read back from storage, not just received
        self._demand_since = time.monotonic()
        # Snapshots count as one viewer until this monotonic time (--snapshot-grace after the last).
        self._snapshot_demand_until = 0.0
        self._next_frame: asyncio.Future[Frame] | None = None  # for snapshots waiting for a fresh frame
        self.last_active = self._demand_since  # monotonic: last frame, viewer, snapshot or publisher
        self._online = False
        self._status_since = time.time()
        self._status_message = self._build_status()
        self._no_signal: Frame | None = None
        self._meter_at = time.monotonic()
        self._meter_frames = 0
        self._meter_bytes = 0

    # -- frames ----------------------------------------------------------------------

    def publish(self, jpeg: bytes) -> Frame:
        """Make `jpeg` from this node's publisher the newest frame and schedule its fan-out. Never awaits."""
        frame = Frame(self.camera, self.last_seq + 1, jpeg, time.time(), time.monotonic())
        self.show(frame)
        if self.relay is not None:
            self.relay(frame)
        return frame

    def show(self, frame: Frame, *, stored: bool = False) -> None:
        """Make `frame` (this node's, or another node's) the newest and schedule its fan-out.

        `stored`: the frame was read back from Redis (for a new viewer, or a camera this node
        did not know), not received as it arrived: its age is no fan-out latency.
        """
        previous = self.latest
        if previous is not None and frame.seq == previous.seq + 1:  # not across a pause or a skip
            gap = frame.received_mono - previous.received_mono
            if 0 <= gap < self._offline_after:
                usual = self._frame_gap
                self._frame_gap = gap if usual is None else usual + (gap - usual) / 8
        self.latest = frame
        self._latest_stored = stored
        self.last_seq = frame.seq
        self.last_active = frame.received_mono
        self.frames += 1
        self.bytes += len(frame.jpeg)
        self.seen = True
        if not self._online:
            self._set_online(True)
        if self._next_frame is not None:
            self._next_frame.set_result(frame)
            self._next_frame = None
        if self._viewers:
            if self._fan_out_handle is None:
                # Deferred to the loop's next pass: frames already buffered from the
                # publisher are read first, and only the newest of them goes out.
                self._fan_out_handle = asyncio.get_running_loop().call_soon(self._fan_out)
            else:
                self.frames_dropped += 1

    # -- publisher -------------------------------------------------------------------

    def attach_publisher(self, publisher: Publisher) -> None:
        """Make `publisher` the camera's only publisher; the previous one is told to go."""
        previous = self.publisher
        self.publisher = publisher
        self._post_source = None
        self.seen = True
        if previous is not None:
            previous.replaced()
        self._tell_publisher()

    def claim_for_post(self, source: str, hold: float) -> str | None:
        """Let `source` publish by POST for `hold` more seconds; else who holds the camera.

        A WebSocket publisher holds its camera while connected; a POSTing address holds
        it until it has been quiet for `hold` seconds. Frames from two publishers would
        otherwise interleave into one stream.
        """
        if self.publisher is not None:
            return f"the WebSocket publisher {self.publisher.peer}"
        now = time.monotonic()
        if self._post_source not in (None, source) and now < self._post_until:
            return f"POSTs from {self._post_source}"
        self._post_source, self._post_until = source, now + hold
        self.seen = True
        return None

    def detach_publisher(self, publisher: Publisher) -> None:
        """Forget `publisher` unless another one has taken over already."""
        if self.publisher is publisher:
            self.publisher = None
            self.last_active = time.monotonic()

    # -- viewers ---------------------------------------------------------------------

    @property
    def viewer_count(self) -> int:
        """WebSocket and MJPEG viewers now connected."""
        return len(self._viewers)

    @property
    def viewers(self) -> frozenset[Viewer]:
        """The viewers now connected (a copy: for reports, not for the hot path)."""
        return frozenset(self._viewers)

    def viewer_counts(self) -> dict[str, int]:
        """Viewers by kind ("ws", "mjpeg")."""
        counts = {"ws": 0, "mjpeg": 0}
        for viewer in self._viewers:
            counts[viewer.kind] = counts.get(viewer.kind, 0) + 1
        return counts

    def resolve(self, wanted: Variant | None) -> Variant | None:
        """The variant that will serve a viewer asking for `wanted` (None: full size).

        Call it right before `add_viewer`, with no await in between. Raises
        ResizeUnavailable when a smaller size is asked for and none can be made.
        """
        return None if wanted is None else self.variants.resolve(wanted)

    def stream_of(self, variant: Variant | None) -> int:
        """The stream number naming `variant` of this camera (resolved) in /ws frame headers."""
        return self.stream if variant is None else self.variants.stream(variant)

    def newest(self, variant: Variant | None) -> Frame | None:
        """The newest frame at `variant` (None: full size); a variant's once it is made."""
        return self.latest if variant is None else self.variants.newest(variant)

    def no_signal_at(self, variant: Variant | None) -> Frame | None:
        """The no-signal picture at `variant`, while the camera is offline (a variant's once made)."""
        if variant is None or self._no_signal is None:
            return self._no_signal
        return self.variants.no_signal(variant, self._no_signal)

    def add_viewer(self, viewer: Viewer) -> None:
        """Start feeding `viewer`: whatever it shows first, then its picture."""
        self._viewers.add(viewer)
        if viewer.variant is None:
            self._full_size.add(viewer)
        else:
            self.variants.add(viewer, viewer.variant)
        if viewer.needs_tick:
            self._ticking.add(viewer)
        self.last_active = time.monotonic()
        if len(self._viewers) == 1:
            if not self.snapshot_demand:
                self._demand_since = self.last_active
            self._tell_publisher()
        viewer.joined(self)
        frame = viewer.picture(self)
        if frame is not None and not (frame is self.latest and self._fan_out_handle is not None):
            viewer.offer(frame, self.last_active)  # unless the pending fan-out brings it anyway

    def remove_viewer(self, viewer: Viewer) -> None:
        """Stop feeding `viewer`."""
        if viewer in self._viewers:
            self.departed_sent += viewer.frames_written
            self.departed_skipped += viewer.frames_skipped
        self._viewers.discard(viewer)
        self._full_size.discard(viewer)
        self._ticking.discard(viewer)
        if viewer.variant is not None:
            self.variants.remove(viewer, viewer.variant)
        self.last_active = time.monotonic()
        if not self._viewers:
            self._tell_publisher()

    # -- demand ----------------------------------------------------------------------

    @property
    def snapshot_demand(self) -> bool:
        """Whether a recent snapshot still counts as a viewer."""
        return self._snapshot_demand_until > time.monotonic()

    @property
    def demand(self) -> int:
        """Viewers, plus one while snapshots count: what the publisher is told."""
        return len(self._viewers) + self.snapshot_demand

    @property
    def snapshot_only(self) -> bool:
        """Whether a recent snapshot is all the demand (nobody watches)."""
        return self.snapshot_demand and not self._viewers

    def note_snapshot(self, grace: float) -> None:
        """A snapshot was asked for: count it as a viewer for `grace` seconds (the agent resumes capture)."""
        now = time.monotonic()
        started = not self.snapshot_demand
        self._snapshot_demand_until = now + grace
        self.last_active = now
        if started:
            if not self._viewers:
                self._demand_since = now
            self._tell_publisher()

    def expire_snapshot_demand(self) -> None:
        """End the snapshots' demand once its grace has run out (called by the hub's sweep)."""
        if self._snapshot_demand_until and not self.snapshot_demand:
            self._snapshot_demand_until = 0.0
            self._tell_publisher()

    async def next_frame(self, timeout: float) -> Frame | None:
        """The next frame to arrive within `timeout` seconds, or None."""
        if self._next_frame is None:
            self._next_frame = asyncio.get_running_loop().create_future()
        try:
            return await asyncio.wait_for(asyncio.shield(self._next_frame), timeout)
        except TimeoutError:
            return None

    # -- liveness --------------------------------------------------------------------

    @property
    def online(self) -> bool:
        """Whether the camera is delivering the frames it is expected to deliver."""
        return self._online

    @property
    def status_since(self) -> float:
        """Unix time of the last online/offline change."""
        return self._status_since

    def capturing(self, now: float) -> bool:
        """Whether frames are still coming: the last one arrived within three of the camera's
        usual intervals between frames (at least half a second, at most --offline-after).

        An agent that paused capture for lack of viewers sent its last frame a moment ago
        by the clock of --offline-after, but long ago by its own frame rate.
        """
        if self.latest is None:
            return False
        due = min(self._offline_after, max(CAPTURING_AT_LEAST, 3 * (self._frame_gap or 0.0)))
        return now - self.latest.received_mono < due

    def expected_online(self, now: float) -> bool:
        """Online: a recent frame, or a publisher that owes none (no viewers, or just asked)."""
        if self.latest is not None and now - self.latest.received_mono < self._offline_after:
            return True
        if self.publisher is None:
            return False
        return not self.demand or now - self._demand_since < self._offline_after

    def refresh(self, now: float) -> bool:
        """Update the online state and the rate meters; True when the camera just went offline."""
        elapsed = now - self._meter_at
        if elapsed >= 0.5:
            self.fps = (self.frames - self._meter_frames) / elapsed
            self.bytes_per_second = (self.bytes - self._meter_bytes) / elapsed
            self._meter_at, self._meter_frames, self._meter_bytes = now, self.frames, self.bytes
        online = self.expected_online(now)
        if online == self._online:
            return False
        self._set_online(online)
        return not online

    @property
    def status_message(self) -> bytes:
        """The current state as a prebuilt WebSocket text frame (README, "Viewing over WebSocket")."""
        return self._status_message

    def show_no_signal(self, frame: Frame) -> None:
        """Keep `frame` as the picture of an offline camera, for viewers that show pictures only."""
        self._no_signal = frame
        self.refresh_pictures(self._ticking)

    def refresh_pictures(self, viewers: Iterable[Viewer]) -> None:
        """Viewers that show pictures only show theirs again now, not after the next quiet interval."""
        now = time.monotonic()
        for viewer in viewers:
            if viewer.needs_tick:
                viewer.tick(self, now, 0.0)

    def keep_alive(self, now: float, interval: float) -> None:
        """Let viewers that need it repeat their picture after `interval` quiet seconds.

        Proxies and players drop a multipart stream that goes quiet.
        """
        for viewer in self._ticking:
            viewer.tick(self, now, interval)

    def forgotten(self, now: float, after: float) -> bool:
        """Whether nobody has published to or watched this camera for `after` seconds."""
        return self.publisher is None and not self._viewers and now - self.last_active >= after

    @property
    def idle(self) -> bool:
        """Nothing worth keeping: never published, nobody watching."""
        return not self.seen and not self._viewers

    # -- internals -------------------------------------------------------------------

    def _fan_out(self) -> None:
        self._fan_out_handle = None
        frame = self.latest
        assert frame is not None  # publish() sets it before scheduling this
        now = time.monotonic()
        for viewer in self._full_size:
            viewer.offer(frame, now)
        if self.variants:
            self.variants.source(frame)  # made in threads; offered to their viewers when done
        if self._fan_out_took is not None and not self._latest_stored:
            # Once per frame: from the frame's arrival until every viewer has been offered it.
            self._fan_out_took(time.monotonic() - frame.received_mono)

    def _set_online(self, online: bool) -> None:
        self._online = online
        self._status_since = time.time()
        if online:
            self._no_signal = None
        self._status_message = self._build_status()
        for viewer in self._viewers:
            viewer.status_changed(self)

    def _build_status(self) -> bytes:
        payload = json.dumps(
            {
                "type": "status",
                "camera": self.camera,
                "online": self._online,
                "since": round(self._status_since, 3),
            }
        ).encode()
        return wire.websocket_frame(payload, wire.OP_TEXT)

    def _tell_publisher(self) -> None:
        if self.publisher is not None:
            self.publisher.viewers_changed(self.demand, snapshot_only=self.snapshot_only)
