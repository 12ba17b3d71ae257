"""Frames in: the publisher WebSocket and the HTTP POST fallback, with every check a frame must pass."""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import WebSocketError, WSMsgType, web

from .app_keys import AUTH, CLUSTER, HUB, METRICS, SETTINGS
from .channel import Channel
from .hub import TooManyCameras
from .jpeg import is_complete_jpeg
from .metrics import Rejections
from .params import camera_id, peer, require_websocket_13
from .websocket import StrictWebSocket

__all__ = ["FrameRejected", "PublisherSession", "publish_post", "publish_ws", "validate_frame"]

log = logging.getLogger(__name__)

CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_REPLACED = 4000


class FrameRejected(Exception):
    """A frame the broker will not cache or forward; carries the answer for each transport."""

    def __init__(self, reason: str, http_status: int, ws_code: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.http_status = http_status
        self.ws_code = ws_code


def check_size(size: int, max_bytes: int) -> None:
    """Raise FrameRejected for a frame larger than the limit."""
    if size > max_bytes:
        raise FrameRejected(
            f"frame of {size} bytes is larger than max_frame_bytes={max_bytes}", 413, CLOSE_TOO_BIG
        )


def validate_frame(data: bytes, max_bytes: int) -> bytes:
    """Return `data` if it is one complete JPEG within the size limit, else raise FrameRejected."""
    check_size(len(data), max_bytes)
    if not is_complete_jpeg(data):
        raise FrameRejected(
            "frame is not a complete JPEG (it must start with FF D8 and end with FF D9)",
            415,
            CLOSE_UNSUPPORTED_DATA,
        )
    return data


def open_channel(request: web.Request, camera: str) -> Channel:
    """The camera's channel, or 503 when the camera table is full."""
    try:
        return request.app[HUB].channel_for_publisher(camera)
    except TooManyCameras as exc:
        request.app[METRICS].rejections.count("cameras")
        raise web.HTTPServiceUnavailable(text=f"{exc}\n", headers={"Retry-After": "60"}) from None


async def read_frame(request: web.Request, max_bytes: int) -> bytes:
    """The POST body, read in pieces and refused (413) as soon as it passes the limit.

    Memory stays within about twice the limit even for a chunked body that never ends:
    the pieces go into one buffer that is copied once.
    """
    if request.content_length is not None:
        check_size(request.content_length, max_bytes)  # before reading anything
        body = bytearray(request.content_length)
        view, filled = memoryview(body), 0
        async for chunk in request.content.iter_any():
            check_size(filled + len(chunk), max_bytes)
            view[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
        view.release()
        del body[filled:]
    else:
        body = bytearray()
        async for chunk in request.content.iter_any():
            check_size(len(body) + len(chunk), max_bytes)
            body += chunk
    return bytes(body)


class PublisherSession:
    """One camera agent connected over WebSocket: frames in, viewer counts out."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        channel: Channel,
        peer: str,
        max_bad_frames: int,
        rejections: Rejections,
    ) -> None:
        self.ws = ws
        self.channel = channel
        self.peer = peer
        # Fields of every log line about this publisher (keys of their own in JSON logs).
        self.log_context = {"camera": channel.camera, "peer": peer}
        self._max_bad_frames = max_bad_frames
        self._rejections = rejections
        self._bad_in_a_row = 0
        self._bad_frames = 0
        self._viewers = 0
        self._snapshot_only = False
        self._viewers_changed = asyncio.Event()
        self._closing: asyncio.Task[bool] | None = None
        # The code this broker closed with; the peer's reply (ws.close_code) may differ.
        self.closed_with: int | None = None

    def viewers_changed(self, count: int, snapshot_only: bool = False) -> None:
        """Queue a `{"type": "viewers"}` message; only the newest count is sent."""
        self._viewers = count
        self._snapshot_only = snapshot_only
        self._viewers_changed.set()

    def replaced(self) -> None:
        """Close with 4000: a newer publisher owns the camera now."""
        log.info(
            "camera %s: publisher %s replaced by a newer one",
            self.channel.camera,
            self.peer,
            extra=self.log_context,
        )
        self._close_soon(CLOSE_REPLACED, "another publisher took over this camera")

    async def close_going_away(self) -> None:
        """Close with 1001 on shutdown."""
        self._close_soon(CLOSE_GOING_AWAY, "broker shutting down")
        assert self._closing is not None
        await self._closing

    async def run(self, max_bytes: int) -> None:
        """Receive until the connection ends."""
        notifier = asyncio.ensure_future(self._send_viewer_counts())
        notifier.add_done_callback(self._notifier_ended)
        try:
            async for msg in self.ws:
                if msg.type == WSMsgType.BINARY:
                    self._on_frame(msg.data, max_bytes)
                elif msg.type == WSMsgType.TEXT:
                    self._on_control(msg.data)
                elif msg.type == WSMsgType.ERROR:
                    self._on_error(msg.data, max_bytes)
        finally:
            notifier.cancel()
            if self._closing is not None:
                # Let our close handshake finish: returning now would drop the TCP connection
                # under the peer, which would then see 1006 instead of our code and reason.
                await asyncio.wait([self._closing])

    # -- internals -------------------------------------------------------------------

    def _on_frame(self, data: bytes, max_bytes: int) -> None:
        if self._closing is not None:
            return
        try:
            jpeg = validate_frame(data, max_bytes)
        except FrameRejected as exc:
            if exc.ws_code == CLOSE_UNSUPPORTED_DATA:
                self._on_bad_frame(exc.reason)
            else:
                self._rejections.count("frame_too_large")
                self._reject(exc.ws_code, exc.reason)
            return
        self._bad_in_a_row = 0
        self.channel.publish(jpeg)

    def _on_bad_frame(self, reason: str) -> None:
        # One bad frame from a camera must not cost seconds of video (a reconnect):
        # drop it; only a run of them means the publisher is broken.
        self.channel.frames_bad += 1
        self._bad_frames += 1
        self._bad_in_a_row += 1
        if self._bad_in_a_row >= self._max_bad_frames:
            reason = f"{self._bad_in_a_row} frames in a row were not complete JPEGs"
            self._reject(CLOSE_UNSUPPORTED_DATA, reason)
        elif self._bad_frames == 1:
            # Once per connection; /api/cameras counts the rest (frames_bad).
            log.warning(
                "camera %s: publisher %s: dropped a frame: %s (more are counted, not logged; "
                "%d in a row close the connection)",
                self.channel.camera,
                self.peer,
                reason,
                self._max_bad_frames,
                extra=self.log_context,
            )

    def _on_control(self, text: str) -> None:
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):
            message = None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            self._reject(CLOSE_INVALID_PAYLOAD, 'control message is not a JSON object with a "type"')
            return
        if message["type"] == "hello":
            self.channel.agent = {k: v for k, v in message.items() if k != "type"}
            log.info(
                "camera %s: publisher %s says hello: %s",
                self.channel.camera,
                self.peer,
                self.channel.agent,
                extra=self.log_context,
            )
        else:
            log.debug(
                "camera %s: ignoring control message %r",
                self.channel.camera,
                message["type"],
                extra=self.log_context,
            )

    def _on_error(self, exc: BaseException, max_bytes: int) -> None:
        # aiohttp has already closed the socket with the matching code (1009 for a too-large
        # message, 1002/1007 for protocol errors); say why, once. By now ws.close_code is
        # the peer's answer to that close, or 1006 if it hung up: the code sent is the error's.
        code = exc.code if isinstance(exc, WebSocketError) else self.ws.close_code
        self.closed_with = code
        too_big = code == CLOSE_TOO_BIG
        self._rejections.count("frame_too_large" if too_big else "protocol")
        log.warning(
            "camera %s: publisher %s rejected: %s (closed with %s)",
            self.channel.camera,
            self.peer,
            f"a frame larger than max_frame_bytes={max_bytes}" if too_big else exc,
            code,
            extra=self.log_context,
        )

    def _reject(self, code: int, reason: str) -> None:
        log.warning(
            "camera %s: publisher %s rejected: %s (closing with %d)",
            self.channel.camera,
            self.peer,
            reason,
            code,
            extra=self.log_context,
        )
        self._close_soon(code, reason)

    def _notifier_ended(self, notifier: asyncio.Future[None]) -> None:
        if notifier.cancelled() or notifier.exception() is None:
            return
        if self.ws.closed or isinstance(notifier.exception(), ConnectionError):
            # The connection is going away anyway; its end is logged when the handler returns.
            log.debug(
                "camera %s: viewer count not sent: %r",
                self.channel.camera,
                notifier.exception(),
                extra=self.log_context,
            )
            return
        # Without this task the agent would never again hear that viewers came: close, so
        # that it reconnects and is told the count on connect.
        log.warning(
            "camera %s: publisher %s: the viewer count could not be sent (%r); closing with %d",
            self.channel.camera,
            self.peer,
            notifier.exception(),
            CLOSE_INTERNAL_ERROR,
            extra=self.log_context,
        )
        self._close_soon(CLOSE_INTERNAL_ERROR, "broker could not send the viewer count")

    def _close_soon(self, code: int, reason: str) -> None:
        if self._closing is None:
            self.closed_with = code
            self._closing = asyncio.ensure_future(self.ws.close(code=code, message=reason.encode()))

    async def _send_viewer_counts(self) -> None:
        while True:
            await self._viewers_changed.wait()
            self._viewers_changed.clear()
            if self.ws.closed:
                return
            message: dict[str, object] = {"type": "viewers", "count": self._viewers}
            if self._snapshot_only:
                message["snapshot_only"] = True
            await self.ws.send_json(message)


async def publish_ws(request: web.Request) -> web.WebSocketResponse:
    """`GET /cameras/{camera}/publish`: a publisher's WebSocket."""
    camera = camera_id(request)
    settings = request.app[SETTINGS]
    request.app[AUTH].check_publish(request, camera)
    require_websocket_13(request)
    ws = StrictWebSocket(
        heartbeat=settings.heartbeat,
        compress=False,  # JPEG does not deflate; compression would only cost CPU
        max_msg_size=settings.max_frame_bytes,
        timeout=settings.shutdown_timeout,  # bound on waiting for the peer's close reply
    )
    if not ws.can_prepare(request).ok:
        raise web.HTTPBadRequest(
            text="this is a WebSocket URL: connect with 'Upgrade: websocket', or POST frames\n"
        )
    hub = request.app[HUB]
    channel = open_channel(request, camera)
    try:
        await ws.prepare(request)
    except BaseException:
        hub.release(channel)
        raise
    session = PublisherSession(
        ws, channel, peer(request), settings.max_bad_frames, request.app[METRICS].rejections
    )
    log.info("camera %s: publisher %s connected", channel.camera, session.peer, extra=session.log_context)
    cluster = request.app.get(CLUSTER)
    with hub.track(session):
        # In a cluster the channel sees the session through the node, which claims the camera.
        attached = session if cluster is None else await cluster.publisher_connected(channel, session)
        channel.attach_publisher(attached)
        try:
            await session.run(settings.max_frame_bytes)
        finally:
            channel.detach_publisher(attached)
            if cluster is not None:
                cluster.publisher_gone(channel, attached)
            log.info(
                "camera %s: publisher %s disconnected (code %s)",
                channel.camera,
                session.peer,
                ws.close_code if session.closed_with is None else session.closed_with,
                extra=session.log_context,
            )
    return ws


async def publish_post(request: web.Request) -> web.Response:
    """`POST /cameras/{camera}/publish`: one JPEG in the body.

    One publisher per camera: while a WebSocket publisher holds the camera, or another
    address has POSTed to it within `--offline-after` seconds, the answer is 409.
    """
    camera = camera_id(request)
    settings = request.app[SETTINGS]
    request.app[AUTH].check_publish(request, camera)
    limit = settings.max_frame_bytes
    source = peer(request)
    try:
        data = validate_frame(await read_frame(request, limit), limit)
    except FrameRejected as exc:
        log.warning(
            "camera %s: POST from %s rejected: %s",
            camera,
            source,
            exc.reason,
            extra={"camera": camera, "peer": source},
        )
        channel = request.app[HUB].channel(camera)
        if exc.ws_code == CLOSE_TOO_BIG:
            request.app[METRICS].rejections.count("frame_too_large")
        elif channel is not None:
            channel.frames_bad += 1
        else:  # no camera is made for a frame that is refused: it counts broker-wide only
            request.app[METRICS].rejections.count("bad_frame")
        response = web.Response(status=exc.http_status, text=exc.reason + "\n")
        response.force_close()  # the rest of a refused body is not worth reading
        return response
    except ConnectionError as exc:
        # The publisher hung up mid-body (a camera losing its network): nothing to answer.
        log.warning(
            "camera %s: POST from %s broke off before its body ended: %s",
            camera,
            source,
            exc,
            extra={"camera": camera, "peer": source},
        )
        return web.Response(status=400, text="the request body was broken off\n")
    channel = open_channel(request, camera)
    cluster = request.app.get(CLUSTER)
    holder = None if cluster is None else await cluster.claim_post(channel, source)
    holder = holder or channel.claim_for_post(source, settings.offline_after)
    if holder is not None:
        log.info(
            "camera %s: POST from %s refused: the camera is held by %s",
            camera,
            source,
            holder,
            extra={"camera": camera, "peer": source},
        )
        return web.Response(status=409, text=f"camera {camera!r} is held by another publisher ({holder})\n")
    channel.publish(data)
    return web.Response(status=204)
