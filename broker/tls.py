"""The broker's own TLS: the certificate (reread on SIGHUP) and a bounded, logged handshake per connection.

Connections are accepted as plain TCP and then handed to `loop.connect_accepted_socket()`
with the TLS context, rather than served by `create_server(ssl=...)`: the loop's own
TLS server drops a failed or timed-out handshake silently (uvloop and asyncio log it
only in debug mode, and without the client's address), while here each one is one log
line naming the client.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import cast

from aiohttp import web

from .clients import peer_of
from .config import ConfigError
from .limits import ConnectionTicket, Limits, Refusal

__all__ = ["Certificate", "TLSAcceptor"]

log = logging.getLogger(__name__)


class Certificate:
    """The server's TLS context, built from a PEM certificate chain and its private key.

    `reload()` builds a complete new context and only then puts it in place: new
    handshakes get the new certificate, connections already open keep theirs, and
    files that cannot be used leave the old certificate serving. (Loading into the
    live context instead could leave it half-changed: OpenSSL drops the old key
    as soon as a new certificate that does not match it is loaded.)
    """

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert = cert
        self.key = key
        self.context = server_context(cert, key)

    def reload(self) -> bool:
        """Reread both files; False (and one warning) if they cannot be used."""
        try:
            self.context = server_context(self.cert, self.key)
        except ConfigError as exc:
            log.warning("TLS certificate not reloaded, the old one stays in use: %s", exc)
            return False
        log.info("TLS certificate reloaded from %s", self.cert)
        return True


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context with the ssl module's safe defaults and this certificate; ConfigError if unusable."""
    for name, path, marker, what in (
        ("tls_cert", cert, b"-----BEGIN CERTIFICATE-----", "certificate"),
        ("tls_key", key, b"PRIVATE KEY-----", "private key"),
    ):
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{name}={str(path)!r}: cannot read it: {exc.strerror or exc}") from None
        if marker not in pem:
            raise ConfigError(f"{name}={str(path)!r}: no PEM {what} in it")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cert, key, password=_refuse_passphrase)
    except _PassphraseNeeded:
        raise ConfigError(
            f"tls_key={str(key)!r}: the key is encrypted with a passphrase, and the broker needs it "
            "unencrypted, as certbot writes it (openssl pkey -in KEY -out NEW_KEY writes an "
            "unencrypted copy)"
        ) from None
    except ssl.SSLError as exc:
        raise ConfigError(
            f"tls_cert={str(cert)!r}, tls_key={str(key)!r}: not a PEM certificate chain and its "
            f"private key ({_reason(exc) if exc.reason else 'damaged PEM data'})"
        ) from None
    except OSError as exc:  # e.g. a file replaced or removed since it was read above
        raise ConfigError(
            f"tls_cert={str(cert)!r}, tls_key={str(key)!r}: cannot load them: {_reason(exc)}"
        ) from None
    return context


class TLSAcceptor:
    """A protocol factory for the listening socket: TLS first, within `timeout`, then aiohttp's handler.

    Handshakes under way are tracked, so that `close()` can end them at shutdown.
    """

    def __init__(
        self,
        certificate: Certificate,
        make_handler: Callable[[], web.RequestHandler],
        timeout: float,
        limits: Limits,
    ) -> None:
        self._certificate = certificate
        self._make_handler = make_handler
        self._timeout = timeout
        self.limits = limits
        self._handshakes: set[asyncio.Task[None]] = set()

    def __call__(self) -> asyncio.Protocol:
        return _Accepted(self)

    def start(self, sock: socket.socket, peer: str, ticket: ConnectionTicket) -> None:
        """Begin the handshake of a connection just accepted and admitted with `ticket`."""
        task = asyncio.get_running_loop().create_task(self._handshake(sock, peer, ticket))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def close(self) -> None:
        """Drop the connections still in their handshake."""
        for task in list(self._handshakes):
            task.cancel()
        await asyncio.gather(*self._handshakes, return_exceptions=True)

    async def _handshake(self, sock: socket.socket, peer: str, ticket: ConnectionTicket) -> None:
        loop = asyncio.get_running_loop()
        handlers: list[web.RequestHandler] = []

        def make_handler() -> web.RequestHandler:
            # The loop returns its TLS protocol, not this one: keep it for the ticket.
            handlers.append(self._make_handler())
            return handlers[-1]

        try:
            async with asyncio.timeout(self._timeout):
                # aiohttp's handler sees the connection once the handshake is done.
                transport, _ = await loop.connect_accepted_socket(
                    make_handler, sock, ssl=self._certificate.context
                )
        except TimeoutError:
            ticket()
            log.info(
                "client %s: no TLS handshake within %g s, disconnected",
                peer,
                self._timeout,
                extra={"peer": peer},
            )
            return
        except OSError as exc:  # ssl.SSLError included; the loop has closed the socket
            ticket()
            log.info("client %s: TLS handshake failed: %s", peer, _reason(exc), extra={"peer": peer})
            return
        except BaseException:  # cancelled at shutdown
            ticket()
            raise
        if transport.is_closing():
            ticket()  # lost already, before the handler could take the ticket
        else:
            self.limits.adopt(handlers[0], ticket)


class _Accepted(asyncio.Protocol):
    """A connection just accepted: its socket goes to the TLSAcceptor before anything is read from it.

    Upgrading this transport with `loop.start_tls()` would lose the client's first bytes:
    uvloop starts reading as soon as `connection_made()` returns, even when it paused
    reading. So the socket is taken over here, through a descriptor of our own, and this
    transport lets go of its descriptor without having read anything (closing one of two
    descriptors leaves the connection open).
    """

    def __init__(self, acceptor: TLSAcceptor) -> None:
        self._acceptor = acceptor

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tcp = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport subclass
        peer = peer_of(tcp)
        try:
            ticket = self._acceptor.limits.admit_connection(peer)
        except Refusal:
            tcp.abort()  # past a limit (logged there): no TLS yet to answer in
            return
        try:
            sock = socket.socket(fileno=os.dup(tcp.get_extra_info("socket").fileno()))
        except OSError as exc:
            log.warning(
                "client %s: disconnected: no descriptor left for its TLS handshake (%s)",
                peer,
                exc,
                extra={"peer": peer},
            )
            ticket()
            tcp.abort()
            return
        tcp.abort()
        sock.setblocking(False)
        self._acceptor.start(sock, peer, ticket)


class _PassphraseNeeded(Exception):
    """Raised by _refuse_passphrase: the private key is encrypted."""


def _refuse_passphrase() -> bytes:
    # OpenSSL calls this only for an encrypted key. Without it OpenSSL would ask on the
    # terminal, which a service does not have (and at a SIGHUP reload nobody is there to
    # answer); load_cert_chain() passes the exception on to its caller.
    raise _PassphraseNeeded


def _reason(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        if exc.reason == "HTTP_REQUEST":
            return "it sent plain HTTP (use https:// and wss://)"
        return exc.reason.lower().replace("_", " ")
    if isinstance(exc, ConnectionError) and not exc.strerror:
        return "the client closed the connection"
    return exc.strerror or str(exc) or type(exc).__name__
