"""Frames out as `multipart/x-mixed-replace`, for <img>, VLC and home-automation tools."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from .app_keys import AUTH, BOUNDARY, HUB, LIMITS, SETTINGS
from .channel import Channel
from .clients import client_of
from .frame import Frame
from .params import camera_id, peer, variant
from .variants import Variant
from .writer import FrameWriter

__all__ = ["MjpegSession", "view_mjpeg"]

log = logging.getLogger(__name__)

MAX_FPS = 120.0


class MjpegWriter(FrameWriter):
    """An MJPEG viewer: it can only show pictures, so offline is a picture and quiet is a repeat."""

    __slots__ = ()
    needs_tick = True

    def picture(self, channel: Channel) -> Frame | None:
        """The no-signal picture while the camera is offline, else the newest frame (at its size)."""
        if not channel.online and (no_signal := channel.no_signal_at(self.variant)) is not None:
            return no_signal
        return channel.newest(self.variant)

    def tick(self, channel: Channel, now: float, interval: float) -> None:
        """Repeat the picture after `interval` quiet seconds: proxies and players drop silent streams."""
        if now - self.last_write_mono >= interval and (frame := self.picture(channel)) is not None:
            self.offer(frame, now)


class MjpegSession:
    """One MJPEG stream; it has no close handshake, so shutdown just ends the body."""

    def __init__(self, writer: MjpegWriter) -> None:
        self.writer = writer

    async def close_going_away(self) -> None:
        """Stop sending; the handler then ends the response."""
        self.writer.close()


def _fps_cap(request: web.Request) -> float:
    raw = request.query.get("fps")
    if raw is None:
        return 0.0
    try:
        fps = float(raw)
    except ValueError:
        fps = -1.0
    if not 0 < fps <= MAX_FPS:
        raise web.HTTPBadRequest(text=f"fps={raw!r} is invalid: expected a number in (0, {MAX_FPS:g}]\n")
    return fps


async def view_mjpeg(request: web.Request) -> web.StreamResponse:
    """`GET /cameras/{camera}/mjpeg[?fps=N]`: cached frame first, then each new one."""
    camera = camera_id(request)
    await request.app[AUTH].may_view(request, camera)
    fps = _fps_cap(request)
    wanted = variant(request)
    hub = request.app[HUB]
    channel = hub.channel(camera)
    if channel is None or not channel.seen:
        raise web.HTTPNotFound(text=f"camera {camera!r} has never published\n")
    ticket = request.app[LIMITS].admit_viewer(client_of(request), camera, channel.viewer_count, None)
    try:
        return await _stream(request, channel, fps, wanted)
    finally:
        ticket()


async def _stream(
    request: web.Request, channel: Channel, fps: float, wanted: Variant | None
) -> web.StreamResponse:
    camera = channel.camera
    settings = request.app[SETTINGS]
    boundary = request.app[BOUNDARY]
    response = web.StreamResponse(
        headers={
            "Content-Type": f"multipart/x-mixed-replace; boundary={boundary.decode()}",
            "Cache-Control": "no-store",
            "Pragma": "no-cache",
            "X-Accel-Buffering": "no",  # nginx: pass each part on at once
            "X-Content-Type-Options": "nosniff",
        }
    )
    chunked = request.version >= (1, 1)
    if chunked:
        response.enable_chunked_encoding()
    stream = await response.prepare(request)
    await response.write(b"--" + boundary + b"\r\n")
    transport = request.transport
    if transport is None:
        return response

    def encode(frame: Frame) -> bytes:
        return frame.mjpeg_chunk(boundary) if chunked else frame.mjpeg_part(boundary)

    writer = MjpegWriter(
        transport,
        stream,
        encode,
        kind="mjpeg",
        peer=peer(request),
        send_timeout=settings.viewer_send_timeout,
        sndbuf=settings.viewer_sndbuf,
        min_interval=1.0 / fps if fps else 0.0,
        variant=channel.resolve(wanted),  # no await from here to add_viewer
    )
    session = MjpegSession(writer)
    context = {"camera": camera, "peer": writer.peer}
    log.debug("camera %s: viewer %s connected (mjpeg)", camera, writer.peer, extra=context)
    with request.app[HUB].track(session):
        channel.add_viewer(writer)
        try:
            # The channel writes the frames; this handler only waits for the end. A client
            # that leaves is noticed on the next write, at the latest at the keep-alive.
            await writer.wait_closed()
        except asyncio.CancelledError:
            writer.close()
            raise
        finally:
            channel.remove_viewer(writer)
            log.debug(
                "camera %s: viewer %s left (mjpeg) after %d frames",
                camera,
                writer.peer,
                writer.frames_written,
                extra=context,
            )
    if not transport.is_closing():
        await response.write_eof()
    return response
