"""The broker under gunicorn: aiohttp's uvloop worker, with the broker's access log and log lines.

Run it as README's "Broker configuration" shows:
`gunicorn 'broker.app:create_app()' -k broker.gunicorn.Worker --bind ... --access-logfile -`.
"""

from __future__ import annotations

import logging
import os
from socket import AF_INET, AF_INET6

from aiohttp import web
from aiohttp.worker import GunicornUVLoopWebWorker

from .app_keys import SETTINGS
from .auth import RedactingAccessLogger
from .config import is_loopback
from .serverlog import ServerLog

__all__ = ["Worker"]


class Worker(GunicornUVLoopWebWorker):  # type: ignore[misc]  # gunicorn has no type hints
    """aiohttp's gunicorn worker whose access log redacts secrets (`?token=`, `?share=`), and
    whose error log does not quote requests it cannot parse (serverlog.py).

    aiohttp's worker builds its AppRunner with aiohttp's own access logger, whose
    request line prints the query, a publish token in full. The broker cannot fix that
    from inside the application: the runner, not the app, owns the access logger. But
    aiohttp's worker also accepts an async function returning a ready AppRunner, so
    this worker hands it one built from the same gunicorn settings aiohttp uses, with
    the broker's RedactingAccessLogger. Sockets, TLS (`--certfile`), signals and the
    graceful stop stay aiohttp's and gunicorn's.
    """

    def load_wsgi(self) -> None:
        self._listen_where_gunicorn_binds()
        super().load_wsgi()
        app = self.wsgi
        if not isinstance(app, web.Application):
            raise RuntimeError(f"broker.gunicorn.Worker serves 'broker.app:create_app()', not {app!r}")
        self._send_broker_logs_to_error_log(app)

        async def runner() -> web.AppRunner:
            return web.AppRunner(
                app,
                logger=ServerLog(self.log),
                keepalive_timeout=self.cfg.keepalive,
                access_log=self.log.access_log if self.cfg.accesslog else None,
                access_log_class=RedactingAccessLogger,
                shutdown_timeout=self.cfg.graceful_timeout / 100 * 95,  # as aiohttp's worker does
            )

        self.wsgi = runner

    def _listen_where_gunicorn_binds(self) -> None:
        """The broker's host and port are gunicorn's --bind (a non-loopback one, if any), whatever
        FRAMEBROKER_HOST says: its Host check and its refusal to serve every camera to a network
        without accounts must judge the address that really listens."""
        bound = [sock.getsockname() for sock in self.sockets if sock.family in (AF_INET, AF_INET6)]
        if bound:
            host, port = next((address for address in bound if not is_loopback(address[0])), bound[0])[:2]
            os.environ["FRAMEBROKER_HOST"] = host
            os.environ["FRAMEBROKER_PORT"] = str(port)

    def _send_broker_logs_to_error_log(self, app: web.Application) -> None:
        """The broker's log lines (camera, client, TLS) go where gunicorn's error log goes, at --log-level.

        gunicorn configures only its own loggers; without this, lines below WARNING
        would be lost. A `--log-config` that sets up the root logger is left alone.
        """
        root = logging.getLogger()
        if root.handlers:
            return
        root.handlers[:] = self.log.error_log.handlers
        root.setLevel(app[SETTINGS].log_level.upper())
