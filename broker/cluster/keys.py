"""Names of the cluster's Redis keys and pub/sub channels, and the Lua scripts that use them."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

__all__ = ["Keys", "Script"]

PREFIX = "framebroker"


class Keys:
    """Key and channel names. Keys live in the URL's database; pub/sub channels are shared by
    every database of a server, so their names carry the database number."""

    def __init__(self, db: int) -> None:
        self.channel_prefix = f"{PREFIX}:{db}:frames:".encode()
        self.control = f"{PREFIX}:{db}:control".encode()
        self.cameras = f"{PREFIX}:cameras"
        self.revoked = f"{PREFIX}:signed-out-sessions"
        self.owner_prefix = f"{PREFIX}:owner:"
        self.latest_prefix = f"{PREFIX}:latest:"
        self.agent_prefix = f"{PREFIX}:agent:"

    def frames(self, camera: str) -> bytes:
        """The pub/sub channel of one camera's frames."""
        return self.channel_prefix + camera.encode()

    def camera_of(self, channel: bytes) -> str | None:
        """The camera of a frames channel, else None."""
        if channel.startswith(self.channel_prefix):
            return channel[len(self.channel_prefix) :].decode("ascii", "replace")
        return None

    def owner(self, camera: str) -> str:
        """Who holds the camera's publisher (JSON), with a TTL the holder refreshes."""
        return self.owner_prefix + camera

    def latest(self, camera: str) -> str:
        """The camera's newest frame message, with a TTL."""
        return self.latest_prefix + camera

    def agent(self, camera: str) -> str:
        """What the camera's agent said in its hello (JSON), kept by the holder with its claim."""
        return self.agent_prefix + camera

    def seq(self, camera: str) -> str:
        """The camera's last sequence number, so a new holder continues from it."""
        return f"{PREFIX}:seq:{camera}"

    def demand(self, camera: str) -> str:
        """Hash: node process -> "count expiry_ms" of the camera's viewers on that node, followed by
        " snapshots" when a snapshot's grace is all of them."""
        return f"{PREFIX}:demand:{camera}"


class Script:
    """A Lua script, run by its SHA1. The link loads every script each time it connects, so
    pipelines can use the SHA1 alone (a Redis that forgot them breaks the link, which loads
    them again)."""

    def __init__(self, client: Redis, source: str) -> None:
        self._client = client
        self._script = client.register_script(source)

    async def __call__(self, keys: list[str | bytes], args: list[object]) -> object:
        return await self._script(keys=keys, args=args)

    def queue(self, pipe: Pipeline, keys: list[str | bytes], args: list[object]) -> None:
        """Add a run to `pipe`."""
        pipe.evalsha(self._script.sha, len(keys), *keys, *args)

    async def load(self) -> None:
        """Give the server the script."""
        await self._client.script_load(self._script.script)
