"""Where the load goes: a broker's address and the camera under test."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from .tls import client_context

__all__ = ["Target"]


@dataclass(frozen=True)
class Target:
    """A broker (or the ideal relay) at host:port, and the camera every client uses.

    With `tls_ca` (the PEM file of the CA to trust) every client speaks TLS to it.
    """

    host: str
    port: int
    camera: str
    tls_ca: str | None = None

    @property
    def authority(self) -> str:
        """host:port, as the Host header wants it."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The base URL, for people."""
        return f"{'https' if self.tls_ca else 'http'}://{self.authority}"

    def client_context(self) -> ssl.SSLContext | None:
        """The TLS context of a client of this target, None without TLS."""
        return client_context(self.tls_ca) if self.tls_ca else None

    def path(self, route: str) -> str:
        """The path of one of the camera's routes ("publish", "ws", "mjpeg", "snapshot.jpg")."""
        return f"/cameras/{self.camera}/{route}"
