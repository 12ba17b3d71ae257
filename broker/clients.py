"""Who is on the other end of a request: address, scheme and host, through trusted proxies only."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

__all__ = ["CLIENT", "Client", "ClientIdentifier", "client_of", "peer_of"]

FORWARDING_HEADERS = ("X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Real-IP", "Forwarded")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Client:
    """The client as the broker believes it: forwarded headers count only from trusted proxies."""

    address: str  # IP address, or "unknown"
    scheme: str  # "http" or "https", as the client addressed the broker
    host: str  # the Host it addressed ("name[:port]"), "" if it sent none
    local: bool  # connected from this machine directly, not through any proxy

    @property
    def origin(self) -> str:
        """The broker's own web origin for this client: scheme://host[:port]."""
        return normalize_origin(f"{self.scheme}://{self.host}")


CLIENT = web.RequestKey("client", Client)


def client_of(request: web.Request) -> Client:
    """The request's client (set by the guard middleware; computed without proxies if it did not run)."""
    client = request.get(CLIENT)
    if client is None:
        client = ClientIdentifier(()).identify(request)
    return client


def normalize_origin(origin: str) -> str:
    """Lower-case scheme and host, without the scheme's default port."""
    origin = origin.strip().lower().rstrip("/")
    for scheme, port in (("http://", ":80"), ("https://", ":443")):
        if origin.startswith(scheme) and origin.endswith(port):
            return origin[: -len(port)]
    return origin


class ClientIdentifier:
    """Applies `--trusted-proxies`: their X-Forwarded-* headers name the client; anyone else's are ignored."""

    def __init__(self, trusted_proxies: Sequence[str]) -> None:
        self._trusted: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(proxy, strict=False) for proxy in trusted_proxies
        )

    def identify(self, request: web.BaseRequest) -> Client:
        """The client of `request`."""
        peer = peer_of(request.transport)
        scheme = "https" if request.secure else "http"
        host = request.headers.get("Host", "")
        forwarded = any(header in request.headers for header in FORWARDING_HEADERS)
        if not forwarded:
            return Client(peer, scheme, host, local=_is_loopback(peer))
        if not self._is_trusted(peer):
            # A proxy we were not told to trust: believe nothing it says, and do not treat
            # the request as local (a same-host proxy would otherwise open a local-only broker).
            return Client(peer, scheme, host, local=False)
        address = peer
        for hop in reversed(_header_list(request, "X-Forwarded-For")):
            address = hop
            if not self._is_trusted(hop):
                break
        # The proxy nearest to us appends last: its word is the one to take.
        proto = _header_list(request, "X-Forwarded-Proto")[-1:]
        if proto and proto[0].lower() in ("http", "https"):
            scheme = proto[0].lower()
        host = (_header_list(request, "X-Forwarded-Host")[-1:] or [host])[0]
        return Client(address, scheme, host, local=False)

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)


def peer_of(transport: asyncio.BaseTransport | None) -> str:
    """The address at the other end of a connection, "unknown" for a Unix socket or a closed one.

    An IPv4 client of a dual-stack IPv6 socket arrives as ::ffff:a.b.c.d; it is a.b.c.d
    here, so that loopback stays loopback and one client has one address in every count.
    """
    peername = transport.get_extra_info("peername") if transport is not None else None
    if not (isinstance(peername, tuple | list) and peername):
        return "unknown"
    address = str(peername[0])
    if address.startswith("::ffff:"):
        try:
            mapped = ipaddress.IPv6Address(address).ipv4_mapped
        except ValueError:
            mapped = None
        if mapped is not None:
            return str(mapped)
    return address


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _header_list(request: web.BaseRequest, name: str) -> list[str]:
    return [
        item.strip()
        for value in request.headers.getall(name, [])
        for item in value.split(",")
        if item.strip()
    ]
