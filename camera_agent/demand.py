"""Whether anybody watches a camera, as the broker reports it."""

from __future__ import annotations

import asyncio

__all__ = ["Demand"]


class Demand:
    """The viewer count of one camera; ``always_on`` makes it wanted regardless.

    While the agent is disconnected the count is 0: nobody can watch through it.
    """

    def __init__(self, always_on: bool = False) -> None:
        self.always_on = always_on
        self.count = 0
        self._wanted = asyncio.Event()
        self._unwanted = asyncio.Event()
        self._update()

    @property
    def wanted(self) -> bool:
        return self.always_on or self.count > 0

    def set(self, count: int) -> None:
        """Record the broker's viewer count."""
        self.count = max(0, count)
        self._update()

    async def until_wanted(self) -> None:
        """Return once frames are wanted."""
        await self._wanted.wait()

    async def until_idle_for(self, grace: float) -> None:
        """Return once nobody has wanted frames for ``grace`` seconds in a row."""
        while True:
            await self._unwanted.wait()
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
