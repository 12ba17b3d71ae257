"""Deliver one camera's newest frames to the broker, over a WebSocket or HTTP POSTs,
reconnecting forever with backoff."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp

from . import __version__
from .backoff import Backoff, FailureLog
from .config import BrokerConfig, CameraConfig
from .demand import Demand
from .slot import Frame, FrameSlot
from .stats import CameraStats

__all__ = ["HttpUplink", "Uplink", "WebSocketUplink", "open_uplink"]

log = logging.getLogger(__name__)

AGENT = f"camera-agent/{__version__}"

# Why the broker closed the publish socket (docs/protocol.md), and how loudly to say it.
_CLOSE_REASONS = {
    1000: (logging.WARNING, "the broker closed the connection"),
    1001: (logging.WARNING, "the broker is shutting down"),
    1003: (logging.ERROR, "the broker got too many frames in a row that were not complete JPEGs (a bug)"),
    1007: (logging.ERROR, "the broker rejected a control message (a bug)"),
    1009: (
        logging.ERROR,
        "the broker rejected a frame as too large: lower --size or --quality, "
        "or raise the broker's --max-frame-bytes",
    ),
    1011: (logging.WARNING, "the broker could not serve the connection and asks for a new one"),
    4000: (logging.WARNING, "another publisher took over this camera"),
}
# Unsent bytes the kernel may hold for the socket. Past this the sender waits, so the
# slot (not a socket buffer) absorbs a slow link and old frames are dropped, not queued.
_NOTSENT_LOWAT = 64 * 1024


class Uplink(Protocol):
    """Sends the camera's newest frames to the broker until cancelled."""

    async def run(self) -> None: ...


def open_uplink(
    camera: CameraConfig,
    broker: BrokerConfig,
    session: aiohttp.ClientSession,
    slot: FrameSlot,
    demand: Demand,
    stats: CameraStats,
    source_kind: str,
) -> Uplink:
    """The uplink for ``broker.transport``."""
    if broker.transport == "http":
        return HttpUplink(camera, broker, session, slot, stats)
    return WebSocketUplink(camera, broker, session, slot, demand, stats, source_kind)


class _Sender:
    """What both transports share: auth, the size check, retry pacing and its log."""

    def __init__(
        self,
        camera: CameraConfig,
        broker: BrokerConfig,
        session: aiohttp.ClientSession,
        slot: FrameSlot,
        stats: CameraStats,
    ) -> None:
        self._camera = camera
        self._broker = broker
        self._session = session
        self._slot = slot
        self._stats = stats
        self._headers = {"Authorization": f"Bearer {broker.token}", "User-Agent": AGENT}
        self._backoff = Backoff(broker.backoff_initial, broker.backoff_max)
        # Every line about this camera carries it, and the broker at the other end (host:port),
        # as fields: keys of their own in JSON logs, as the broker's lines carry camera and peer.
        self._log = logging.LoggerAdapter(log, {"camera": camera.id, "peer": urlsplit(broker.url).netloc})
        self._failures = FailureLog(self._log, f"camera {camera.id}")
        self._oversize_logged_at: float | None = None
        self._oversize = 0

    @property
    def failed_attempts(self) -> int:
        """Failed attempts since the last success."""
        return self._failures.failures

    def _fits(self, frame: Frame) -> bool:
        if len(frame.jpeg) <= self._broker.max_frame_bytes:
            return True
        self._stats.dropped += 1
        self._oversize += 1
        now = time.monotonic()
        # One line a minute at most: a camera set too large would otherwise log per frame.
        if self._oversize_logged_at is None or now - self._oversize_logged_at >= 60:
            self._log.warning(
                "camera %s: dropped %d frame(s) larger than --max-frame-bytes %d (last: %d bytes)",
                self._camera.id,
                self._oversize,
                self._broker.max_frame_bytes,
                len(frame.jpeg),
            )
            self._oversize_logged_at = now
            self._oversize = 0
        return False

    def _count_sent(self, frame: Frame) -> None:
        self._stats.sent += 1
        self._stats.sent_bytes += len(frame.jpeg)
        self._stats.sent_age += time.monotonic() - frame.captured_at


class WebSocketUplink(_Sender):
    """One WebSocket to ``/cameras/{id}/publish``: frames out, viewer counts in."""

    #: Seconds to wait for the broker's answer to our close frame.
    close_timeout: float = 5.0
    #: Seconds between looks at a backed-up socket buffer.
    drain_poll: float = 0.005

    def __init__(
        self,
        camera: CameraConfig,
        broker: BrokerConfig,
        session: aiohttp.ClientSession,
        slot: FrameSlot,
        demand: Demand,
        stats: CameraStats,
        source_kind: str,
    ) -> None:
        super().__init__(camera, broker, session, slot, stats)
        self._demand = demand
        self._url = broker.publish_url(camera.id, websocket=True)
        self._hello = json.dumps({"type": "hello", "agent": AGENT, "source": source_kind})
        self._connections = 0
        self._confirm: asyncio.TimerHandle | None = None

    async def run(self) -> None:
        """Connect, publish until the connection ends, wait, and again, forever."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            reason, level = await self._connect_and_publish()
            # A connection that outlived the longest backoff counts as healthy.
            if loop.time() - started >= self._broker.backoff_max:
                self._backoff.reset()
            delay = self._backoff.next_delay()
            self._failures.failed(reason, delay, level)
            await asyncio.sleep(delay)

    # -- private ----------------------------------------------------------------

    async def _connect_and_publish(self) -> tuple[str, int]:
        try:
            # A server that accepts TCP but never answers must not hold us forever.
            async with asyncio.timeout(self._broker.connect_timeout):
                ws = await self._session.ws_connect(
                    self._url,
                    headers=self._headers,
                    heartbeat=self._broker.heartbeat,
                    compress=0,  # JPEG does not deflate; compressing only costs CPU
                    timeout=aiohttp.ClientWSTimeout(ws_close=self.close_timeout),
                )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in (401, 403):
                return f"the broker rejected the token (HTTP {exc.status})", logging.ERROR
            return f"the broker refused the WebSocket (HTTP {exc.status})", logging.WARNING
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return _describe(exc), logging.WARNING
        try:
            await self._on_connected(ws)
            await self._publish(ws)
        except (aiohttp.ClientError, OSError) as exc:
            self._log.debug("camera %s: connection error: %r", self._camera.id, exc)
        finally:
            if self._confirm is not None:
                self._confirm.cancel()
                self._confirm = None
            self._demand.set(0)  # nobody can watch through a closed connection
            if not ws.closed:
                await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY)
        return _close_reason(ws)

    async def _on_connected(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._connections += 1
        if self._connections > 1:
            self._stats.reconnects += 1
        if self._failures.failing:
            # Back only once the connection holds: a broker that accepts and then closes at
            # once (1009, a 4000 tug of war) must not log connected/disconnected every retry.
            self._confirm = asyncio.get_running_loop().call_later(
                min(self._broker.backoff_max, 5.0), self._failures.recovered, f"connected to {self._url}"
            )
        else:
            self._failures.recovered(f"connected to {self._url}")
        sock = ws.get_extra_info("socket")
        if sock is not None and hasattr(socket, "TCP_NOTSENT_LOWAT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, _NOTSENT_LOWAT)
        self._slot.discard()  # captured while offline: stale by now
        await ws.send_str(self._hello)

    async def _publish(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        tasks = {
            asyncio.create_task(self._send_frames(ws), name=f"{self._camera.id}-send"),
            asyncio.create_task(self._receive(ws), name=f"{self._camera.id}-receive"),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def _send_frames(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        transport = _transport(ws)
        while True:
            frame = await self._slot.take()
            if not self._fits(frame):
                continue
            await ws.send_bytes(frame.jpeg)
            self._count_sent(frame)
            # aiohttp checks backpressure only every 256 KiB written, so on a slow link
            # several frames could wait in the transport. Wait until this one has left
            # user space instead: meanwhile newer frames replace each other in the slot.
            while transport is not None and transport.get_write_buffer_size() and not transport.is_closing():
                await asyncio.sleep(self.drain_poll)

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                self._on_text(message.data)
            elif message.type is aiohttp.WSMsgType.ERROR:
                return

    def _on_text(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            self._log.debug("camera %s: ignored a non-JSON message", self._camera.id)
            return
        if isinstance(message, dict) and message.get("type") == "viewers":
            count = message.get("count")
            if isinstance(count, int) and not isinstance(count, bool):
                self._log.debug("camera %s: %d viewer(s)", self._camera.id, count)
                self._demand.set(count, snapshot_only=message.get("snapshot_only") is True)


class HttpUplink(_Sender):
    """``POST /cameras/{id}/publish`` per frame, for networks that block WebSockets.

    The broker cannot report viewers over HTTP, so this transport is always on.
    """

    def __init__(
        self,
        camera: CameraConfig,
        broker: BrokerConfig,
        session: aiohttp.ClientSession,
        slot: FrameSlot,
        stats: CameraStats,
    ) -> None:
        super().__init__(camera, broker, session, slot, stats)
        self._url = broker.publish_url(camera.id, websocket=False)
        self._headers["Content-Type"] = "image/jpeg"
        self._timeout = aiohttp.ClientTimeout(total=broker.connect_timeout)
        self._delivering = False

    async def run(self) -> None:
        """POST the newest frame, one at a time, forever."""
        while True:
            frame = await self._slot.take()
            if self._fits(frame):
                await self._post(frame)

    async def _post(self, frame: Frame) -> None:
        try:
            async with self._session.post(
                self._url, data=frame.jpeg, headers=self._headers, timeout=self._timeout
            ) as response:
                status = response.status
                await response.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            await self._retry(_describe(exc), logging.WARNING)
            return
        if 200 <= status < 300:
            self._count_sent(frame)
            if not self._delivering:
                self._delivering = True
                self._failures.recovered(f"publishing to {self._url}")
            self._backoff.reset()
        elif status in (401, 403):
            await self._retry(f"the broker rejected the token (HTTP {status})", logging.ERROR)
        elif status in (413, 415):
            self._stats.dropped += 1
            reason = "too large" if status == 413 else "not a complete JPEG"
            self._log.error("camera %s: the broker rejected a frame as %s", self._camera.id, reason)
        else:
            await self._retry(f"the broker answered HTTP {status}", logging.WARNING)

    async def _retry(self, reason: str, level: int) -> None:
        self._delivering = False
        delay = self._backoff.next_delay()
        self._failures.failed(reason, delay, level)
        await asyncio.sleep(delay)


def _transport(ws: aiohttp.ClientWebSocketResponse) -> asyncio.WriteTransport | None:
    """The socket transport under ``ws``; aiohttp does not expose it publicly, so this
    degrades to None (aiohttp's own, coarser backpressure) if its internals change."""
    transport = getattr(getattr(ws, "_writer", None), "transport", None)
    # Duck-typed: uvloop's transports do not subclass asyncio.WriteTransport.
    return transport if callable(getattr(transport, "get_write_buffer_size", None)) else None


def _close_reason(ws: aiohttp.ClientWebSocketResponse) -> tuple[str, int]:
    code = ws.close_code
    if code in _CLOSE_REASONS:
        level, text = _CLOSE_REASONS[code]
        return f"disconnected: {text} (code {code})", level
    error = ws.exception()
    detail = f": {_describe(error)}" if error is not None else ""
    return f"disconnected: connection lost (code {code}){detail}", logging.WARNING


def _describe(exc: BaseException) -> str:
    """One line for a network error, without a traceback."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port}: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text
