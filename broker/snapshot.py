"""The newest JPEG of a camera over plain HTTP, with validators so pollers can ask cheaply."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.helpers import ETAG_ANY, rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11

from . import wire
from .app_keys import AUTH, CLUSTER, HUB, SETTINGS
from .channel import Channel
from .config import Settings
from .frame import Frame
from .params import camera_id, variant

__all__ = ["snapshot"]

RETRY_AFTER_SECONDS = "1"
_FIXED_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


async def snapshot(request: web.Request) -> web.StreamResponse:
    """`GET /cameras/{camera}/snapshot.jpg[?width=W]`: 200 with the JPEG, 304, 404, 503 no frame yet."""
    camera = camera_id(request)
    await request.app[AUTH].may_view(request, camera)
    wanted = variant(request)
    channel = request.app[HUB].channel(camera)
    if channel is None or not channel.seen:
        raise web.HTTPNotFound(text=f"camera {camera!r} has never published\n")
    max_age = _max_age(request)
    cluster = request.app.get(CLUSTER)
    frame = channel.latest if cluster is None else await cluster.newest(channel)
    next_frame = channel.next_frame if cluster is None else functools.partial(cluster.next_frame, channel)
    frame = await _fresh(request.app[SETTINGS], channel, frame, max_age, next_frame)
    if frame is None:
        raise web.HTTPServiceUnavailable(
            text=f"camera {camera!r} has no frame yet\n",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )
    served = channel.resolve(wanted)
    if served is not None:
        # Made once per frame and size, shared with the size's viewers and other snapshots.
        frame = await channel.variants.made_of(served, frame)
        if frame is None:
            raise web.HTTPServiceUnavailable(
                text=f"camera {camera!r}: its newest frame cannot be made {served.width} px wide\n",
                headers={"Retry-After": RETRY_AFTER_SECONDS},
            )
    age = f"{max(0.0, time.monotonic() - frame.received_mono):.3f}"
    if _not_modified(request, _etag(frame), _last_modified(frame)):
        return _answer(frame, age, status=304)
    if request.method == "GET" and request.version == HttpVersion11 and request.keep_alive:
        head = frame.snapshot_head
        if head is None:
            head = frame.snapshot_head = _prebuilt_head(frame)
        return _PrebuiltAnswer(head, age, frame.jpeg)
    # HEAD, HTTP/1.0 and "Connection: close" are rare: aiohttp builds those answers.
    return _answer(frame, age, body=frame.jpeg)


def _max_age(request: web.Request) -> float | None:
    raw = request.query.get("max_age")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise web.HTTPBadRequest(text=f"max_age={raw!r} is invalid: expected seconds >= 0\n")
    return value


async def _fresh(
    settings: Settings,
    channel: Channel,
    frame: Frame | None,
    max_age: float | None,
    next_frame: Callable[[float], Awaitable[Frame | None]],
) -> Frame | None:
    """The frame to answer with: the cached one if fresh enough, else a new one if it comes in time.

    A snapshot counts as a viewer (--snapshot-grace), so an agent that paused capture for
    lack of viewers starts again; the answer waits up to --snapshot-wait for its first
    frame. A camera still capturing (its last frame came within a few of its usual
    intervals, `Channel.capturing`) answers at once, and so does one whose cached frame
    is no older than `?max_age=`.
    """
    if channel.publisher is None:
        return frame  # nobody could bring a newer one
    now = time.monotonic()
    age = now - frame.received_mono if frame is not None else None
    # Frames still arriving (someone watches, or the agent is always on): no waiting.
    capturing = channel.capturing(now)
    channel.note_snapshot(settings.snapshot_grace)
    if age is not None and (age <= max_age if max_age is not None else capturing):
        return frame
    if settings.snapshot_wait <= 0:
        return frame
    return await next_frame(settings.snapshot_wait) or channel.latest


def _etag(frame: Frame) -> str:
    # The receive time tells a restarted camera's frame 1 from the last one's, and is carried
    # across Redis unchanged, so every node of a cluster gives a frame the same ETag. A
    # smaller size of the frame is another picture: its width and quality are in its tag.
    size = f"-w{frame.variant.width}q{frame.variant.quality}" if frame.variant is not None else ""
    return f"{frame.camera}-{frame.seq}-{int(frame.received_at * 1e6):x}{size}"


def _last_modified(frame: Frame) -> int:
    # Whole seconds, rounded down: HTTP dates have no fractions, and Last-Modified must
    # not be later than the Date of the answer (RFC 9110 8.8.2.1).
    return math.floor(frame.received_at)


def _not_modified(request: web.BaseRequest, etag: str, last_modified: int) -> bool:
    """RFC 9110 13.2.2: If-None-Match decides when present (weak comparison); else If-Modified-Since."""
    tags = request.if_none_match
    if tags is not None:
        return any(tag.value in (etag, ETAG_ANY) for tag in tags)
    since = request.if_modified_since
    # One-second resolution: a frame newer by less than a second is "not modified" here;
    # the ETag tells every frame apart.
    return since is not None and last_modified <= since.timestamp()


def _answer(frame: Frame, age: str | None, *, status: int = 200, body: bytes | None = None) -> web.Response:
    """An answer about `frame` with every header but Date and Server, which aiohttp adds."""
    content_type = None if body is None else "image/jpeg"
    response = web.Response(status=status, body=body, content_type=content_type, headers=_FIXED_HEADERS)
    response.etag = _etag(frame)
    response.last_modified = _last_modified(frame)
    response.headers["X-Frame-Seq"] = str(frame.seq)
    if age is not None:
        response.headers["X-Frame-Age"] = age
    return response


def _prebuilt_head(frame: Frame) -> bytes:
    """The status line and the headers of a keep-alive HTTP/1.1 200, built once per frame.

    The headers are those of `_answer()`, so both ways of answering say the same.
    """
    headers = _answer(frame, None, body=frame.jpeg).headers
    return wire.http_head(
        "HTTP/1.1 200 OK",
        [*headers.items(), ("Content-Length", str(len(frame.jpeg))), ("Server", SERVER_SOFTWARE)],
    )


class _PrebuiltAnswer(web.StreamResponse):
    """A 200 written as the frame's prebuilt head, Date and X-Frame-Age, then the JPEG.

    aiohttp would build, check and serialize the same headers again for every request;
    pollers ask thousands of times a second, and writing the prebuilt bytes took a third
    less CPU per snapshot (README, "Performance"). Only for keep-alive HTTP/1.1 GETs.
    """

    def __init__(self, head: bytes, age: str, jpeg: bytes) -> None:
        super().__init__(status=200)
        self._parts: tuple[bytes, ...] | None = (head, _request_headers(age), jpeg)
        self._length = len(jpeg)

    @property
    def keep_alive(self) -> bool:
        """Always: only keep-alive requests get this answer."""
        return True

    @property
    def body_length(self) -> int:
        """The JPEG's length, for the access log."""
        return self._length

    async def prepare(self, request: web.BaseRequest) -> None:
        """Write the whole answer; wait while the transport holds too much unsent data."""
        parts, self._parts = self._parts, None
        if parts is None:
            return
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        transport.writelines(parts)
        await request.writer.drain()

    async def write_eof(self, data: bytes = b"") -> None:
        """Nothing: `prepare()` wrote the whole answer."""


def _request_headers(age: str) -> bytes:
    # rfc822_formatted_time() is the Date aiohttp sends itself, formatted once a second.
    return b"Date: %s\r\nX-Frame-Age: %s\r\n\r\n" % (rfc822_formatted_time().encode(), age.encode())
