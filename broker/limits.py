"""Caps that no client may exhaust: viewers (whole broker, per camera, per address) and descriptors.

Checked once per connection, before any upgrade or stream byte; refusals are 503 (the broker
or the camera is full) or 429 (this address has enough), with Retry-After, and are logged at
most once a minute per reason. Connections are counted as they are accepted (gate.py).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from http import HTTPStatus

from aiohttp import web
from aiohttp.typedefs import Handler

from .clients import Client
from .config import Settings
from .lograte import LogLimiter
from .metrics import Rejections

__all__ = ["ConnectionTicket", "Limits", "Refusal", "ViewerTicket"]

log = logging.getLogger(__name__)

RETRY_AFTER = "10"  # seconds: long enough to matter, short enough for a viewer page to come back


def open_file_limit() -> int:
    """The soft limit on open descriptors (the CLI raises it to the hard limit at start)."""
    try:
        import resource
    except ImportError:  # Windows
        return 8192
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def descriptors_in_use() -> int:
    """Descriptors open now; a fair guess where /proc is missing."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 64


ViewerTicket = Callable[[], None]  # call when the viewer leaves (again is harmless)
ConnectionTicket = Callable[[], None]  # call when the connection ends (again is harmless)


class Refusal(Exception):
    """A connection past a cap, refused before its request is read; `response` is the raw answer."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        body = (text + "; try again later\n").encode()
        self.response = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: {RETRY_AFTER}\r\nConnection: close\r\n\r\n"
        ).encode() + body


class Limits:
    """Counts connections and viewers and says no before a cap is passed."""

    def __init__(
        self, settings: Settings, exempt: Sequence[str] = (), rejections: Rejections | None = None
    ) -> None:
        self._settings = settings
        self._rejections = rejections or Rejections()
        self._exempt = tuple(ipaddress.ip_network(net, strict=False) for net in exempt)
        self._fd_limit = open_file_limit()
        self._fd_baseline = descriptors_in_use()
        self.viewers = 0
        self.connections = 0
        self._viewers_per_address: Counter[str] = Counter()
        self._connections_per_peer: Counter[str] = Counter()
        self._tickets: dict[web.RequestHandler, ConnectionTicket] = {}
        self._server: web.Server | None = None
        self._busy: set[web.RequestHandler] = set()  # connections in the middle of a request
        self._swept = 0.0  # monotonic time of the last sweep of lingering connections
        self._refusals = LogLimiter(log)

    # -- viewers ---------------------------------------------------------------------

    def admit_viewer(
        self, client: Client, camera: str | None, camera_viewers: int = 0, waiting: int | None = None
    ) -> ViewerTicket:
        """Count a new viewer of `camera`, or raise 429/503; the ticket undoes the count.

        `camera` None: a viewer socket that subscribes to cameras later (GET /ws), each
        subscription checked with `check_camera`.
        """
        settings = self._settings
        address = client.address
        limited = not self._is_exempt(address)
        if limited and self._viewers_per_address[address] >= settings.max_connections_per_ip:
            self._refuse(
                "viewers_per_ip",
                f"too many viewers from {address} (max_connections_per_ip={settings.max_connections_per_ip})",
                web.HTTPTooManyRequests,
            )
        if self.viewers >= settings.max_viewers:
            self._refuse("viewers", f"the broker is full (max_viewers={settings.max_viewers})")
        if self._descriptors_left() < 2 + settings.descriptor_reserve:
            self._refuse("descriptors", "the broker is full (it is close to its limit of open files)")
        if camera is not None:
            self.check_camera(camera, camera_viewers, waiting)
        self.viewers += 1
        if limited:
            self._viewers_per_address[address] += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.viewers -= 1
            if limited:
                self._viewers_per_address[address] -= 1
                if not self._viewers_per_address[address]:
                    del self._viewers_per_address[address]

        return release

    def check_camera(self, camera: str, camera_viewers: int, waiting: int | None) -> None:
        """Raise 503 if `camera` has no room for one more viewer.

        `waiting`: None for a camera that has published, else how many viewers wait for
        cameras that never have.
        """
        settings = self._settings
        if camera_viewers >= settings.max_viewers_per_camera:
            self._refuse(
                "viewers_per_camera",
                f"camera {camera!r} is full (max_viewers_per_camera={settings.max_viewers_per_camera})",
            )
        if waiting is not None and waiting >= settings.max_waiting_viewers:
            self._refuse(
                "waiting_viewers",
                f"too many viewers wait for cameras that never published (max_waiting_viewers="
                f"{settings.max_waiting_viewers})",
            )

    # -- connections -----------------------------------------------------------------

    def admit_connection(self, peer: str) -> ConnectionTicket:
        """Count a connection just accepted from `peer`, or raise Refusal; the ticket undoes the count.

        Called before a byte of the connection is read (gate.py), and for TLS before its
        handshake, which holds a descriptor too for up to --tls-handshake-timeout.
        """
        left = self._descriptors_left()
        # Idle connections told to close free their descriptors within this loop pass.
        closing = self._sweep() if left < self._settings.descriptor_reserve else 0
        # Publishers and short requests may use half the reserve; viewers stop before it.
        if left + closing < self._settings.descriptor_reserve // 2:
            self._rejections.count("connections")
            self._refusals.warning("connections", "refusing connections: close to the limit of open files")
            raise Refusal(503, "the broker is full (it is close to its limit of open files)")
        limit = self._settings.max_connections_per_ip
        if not self._is_exempt(peer) and self._connections_per_peer[peer] >= limit:
            self._rejections.count("connections_per_ip")
            self._refusals.warning(
                "connections_per_ip",
                "refusing connections from %s: more than max_connections_per_ip=%d",
                peer,
                limit,
            )
            raise Refusal(429, f"too many connections from {peer} (max_connections_per_ip={limit})")
        self.connections += 1
        self._connections_per_peer[peer] += 1
        done = False

        def release() -> None:
            nonlocal done
            if done:
                return
            done = True
            self.connections -= 1
            self._connections_per_peer[peer] -= 1
            if not self._connections_per_peer[peer]:
                del self._connections_per_peer[peer]

        return release

    def track(self, server: web.Server) -> None:
        """Release a connection's ticket when aiohttp's handler of it (see `adopt`) loses it.

        aiohttp has no hook for that either, so this wraps the call its handlers make
        to their server.
        """
        self._server = server
        closed = server.connection_lost

        def connection_lost(handler: web.RequestHandler, exc: BaseException | None = None) -> None:
            ticket = self._tickets.pop(handler, None)
            if ticket is not None:
                ticket()
            closed(handler, exc)

        server.connection_lost = connection_lost  # type: ignore[method-assign]

    def adopt(self, handler: web.RequestHandler, ticket: ConnectionTicket) -> None:
        """`handler` serves the connection of `ticket` from now on, until it loses it."""
        self._tickets[handler] = ticket

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Marks the connection busy while its request runs, so that a sweep knows the idle ones."""
        connection = request.protocol
        self._busy.add(connection)
        try:
            return await handler(request)
        finally:
            self._busy.discard(connection)

    def tight(self) -> bool:
        """Descriptors are into the reserve: connections should end with their request."""
        return self._descriptors_left() < self._settings.descriptor_reserve

    # -- internals -------------------------------------------------------------------

    def _sweep(self) -> int:
        """Into the reserve, end every connection's keep-alive (at most once a second); the number
        of idle connections, which close at once.

        The reserve is the publishers' room: idle keep-alive connections, and connections
        that were accepted but never sent a request, would otherwise keep it until they
        time out or forever. aiohttp's `close()` closes an idle connection at once and
        one in the middle of a request (a viewer, a publisher) when that request ends.
        """
        now = time.monotonic()
        if self._server is None or now - self._swept < 1.0:
            return 0
        self._swept = now
        idle = 0
        for handler in self._server.connections:
            handler.close()
            idle += handler not in self._busy
        return idle

    def _descriptors_left(self) -> int:
        # Each connection holds one descriptor, each viewer one more (the writer's own).
        return self._fd_limit - self._fd_baseline - self.connections - self.viewers

    def _is_exempt(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return True  # "unknown": a Unix socket or a test transport, not a remote client
        return ip.is_loopback or any(ip in network for network in self._exempt)

    def _refuse(
        self, reason: str, text: str, kind: type[web.HTTPException] = web.HTTPServiceUnavailable
    ) -> None:
        self._rejections.count(reason)
        self._refusals.warning(reason, "refusing viewers: %s", text)
        refusal = kind(text=text + "; try again later\n", headers={"Retry-After": RETRY_AFTER})
        # A refused viewer comes back after Retry-After on a new connection; kept alive, this
        # one would hold a descriptor that publishers may need.
        refusal.force_close()
        raise refusal
