"""Smaller sizes of one camera's frames: each made once per source frame, only while watched.

A client asks for a width (`?width=` or `"width"` in a subscription); the broker snaps it
down to one of a few fixed widths, so no client can make it encode arbitrary sizes, and
never scales up. Each (camera, variant) is one VariantFeed: it shrinks the camera's newest
frame in the Resizer's threads, one job at a time; a source frame that arrives while a job
runs waits in a one-frame slot, replaced by any newer one, so a feed that falls behind
skips to the newest frame and never holds up the full-size stream or another camera.
Its frames go to its own viewers exactly as full-size frames go to theirs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .frame import Frame
from .resize import Resizer

if TYPE_CHECKING:
    from .channel import Channel, Viewer

__all__ = ["DEFAULT_QUALITY", "QUALITIES", "WIDTHS", "Sizes", "Variant", "VariantFeed", "Variants"]

log = logging.getLogger(__name__)

WIDTHS = (160, 320, 640, 960, 1280)
QUALITIES = (30, 50, 70, 85)
DEFAULT_QUALITY = 70
MAX_WIDTH = 65535  # what a JPEG header can hold


@dataclass(frozen=True, slots=True)
class Variant:
    """A smaller size of a camera's frames: at most `width` pixels wide, encoded at `quality`."""

    width: int
    quality: int = DEFAULT_QUALITY

    @classmethod
    def snapped(cls, width: int, quality: int | None = None) -> Variant:
        """The fixed width at or below `width` (the smallest below that), the quality likewise.

        ValueError for a width outside 1-65535 or a quality outside 1-100.
        """
        if not 1 <= width <= MAX_WIDTH:
            raise ValueError(f"width={width} is invalid: expected 1 to {MAX_WIDTH} pixels")
        if quality is not None and not 1 <= quality <= 100:
            raise ValueError(f"quality={quality} is invalid: expected 1 to 100")
        return cls(
            _at_or_below(WIDTHS, width),
            DEFAULT_QUALITY if quality is None else _at_or_below(QUALITIES, quality),
        )

    @classmethod
    def parse(cls, width: object, quality: object = None) -> Variant | None:
        """A snapped variant from untrusted values (query text or JSON); None without a width."""
        if width is None or width == "":
            if quality not in (None, ""):
                raise ValueError("quality needs a width")
            return None
        wanted_quality = None if quality in (None, "") else _integer("quality", quality)
        return cls.snapped(_integer("width", width), wanted_quality)


def _at_or_below(choices: tuple[int, ...], value: int) -> int:
    return max((choice for choice in choices if choice <= value), default=choices[0])


def _integer(name: str, value: object) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is invalid: expected a whole number")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 6:
        return int(value)
    shown = str(value)[:20]
    raise ValueError(f"{name}={shown!r} is invalid: expected a whole number")


@dataclass(frozen=True)
class Sizes:
    """What the variants of every camera share: the threads, the bound, the stream numbers."""

    resizer: Resizer
    max_per_camera: int
    next_stream: Callable[[], int]  # broker-wide: names a (camera, variant) in /ws frame headers


class VariantFeed:
    """One camera's frames at one variant, made in the Resizer and offered to its viewers."""

    def __init__(self, variants: Variants, variant: Variant, stream: int) -> None:
        self.variant = variant
        self.stream = stream
        self.viewers: set[Viewer] = set()
        self.latest: Frame | None = None
        self._followed = False  # watched since `latest` was made: it is at most a job behind
        self.made = 0
        self.skipped = 0  # source frames replaced by a newer one while a job ran
        self.failed = 0  # source frames that could not be shrunk
        self._variants = variants
        self._making: Frame | None = None  # the source frame being shrunk now
        self._pending: Frame | None = None
        self._no_signal: Frame | None = None
        self._no_signal_source: Frame | None = None
        # Snapshots waiting for this variant of a source frame (its seq) to be made.
        self._waiters: list[tuple[int, asyncio.Future[Frame | None]]] = []

    def source(self, frame: Frame) -> None:
        """Make this variant of `frame` next; while a job runs it waits, replaced by newer frames."""
        if self._making is not None:
            if frame is self._making or frame is self._pending:
                return
            if self._pending is not None:
                self.skipped += 1
            self._pending = frame
            return
        self._making = frame
        job = self._variants.shrink(frame, self.variant)
        job.add_done_callback(lambda done: self._made(frame, done))

    def newest(self, source: Frame | None) -> Frame | None:
        """The newest frame made, unless it may be far behind `source` (the feed went unwatched since)."""
        latest = self.latest
        if latest is None or not (self._followed or (source is not None and latest.seq == source.seq)):
            return None
        return latest

    def made_of(self, source: Frame) -> asyncio.Future[Frame | None]:
        """This variant of `source` (or of a newer frame): made already, or when its job ends.

        Everyone who asks meanwhile waits for the same job. If it cannot be made, the
        newest made before (an older frame), or None.
        """
        waiter: asyncio.Future[Frame | None] = asyncio.get_running_loop().create_future()
        latest = self.latest
        if latest is not None and latest.seq >= source.seq:
            waiter.set_result(latest)
        else:
            self._waiters.append((source.seq, waiter))
            self.source(source)
        return waiter

    def unwatched(self) -> None:
        """The last viewer left: source frames are no longer made, so the newest made falls behind."""
        self._followed = False

    def no_signal(self, source: Frame) -> Frame | None:
        """This variant of the channel's no-signal picture `source`; None while it is being made."""
        if self._no_signal_source is not source:
            self._no_signal_source, self._no_signal = source, None
            job = self._variants.shrink(source, self.variant)
            job.add_done_callback(lambda done: self._no_signal_made(source, done))
        return self._no_signal

    # -- internals -------------------------------------------------------------------

    def _made(self, source: Frame, job: asyncio.Future[bytes]) -> None:
        self._making = None
        frame = self._result(source, job)
        if frame is not None:
            self.latest = frame
            self._followed = bool(self.viewers)
            self.made += 1
            now = time.monotonic()
            for viewer in self.viewers:
                viewer.offer(frame, now)
        if self._waiters:
            self._answer_waiters(source.seq)
        pending, self._pending = self._pending, None
        if pending is not None and (self.viewers or self._waiters):
            self.source(pending)

    def _answer_waiters(self, seq: int) -> None:
        """Snapshots waiting for frame `seq` or an older one get the newest made."""
        waiting = []
        for wanted, waiter in self._waiters:
            if wanted > seq:
                waiting.append((wanted, waiter))
            elif not waiter.done():  # done: its request went away
                waiter.set_result(self.latest)
        self._waiters = waiting

    def _no_signal_made(self, source: Frame, job: asyncio.Future[bytes]) -> None:
        frame = self._result(source, job)
        if frame is not None and self._no_signal_source is source:
            self._no_signal = frame
            self._variants.show_no_signal(self)

    def _result(self, source: Frame, job: asyncio.Future[bytes]) -> Frame | None:
        if job.cancelled():  # the broker is shutting down
            return None
        error = job.exception()
        if error is not None:
            camera = source.camera
            self.failed += 1
            if self.failed == 1:
                # Once per feed: a camera sending such frames would otherwise fill the log.
                log.warning(
                    "camera %s: cannot make its %d px wide variant of frame %d: %s",
                    camera,
                    self.variant.width,
                    source.seq,
                    error,
                    extra={"camera": camera},
                )
            return None
        jpeg = job.result()
        # A source no wider than the variant comes back as it is: its frames say they are full size.
        variant = None if jpeg is source.jpeg else self.variant
        return Frame(source.camera, source.seq, jpeg, source.received_at, source.received_mono, variant)


class Variants:
    """One camera's variant feeds: at most `max_per_camera`, each fed only while it has viewers.

    A feed whose last viewer left stays, unfed, with its last frame, until another
    variant needs its room.
    """

    def __init__(self, channel: Channel, sizes: Sizes) -> None:
        self._channel = channel
        self._sizes = sizes
        self._feeds: dict[Variant, VariantFeed] = {}

    def __bool__(self) -> bool:
        """Whether any feed has viewers (then each source frame is passed on)."""
        return any(feed.viewers for feed in self._feeds.values())

    def feeds(self) -> list[VariantFeed]:
        """The feeds now kept (for reports)."""
        return list(self._feeds.values())

    def resolve(self, wanted: Variant) -> Variant | None:
        """The variant that will serve a viewer asking for `wanted`, its feed made if needed.

        None (full size) when the camera's frames are no wider than `wanted`. At the bound
        an unwatched feed makes room; if every feed is watched, the nearest one serves.
        """
        latest = self._channel.latest
        if latest is not None and latest.width is not None and latest.width <= wanted.width:
            return None
        if wanted in self._feeds:
            return wanted
        if len(self._feeds) >= self._sizes.max_per_camera:
            idle = next((variant for variant, feed in self._feeds.items() if not feed.viewers), None)
            if idle is None:
                return min(self._feeds, key=lambda v: _distance(v, wanted))
            del self._feeds[idle]
        self._sizes.resizer.require()
        self._feeds[wanted] = VariantFeed(self, wanted, self._sizes.next_stream())
        return wanted

    def stream(self, variant: Variant) -> int:
        """The stream number of `variant`'s feed."""
        return self._feeds[variant].stream

    def add(self, viewer: Viewer, variant: Variant) -> None:
        """Feed `viewer` from `variant` (resolved just before); make the newest frame's variant if needed."""
        feed = self._feeds[variant]
        feed.viewers.add(viewer)
        source = self._channel.latest
        if source is not None and feed.newest(source) is None:
            feed.source(source)

    def remove(self, viewer: Viewer, variant: Variant) -> None:
        """Stop feeding `viewer`."""
        feed = self._feeds.get(variant)
        if feed is not None:
            feed.viewers.discard(viewer)
            if not feed.viewers:
                feed.unwatched()

    def source(self, frame: Frame) -> None:
        """A new source frame: every watched feed makes its variant of it."""
        for feed in self._feeds.values():
            if feed.viewers:
                feed.source(frame)

    def newest(self, variant: Variant) -> Frame | None:
        """The newest frame made at `variant`: of the camera's newest frame, or a job behind it."""
        feed = self._feeds.get(variant)
        return None if feed is None else feed.newest(self._channel.latest)

    def made_of(self, variant: Variant, source: Frame) -> asyncio.Future[Frame | None]:
        """`variant` (resolved) of the camera's frame `source`, for a snapshot: see VariantFeed.made_of."""
        return self._feeds[variant].made_of(source)

    def no_signal(self, variant: Variant, source: Frame) -> Frame | None:
        """`variant` of the no-signal picture `source`; None while it is being made."""
        feed = self._feeds.get(variant)
        return None if feed is None else feed.no_signal(source)

    def shrink(self, frame: Frame, variant: Variant) -> asyncio.Future[bytes]:
        """Start making `variant` of `frame` in the Resizer's threads; a frame no wider than the
        variant is its own (never scaled up, nor encoded again), at once.

        That happens to a feed made before the camera's first frame, or when the camera's
        frames became narrower since.
        """
        if frame.width is not None and frame.width <= variant.width:
            done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            done.set_result(frame.jpeg)
            return done
        return self._sizes.resizer.shrink(frame.jpeg, variant.width, variant.quality)

    def show_no_signal(self, feed: VariantFeed) -> None:
        """`feed`'s no-signal picture is ready: its viewers that show pictures only get it now."""
        self._channel.refresh_pictures(feed.viewers)


def _distance(variant: Variant, wanted: Variant) -> tuple[int, bool, int]:
    # Nearest width first, a smaller one on a tie, then the nearest quality.
    width = abs(variant.width - wanted.width)
    return width, variant.width > wanted.width, abs(variant.quality - wanted.quality)
