"""Whether anybody watches a camera, as the broker reports it."""

from __future__ import annotations

import asyncio

__all__ = ["Demand"]


class Demand:
    """The viewer count of one camera; ``always_on`` makes it wanted regardless.

    While the agent is disconnected the count is 0: nobody can watch through it.

    A broker counts a snapshot as a viewer for a while after it (its own grace), and says
    so with `snapshot_only`: when such demand ends, the camera may stop at once, without
    the agent's idle grace on top, so that a program polling snapshots now and then does
    not keep the camera running.
    """

    def __init__(self, always_on: bool = False) -> None:
        self.always_on = always_on
        self.count = 0
        self.snapshot_only = False  # the last non-zero count came from snapshots alone
        self._wanted = asyncio.Event()
        self._unwanted = asyncio.Event()
        self._update()

    @property
    def wanted(self) -> bool:
        return self.always_on or self.count > 0

    def set(self, count: int, snapshot_only: bool = False) -> None:
        """Record the broker's viewer count (and whether only snapshots make it up)."""
        self.count = max(0, count)
        if self.count:
            self.snapshot_only = snapshot_only
        self._update()

    async def until_wanted(self) -> None:
        """Return once frames are wanted."""
        await self._wanted.wait()

    async def until_idle_for(self, grace: float) -> None:
        """Return once nobody has wanted frames for ``grace`` seconds in a row (at once after snapshots)."""
        while True:
            await self._unwanted.wait()
            if self.snapshot_only:
                return
            waiter = asyncio.ensure_future(self._wanted.wait())
            try:
                done, _ = await asyncio.wait({waiter}, timeout=grace)
            finally:
                waiter.cancel()
            if not done:
                return

    def _update(self) -> None:
        if self.wanted:
            self._unwanted.clear()
            self._wanted.set()
        else:
            self._wanted.clear()
            self._unwanted.set()
