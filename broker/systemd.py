"""systemd's notify protocol (sd_notify(3)): "ready", "stopping", and the watchdog's pings.

The protocol is one datagram of `KEY=value` lines to the Unix socket in $NOTIFY_SOCKET,
so it is written here rather than taken from a package: the `sdnotify` package does the
same with a blocking socket and reads neither $WATCHDOG_USEC nor $WATCHDOG_PID, and
`systemd-python` needs libsystemd's headers and a compiler to install.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import Protocol

__all__ = ["Notifier", "ServiceNotifier"]

log = logging.getLogger(__name__)


class Notifier(Protocol):
    """Who hears that a broker process is ready or stopping."""

    def ready(self, status: str) -> None:
        """The process serves."""

    def stopping(self) -> None:
        """The process is shutting down."""


class ServiceNotifier:
    """Tells systemd (Type=notify) that the service is ready or stopping, and pings its
    watchdog (WatchdogSec=) from the event loop. Does nothing outside systemd.

    The pings come from a task on the service's own event loop, not from a thread: a loop
    that is stuck stops pinging, and systemd restarts the service.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        # "@name" is a socket in Linux's abstract namespace, written with a leading NUL.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._socket: socket.socket | None = None
        self.watchdog_interval = _ping_interval(environ)
        self._watchdog: asyncio.Task[None] | None = None
        self._failing = False
        self._healthy: Callable[[], bool] | None = None

    def ready(self, status: str, healthy: Callable[[], bool] | None = None) -> None:
        """Report READY=1 with a status line, and start pinging the watchdog if systemd asked for it
        (only while `healthy()` says so, if given: a supervisor answers for its workers)."""
        self._healthy = healthy
        self.notify("READY=1", f"STATUS={status}")
        if self._address and self.watchdog_interval is not None and self._watchdog is None:
            self._watchdog = asyncio.create_task(self._feed_watchdog(), name="systemd-watchdog")

    def stopping(self) -> None:
        """Stop the watchdog's pings and report STOPPING=1 (the last message)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self.notify("STOPPING=1", "STATUS=stopping")
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def notify(self, *fields: str) -> None:
        """Send `KEY=value` fields in one datagram; a failure is logged once until one succeeds."""
        if not self._address:
            return
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # A full socket queue must not block the event loop; a lost ping is followed by the next.
            self._socket.setblocking(False)
        try:
            self._socket.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            if not self._failing:
                log.warning("could not notify systemd at %r: %s", self._address.lstrip("\0"), exc)
            self._failing = True
        else:
            self._failing = False

    async def _feed_watchdog(self) -> None:
        assert self.watchdog_interval is not None
        while True:
            if self._healthy is None or self._healthy():
                self.notify("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_interval)


def _ping_interval(environ: Mapping[str, str]) -> float | None:
    """Seconds between watchdog pings (half of WATCHDOG_USEC, as sd_watchdog_enabled(3)
    advises), or None when no watchdog is set for this process."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = environ.get("WATCHDOG_PID")
    if usec <= 0 or (pid is not None and pid.strip() != str(os.getpid())):
        return None
    return usec / 2 / 1_000_000
