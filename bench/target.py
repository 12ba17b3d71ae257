"""Where the load goes: a broker's address and the camera under test."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Target"]


@dataclass(frozen=True)
class Target:
    """A broker (or the ideal relay) at host:port, and the camera every client uses."""

    host: str
    port: int
    camera: str

    @property
    def authority(self) -> str:
        """host:port, as the Host header wants it."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The base URL, for people."""
        return f"http://{self.authority}"

    def path(self, route: str) -> str:
        """The path of one of the camera's routes ("publish", "ws", "mjpeg", "snapshot.jpg")."""
        return f"/cameras/{self.camera}/{route}"
