"""Frames out over WebSocket: one viewer connection, fed by its channel through a FrameWriter."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from aiohttp import WSMsgType, web

from .app_keys import AUTH, HUB, LIMITS, SETTINGS
from .channel import Channel
from .clients import client_of
from .frame import Frame
from .params import camera_id, peer, require_websocket_13, variant
from .variants import Variant
from .websocket import StrictWebSocket
from .writer import FrameWriter, SocketWriter

__all__ = ["ViewerSession", "view_ws"]

log = logging.getLogger(__name__)

VIEWER_MAX_MESSAGE = 4096  # viewers have nothing to say; keep what they can make us buffer small
HEARTBEAT_JITTER = 0.2


def spread_heartbeat(interval: float) -> float:
    """`interval` give or take HEARTBEAT_JITTER, different for each viewer.

    Viewers that connected together would otherwise be pinged together: a thousand
    pings in one loop pass hold a frame back for tens of milliseconds.
    """
    return interval * random.uniform(1 - HEARTBEAT_JITTER, 1 + HEARTBEAT_JITTER)


class WebSocketWriter(FrameWriter):
    """A WebSocket viewer: frames as binary messages, the camera's state as JSON text messages."""

    __slots__ = ()

    def joined(self, channel: Channel) -> None:
        """The state first, so the page knows whether to wait for a picture."""
        self.offer_text(channel.status_message)

    def status_changed(self, channel: Channel) -> None:
        """Online and offline arrive as text; no no-signal picture is drawn for a canvas."""
        self.offer_text(channel.status_message)


class ViewerWebSocket(StrictWebSocket):
    """A viewer's WebSocket: once it starts closing, its FrameWriter writes nothing more.

    Every close, whether ours, the peer's (answered automatically) or after a protocol
    error, goes through close(); stopping the writer there keeps frames from following
    the close frame without a check on every write.
    """

    writer: SocketWriter | None = None

    async def close(self, *, code: int = 1000, message: bytes = b"", drain: bool = True) -> bool:
        """Stop the frame writer, then close as aiohttp does."""
        if self.writer is not None:
            self.writer.close()
        return await super().close(code=code, message=message, drain=drain)


class ViewerSession:
    """One browser (or other client) watching one camera over WebSocket."""

    def __init__(self, ws: web.WebSocketResponse, writer: SocketWriter) -> None:
        self.ws = ws
        self.writer = writer
        self.closing: asyncio.Future[None] | None = None

    async def close_going_away(self) -> None:
        """Close with 1001 on shutdown; a viewer that never takes the close frame is dropped."""
        self.closing = asyncio.ensure_future(self._close(1001, "broker shutting down"))
        await self.closing

    async def _close(self, code: int, reason: str) -> None:
        self.writer.close()
        try:
            await self.ws.close(code=code, message=reason.encode())
        except asyncio.CancelledError:
            self.writer.abort("it did not take the close frame before the shutdown timeout")
            raise


def _encoder(with_header: bool) -> Callable[[Frame], bytes]:
    return Frame.ws_message_with_header if with_header else Frame.ws_message


async def view_ws(request: web.Request) -> web.WebSocketResponse:
    """`GET /cameras/{camera}/ws`: newest frame now, then every new one; `?header=1` adds seq/time."""
    camera = camera_id(request)
    await request.app[AUTH].may_view(request, camera)
    require_websocket_13(request)
    wanted = variant(request)
    settings = request.app[SETTINGS]
    hub = request.app[HUB]
    with_header = request.query.get("header", "0").lower() in ("1", "true", "yes")
    ws = ViewerWebSocket(
        heartbeat=spread_heartbeat(settings.heartbeat),
        compress=False,  # JPEG does not deflate; frames are prebuilt uncompressed
        max_msg_size=VIEWER_MAX_MESSAGE,
        timeout=settings.shutdown_timeout,
    )
    if not ws.can_prepare(request).ok:
        raise web.HTTPBadRequest(text="this is a WebSocket URL: connect with 'Upgrade: websocket'\n")
    channel = hub.channel_for_viewer(camera)
    try:
        ticket = request.app[LIMITS].admit_viewer(
            client_of(request), camera, channel.viewer_count, None if channel.seen else hub.waiting_viewers()
        )
    except web.HTTPException:
        hub.release(channel)
        raise
    try:
        return await _serve(request, ws, channel, with_header, wanted)
    finally:
        ticket()
        hub.release(channel)


async def _serve(
    request: web.Request, ws: ViewerWebSocket, channel: Channel, with_header: bool, wanted: Variant | None
) -> web.WebSocketResponse:
    settings = request.app[SETTINGS]
    camera = channel.camera
    stream = await ws.prepare(request)
    assert request.transport is not None  # prepare() raises if the connection is gone
    writer = WebSocketWriter(
        request.transport,
        stream,
        _encoder(with_header),
        kind="ws",
        peer=peer(request),
        send_timeout=settings.viewer_send_timeout,
        sndbuf=settings.viewer_sndbuf,
        variant=channel.resolve(wanted),  # no await from here to add_viewer
    )
    ws.writer = writer
    session = ViewerSession(ws, writer)
    context = {"camera": camera, "peer": writer.peer}
    log.debug("camera %s: viewer %s connected (ws)", camera, writer.peer, extra=context)
    with request.app[HUB].track(session):
        channel.add_viewer(writer)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    log.info("camera %s: viewer %s: %s", camera, writer.peer, msg.data, extra=context)
            if session.closing is not None:
                # Returning before the close handshake ends would drop TCP under the peer.
                await asyncio.wait([session.closing])
        finally:
            writer.close()
            channel.remove_viewer(writer)
            log.debug(
                "camera %s: viewer %s left after %d frames (%d skipped)",
                camera,
                writer.peer,
                writer.frames_written,
                writer.frames_skipped,
                extra=context,
            )
    return ws
