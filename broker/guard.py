"""The first checks on every request: which client it is, whether it addressed us, and from which web page.

- **Host** (DNS rebinding): a hostile page can point its own name at 127.0.0.1 and read a
  broker on the visitor's machine; its requests then carry its own name in `Host`, which
  the broker does not answer to (421).
- **Origin** (cross-site WebSocket hijacking): browsers send the page's origin with every
  WebSocket upgrade and with requests that could change state. A page of another site
  must not watch through the visitor's session or network position (403).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from .clients import CLIENT, Client, ClientIdentifier, normalize_origin
from .config import Settings, is_loopback
from .metrics import Rejections
from .sessions import COOKIE_NAME

__all__ = ["HostPolicy", "guard_middleware"]

log = logging.getLogger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
KNOWN_HOSTS = 256


class HostPolicy:
    """Which `Host` names the broker answers to (`--allowed-hosts`)."""

    def __init__(self, allowed: Sequence[str], listening_on_loopback: bool) -> None:
        self._any = "*" in allowed or (not allowed and not listening_on_loopback)
        self._loopback_only = not allowed
        self._exact = {name.lower().rstrip(".") for name in allowed if not name.startswith(".")}
        self._suffixes = tuple(name.lower().rstrip(".") for name in allowed if name.startswith("."))
        self._known: dict[str, bool] = {}

    def allows(self, host_header: str) -> bool:
        """Whether a request addressed to `host_header` ("name[:port]", may be empty) is for us."""
        if self._any or not host_header:
            return True
        # Clients send the same few Host values on every request (a snapshot poller thousands
        # of times a second): the answer is remembered, for a bounded number of values.
        known = self._known.get(host_header)
        if known is None:
            if len(self._known) >= KNOWN_HOSTS:
                self._known.clear()
            known = self._known[host_header] = self._decide(host_header)
        return known

    def _decide(self, host_header: str) -> bool:
        name = _host_name(host_header)
        if _is_ip_literal(name):
            return True  # an address is never a rebound name
        if self._loopback_only:
            return is_loopback(name)
        return name in self._exact or any(
            name.endswith(suffix) or name == suffix[1:] for suffix in self._suffixes
        )


def _host_name(host_header: str) -> str:
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def guard_middleware(settings: Settings, rejections: Rejections) -> Middleware:
    """Identify the client, then refuse foreign hosts (421) and foreign origins (403) before any handler."""
    identifier = ClientIdentifier(settings.trusted_proxies)
    hosts = HostPolicy(settings.allowed_hosts, settings.on_loopback)
    allowed_origins = frozenset(normalize_origin(origin) for origin in settings.allowed_origins)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        client = identifier.identify(request)
        request[CLIENT] = client
        if not hosts.allows(client.host):
            log.info(
                "client %s: refused: addressed to host %r, not one of --allowed-hosts",
                client.address,
                _shown(client.host),
                extra={"peer": client.address},
            )
            rejections.count("host")
            raise web.HTTPMisdirectedRequest(
                text="this broker does not answer to that host name (see --allowed-hosts)\n"
            )
        origin = request.headers.get(hdrs.ORIGIN)
        if (
            origin is not None
            and _origin_matters(request)
            and not _origin_allowed(origin, client, allowed_origins)
        ):
            log.info(
                "client %s: refused a request from the web page of %r",
                client.address,
                _shown(origin),
                extra={"peer": client.address},
            )
            rejections.count("origin")
            raise web.HTTPForbidden(
                text="requests from another site's page are refused (see --allowed-origins)\n"
            )
        return await handler(request)

    return guard


def _origin_matters(request: web.Request) -> bool:
    """Upgrades, state changes and anything a session cookie would authorize."""
    return (
        request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"
        or request.method not in SAFE_METHODS
        or COOKIE_NAME in request.cookies
    )


def _origin_allowed(origin: str, client: Client, allowed: frozenset[str]) -> bool:
    normalized = normalize_origin(origin)
    # "null" (sandboxed frames, file: pages) and look-alikes never equal a real origin.
    return normalized == client.origin or normalized in allowed


def _shown(value: str) -> str:
    """A header value safe for one log line: printable and short."""
    return value[:100].encode("unicode_escape").decode("ascii")
