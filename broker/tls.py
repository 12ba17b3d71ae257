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

from .config import ConfigError

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
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"tls_cert={str(cert)!r}, tls_key={str(key)!r}: not a PEM certificate chain and its "
            f"private key ({_reason(exc) if exc.reason else 'damaged PEM data'})"
        ) from None
    return context


class TLSAcceptor:
    """A protocol factory for the listening socket: TLS first, within `timeout`, then aiohttp's handler.

    Handshakes under way are tracked, so that `close()` can end them at shutdown.
    """

    def __init__(
        self,
        certificate: Certificate,
        make_handler: Callable[[], asyncio.Protocol],
        timeout: float,
        admit: Callable[[str], Callable[[], None] | None] | None = None,
    ) -> None:
        self._certificate = certificate
        self._make_handler = make_handler
        self._timeout = timeout
        # Counts a connection during its handshake against the broker's limits (limits.py).
        self._admit = admit
        self._handshakes: set[asyncio.Task[None]] = set()

    def __call__(self) -> asyncio.Protocol:
        return _Accepted(self)

    def admit(self, peer: str) -> Callable[[], None] | None:
        """A release callback if the connection may start its handshake, else None."""
        return self._admit(peer) if self._admit is not None else (lambda: None)

    def start(self, sock: socket.socket, peer: str, release: Callable[[], None]) -> None:
        """Begin the handshake of a connection just accepted; `release` runs when it ends."""
        task = asyncio.get_running_loop().create_task(self._handshake(sock, peer))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)
        task.add_done_callback(lambda _: release())

    async def close(self) -> None:
        """Drop the connections still in their handshake."""
        for task in list(self._handshakes):
            task.cancel()
        await asyncio.gather(*self._handshakes, return_exceptions=True)

    async def _handshake(self, sock: socket.socket, peer: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout):
                # aiohttp's handler sees the connection once the handshake is done.
                await loop.connect_accepted_socket(self._make_handler, sock, ssl=self._certificate.context)
        except TimeoutError:
            log.info(
                "client %s: no TLS handshake within %g s, disconnected",
                peer,
                self._timeout,
                extra={"peer": peer},
            )
        except OSError as exc:  # ssl.SSLError included; the loop has closed the socket
            log.info("client %s: TLS handshake failed: %s", peer, _reason(exc), extra={"peer": peer})


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
        peer = _address(tcp)
        release = self._acceptor.admit(peer)
        if release is None:
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
            release()
            tcp.abort()
            return
        tcp.abort()
        sock.setblocking(False)
        self._acceptor.start(sock, peer, release)


def _address(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"


def _reason(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        if exc.reason == "HTTP_REQUEST":
            return "it sent plain HTTP (use https:// and wss://)"
        return exc.reason.lower().replace("_", " ")
    if isinstance(exc, ConnectionError) and not exc.strerror:
        return "the client closed the connection"
    return exc.strerror or str(exc) or type(exc).__name__
