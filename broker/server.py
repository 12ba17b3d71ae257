"""A broker listening on a socket: start, serve, stop. Used by the CLI and by the tests alike."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from .app import create_app
from .app_keys import LIMITS, SETTINGS
from .auth import RedactingAccessLogger
from .config import ConfigError, Settings
from .gate import ConnectionGate
from .limits import Limits
from .serverlog import ServerLog
from .tls import Certificate, TLSAcceptor

__all__ = ["BrokerServer"]

log = logging.getLogger(__name__)


class BrokerServer:
    """The application on an aiohttp runner and one TCP site, with TLS when a certificate is set."""

    def __init__(self, settings: Settings) -> None:
        self.certificate = _certificate(settings)
        self.app = create_app(settings)
        self.settings = self.app[SETTINGS]  # with the effective publish token
        self._runner = web.AppRunner(
            self.app,
            handle_signals=False,
            logger=ServerLog(logging.getLogger("aiohttp.server")),
            access_log_class=RedactingAccessLogger,
            access_log=logging.getLogger("aiohttp.access") if self.settings.access_log else None,
            shutdown_timeout=self.settings.shutdown_timeout,
        )

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of every listening socket."""
        return [(address[0], address[1]) for address in self._runner.addresses]

    @property
    def scheme(self) -> str:
        """The URL scheme clients use: https with TLS, else http."""
        return "http" if self.certificate is None else "https"

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        return self.addresses[0][1]

    async def start(self) -> None:
        """Bind and start serving."""
        await self._runner.setup()
        assert self._runner.server is not None
        limits = self.app[LIMITS]
        limits.track(self._runner.server)
        site = _Site(
            self._runner,
            limits,
            self.settings.host,
            self.settings.port,
            self.certificate,
            self.settings.tls_handshake_timeout,
            # Worker processes of `--workers` share the port; the kernel spreads connections over them.
            reuse_port=self.settings.workers > 1,
        )
        await site.start()

    def reload_tls(self) -> None:
        """Reread the certificate and key (on SIGHUP): new handshakes get them, open connections stay."""
        if self.certificate is None:
            log.info("nothing to reload: the broker serves no TLS (--tls-cert)")
            return
        self.certificate.reload()

    async def stop(self) -> None:
        """Close every connection with "going away" and stop, within the shutdown timeout."""
        await self._runner.cleanup()


def _certificate(settings: Settings) -> Certificate | None:
    """The certificate to serve, if any; ConfigError naming the config file if the paths came from it."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    try:
        return Certificate(settings.tls_cert, settings.tls_key)
    except ConfigError as exc:
        if {"tls_cert", "tls_key"} & settings.from_file:
            raise ConfigError(f"{settings.config}: {exc}") from None
        raise


class _Site(web.BaseSite):
    """A TCP site: each connection is counted against the limits as it is accepted (gate.py), and
    with a certificate completes TLS through a TLSAcceptor first.

    aiohttp's TCPSite would hand the certificate to the loop's own TLS server, without a
    bound on the handshake and without a log line when one fails (see tls.py).
    """

    __slots__ = ("_certificate", "_handshake_timeout", "_host", "_limits", "_port", "_reuse_port", "_tls")

    def __init__(
        self,
        runner: web.BaseRunner,
        limits: Limits,
        host: str,
        port: int,
        certificate: Certificate | None,
        handshake_timeout: float,
        *,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(runner)
        self._limits = limits
        self._reuse_port = reuse_port
        self._host = host
        self._port = port
        self._certificate = certificate
        self._handshake_timeout = handshake_timeout
        self._tls: TLSAcceptor | None = None

    @property
    def name(self) -> str:
        scheme = "http" if self._certificate is None else "https"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        handler = self._runner.server
        assert handler is not None
        if self._certificate is not None:
            self._tls = TLSAcceptor(self._certificate, handler, self._handshake_timeout, self._limits)
        self._server = await asyncio.get_running_loop().create_server(
            self._tls or ConnectionGate(handler, self._limits),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=True,
            reuse_port=self._reuse_port,
        )

    async def stop(self) -> None:
        await super().stop()
        if self._tls is not None:
            await self._tls.close()
