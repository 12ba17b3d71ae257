"""A broker listening on a socket: start, serve, stop. Used by the CLI and by the tests alike."""

from __future__ import annotations

import logging

from aiohttp import web

from .app import create_app
from .app_keys import LIMITS, SETTINGS
from .auth import RedactingAccessLogger
from .config import Settings

__all__ = ["BrokerServer"]


class BrokerServer:
    """The application on an aiohttp runner and one TCP site."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)
        self.settings = self.app[SETTINGS]  # with the effective publish token
        self._runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log_class=RedactingAccessLogger,
            access_log=logging.getLogger("aiohttp.access") if self.settings.access_log else None,
            shutdown_timeout=self.settings.shutdown_timeout,
        )

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of every listening socket."""
        return [(address[0], address[1]) for address in self._runner.addresses]

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        return self.addresses[0][1]

    async def start(self) -> None:
        """Bind and start serving."""
        await self._runner.setup()
        assert self._runner.server is not None
        self.app[LIMITS].attach(self._runner.server)
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port, reuse_address=True)
        await site.start()

    async def stop(self) -> None:
        """Close every connection with "going away" and stop, within the shutdown timeout."""
        await self._runner.cleanup()
