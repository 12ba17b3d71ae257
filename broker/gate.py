"""Connections in: each one counted against the broker's limits as it is accepted.

A connection past a cap gets a short HTTP answer (429 or 503, with Retry-After) and is
closed before a byte of its request is read: no handler runs for it, no credential is
checked, nothing is logged per connection (limits.py logs once a minute per reason).
An admitted connection goes to aiohttp's request handler, which then owns the transport.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from aiohttp import web

from .clients import peer_of
from .limits import Limits, Refusal

__all__ = ["ConnectionGate"]


class ConnectionGate:
    """The protocol factory of a listening socket without TLS (tls.py admits TLS connections)."""

    def __init__(self, make_handler: Callable[[], web.RequestHandler], limits: Limits) -> None:
        self.make_handler = make_handler
        self.limits = limits

    def __call__(self) -> asyncio.Protocol:
        return _Arriving(self)


class _Arriving(asyncio.Protocol):
    """A connection just accepted, before the gate's verdict."""

    __slots__ = ("_gate",)

    def __init__(self, gate: ConnectionGate) -> None:
        self._gate = gate

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tcp = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport subclass
        gate = self._gate
        try:
            ticket = gate.limits.admit_connection(peer_of(tcp))
        except Refusal as refusal:
            tcp.write(refusal.response)
            tcp.close()
            return
        handler = gate.make_handler()
        gate.limits.adopt(handler, ticket)
        # From here on the transport reads into aiohttp's handler; this object is done.
        tcp.set_protocol(handler)
        handler.connection_made(tcp)

    def data_received(self, data: bytes) -> None:
        """A refused connection's request: not read."""

    def eof_received(self) -> bool:
        return False
