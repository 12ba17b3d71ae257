"""GET /ws: one viewer WebSocket for many cameras, each subscribed to (and checked) on its own."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import WSMsgType, web

from . import wire
from .access import Principal
from .app_keys import AUTH, HUB, LIMITS, METRICS, RESIZER, SETTINGS
from .channel import Channel
from .clients import client_of
from .config import CAMERA_ID
from .muxwriter import MuxWriter, Subscription
from .params import peer, require_websocket_13
from .resize import ResizeUnavailable
from .variants import Variant
from .viewer import ViewerSession, ViewerWebSocket, spread_heartbeat

__all__ = ["view_mux"]

log = logging.getLogger(__name__)

# The reader must hold a message whole: past this it closes with 1009. Requests are far
# shorter; anything over MAX_REQUEST gets an error answer instead.
MAX_MESSAGE = 64 * 1024
MAX_REQUEST = 4096
# A client that sends requests without reading the answers is not read from meanwhile.
MAX_WAITING_REPLIES = 32
POLICY_VIOLATION = 1008


class BadRequest(Exception):
    """A request the client should not have sent; counted towards --max-bad-messages."""

    def __init__(self, message: str, camera: str | None = None) -> None:
        super().__init__(message)
        self.camera = camera


class Refused(BadRequest):
    """A request the broker cannot grant now (a full camera, no Pillow); not the client's fault."""


async def view_mux(request: web.Request) -> web.WebSocketResponse:
    """`GET /ws`: subscribe to cameras with JSON requests; frames of all of them on one socket."""
    auth = request.app[AUTH]
    principal = await auth.viewer(request)
    auth.may_list(request, principal)  # 401 before the upgrade when nothing can be watched unsigned
    require_websocket_13(request)
    settings = request.app[SETTINGS]
    ws = ViewerWebSocket(
        heartbeat=spread_heartbeat(settings.heartbeat),
        compress=False,
        max_msg_size=MAX_MESSAGE,
        timeout=settings.shutdown_timeout,
    )
    if not ws.can_prepare(request).ok:
        raise web.HTTPBadRequest(text="this is a WebSocket URL: connect with 'Upgrade: websocket'\n")
    # The socket counts as one viewer (per address, for the broker, for descriptors); each
    # subscription counts as a viewer of its camera.
    ticket = request.app[LIMITS].admit_viewer(client_of(request), None)
    try:
        stream = await ws.prepare(request)
        assert request.transport is not None  # prepare() raises if the connection is gone
        writer = MuxWriter(
            request.transport,
            stream,
            peer=peer(request),
            send_timeout=settings.viewer_send_timeout,
            sndbuf=settings.viewer_sndbuf,
        )
        ws.writer = writer
        session = MuxSession(request, ws, writer, principal)
        with request.app[HUB].track(session):
            await session.run()
    finally:
        ticket()
    return ws


class MuxSession(ViewerSession):
    """One /ws socket: its subscriptions, the requests that change them, and its count of bad ones."""

    def __init__(
        self, request: web.Request, ws: ViewerWebSocket, writer: MuxWriter, principal: Principal
    ) -> None:
        super().__init__(ws, writer)
        self.mux = writer
        self._request = request
        self._settings = request.app[SETTINGS]
        self._principal = principal
        self._local = client_of(request).local
        self._subscriptions: dict[str, tuple[Subscription, Channel]] = {}
        self._bad = 0
        self._context = {"peer": writer.peer}

    async def run(self) -> None:
        """Answer requests until the socket closes; then end every subscription."""
        log.debug("viewer %s connected (/ws)", self.mux.peer, extra=self._context)
        try:
            async for msg in self.ws:
                if msg.type == WSMsgType.TEXT:
                    self._handle(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    self._answer_bad(BadRequest("binary messages are not requests: send JSON text"))
                elif msg.type == WSMsgType.ERROR:
                    log.info("viewer %s (/ws): %s", self.mux.peer, msg.data, extra=self._context)
                if self._bad >= self._settings.max_bad_messages:
                    await self._close_for_abuse()
                    break
                if self.mux.replies_waiting >= MAX_WAITING_REPLIES:
                    await self.mux.replies_sent()
            if self.closing is not None:
                # Returning before the close handshake ends would drop TCP under the peer.
                await asyncio.wait([self.closing])
        finally:
            self.mux.close()
            for camera in list(self._subscriptions):
                self._end(camera)
            log.debug("viewer %s left (/ws)", self.mux.peer, extra=self._context)

    # -- requests --------------------------------------------------------------------

    def _handle(self, text: str) -> None:
        try:
            if len(text) > MAX_REQUEST:
                raise BadRequest(f"a request may be at most {MAX_REQUEST} characters long")
            try:
                request = json.loads(text)
            except (ValueError, RecursionError):  # RecursionError: nested too deep
                raise BadRequest('not JSON: send a JSON object with a "type"') from None
            if not isinstance(request, dict) or not isinstance(request.get("type"), str):
                raise BadRequest('not a JSON object with a string "type"')
            kind = request["type"]
            if kind == "subscribe":
                self._subscribe(request)
            elif kind == "unsubscribe":
                self._unsubscribe(request)
            else:
                raise BadRequest(f"unknown request type {kind[:40]!r}: expected subscribe or unsubscribe")
        except BadRequest as problem:
            self._answer_bad(problem)

    def _subscribe(self, request: dict[str, Any]) -> None:
        camera = _camera(request)
        try:
            wanted = Variant.parse(request.get("width"), request.get("quality"))
        except ValueError as exc:
            raise BadRequest(str(exc), camera) from None
        previous = self._subscriptions.get(camera)
        if previous is None and len(self._subscriptions) >= self._settings.max_subscriptions:
            raise BadRequest(
                f"this socket has {len(self._subscriptions)} subscriptions already "
                f"(max_subscriptions={self._settings.max_subscriptions}): unsubscribe one first",
                camera,
            )
        policy = self._request.app[AUTH].policy
        if not policy.may_view(self._principal, camera, open_locally=self._local):
            raise BadRequest(f"you may not watch camera {camera!r}", camera)
        if previous is not None:
            self._end(camera)
        hub = self._request.app[HUB]
        channel = hub.channel_for_viewer(camera)
        try:
            self._request.app[LIMITS].check_camera(
                camera, channel.viewer_count, None if channel.seen else hub.waiting_viewers()
            )
            if wanted is not None:
                self._request.app[RESIZER].require()
        except (web.HTTPException, ResizeUnavailable) as exc:
            hub.release(channel)
            reason = exc.text if isinstance(exc, web.HTTPException) else str(exc)
            raise Refused((reason or "refused").strip(), camera) from None
        variant = channel.resolve(wanted)
        subscription = Subscription(self.mux, camera, variant, channel.stream_of(variant))
        self._subscriptions[camera] = (subscription, channel)
        self.mux.reply(
            _message(
                type="subscribed",
                camera=camera,
                stream=subscription.stream,
                width=variant.width if variant else None,
                quality=variant.quality if variant else None,
            )
        )
        channel.add_viewer(subscription)
        log.debug(
            "camera %s: viewer %s subscribed (/ws, %s)",
            camera,
            self.mux.peer,
            f"{variant.width} px" if variant else "full size",
            extra={"camera": camera, **self._context},
        )

    def _unsubscribe(self, request: dict[str, Any]) -> None:
        camera = _camera(request)
        if camera in self._subscriptions:
            self._end(camera)
        self.mux.reply(_message(type="unsubscribed", camera=camera))

    def _end(self, camera: str) -> None:
        subscription, channel = self._subscriptions.pop(camera)
        self.mux.cancel(subscription)
        channel.remove_viewer(subscription)
        self._request.app[HUB].release(channel)

    # -- errors ----------------------------------------------------------------------

    def _answer_bad(self, problem: BadRequest) -> None:
        if not isinstance(problem, Refused):
            self._bad += 1
            self._request.app[METRICS].rejections.count("bad_message")
        self.mux.reply(_message(type="error", camera=problem.camera, error=str(problem)))

    async def _close_for_abuse(self) -> None:
        limit = self._settings.max_bad_messages
        log.info(
            "viewer %s (/ws): closed after %d bad requests (max_bad_messages=%d)",
            self.mux.peer,
            self._bad,
            limit,
            extra=self._context,
        )
        self.mux.close()
        await self.ws.close(code=POLICY_VIOLATION, message=b"too many bad requests")


def _camera(request: dict[str, Any]) -> str:
    camera = request.get("camera")
    if not isinstance(camera, str) or CAMERA_ID.fullmatch(camera) is None:
        raise BadRequest('"camera" must be a camera id: 1-64 characters from A-Z a-z 0-9 _ -')
    return camera


def _message(**fields: Any) -> bytes:
    return wire.websocket_frame(json.dumps(fields).encode(), wire.OP_TEXT)
