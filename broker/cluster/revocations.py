"""Sign-outs on every node: a session signed out on one node is refused by all of them."""

from __future__ import annotations

import time
from collections.abc import Callable

from ..sessions import MAX_REVOKED, Sessions
from .keys import Keys
from .link import RedisLink

__all__ = ["Revocations"]


class Revocations:
    """Keeps the sessions' signed-out list the same on every node, through a sorted set in Redis
    (session id, scored by when the session would have expired anyway) and a control message."""

    def __init__(
        self, link: RedisLink, keys: Keys, sessions: Sessions, announce: Callable[[dict[str, object]], None]
    ) -> None:
        self._link = link
        self._keys = keys
        self._sessions = sessions
        self._announce = announce
        sessions.on_revoke = self._revoked_here

    async def sync(self) -> None:
        """After (re)connecting: send ours, take everyone's."""
        now = time.time()
        client = self._link.client
        mine = self._sessions.revoked_sessions()
        pipe = client.pipeline(transaction=False)
        if mine:
            pipe.zadd(self._keys.revoked, mine)
        pipe.zremrangebyscore(self._keys.revoked, "-inf", now)
        pipe.zremrangebyrank(self._keys.revoked, 0, -MAX_REVOKED - 1)
        pipe.zrangebyscore(self._keys.revoked, now, "+inf", withscores=True)
        *_, everyone = await pipe.execute()
        for session, until in everyone:
            self._sessions.revoked_elsewhere(session.decode(), until)

    def heard(self, session: str, until: float) -> None:
        """Another node signed `session` out."""
        self._sessions.revoked_elsewhere(session, until)

    def _revoked_here(self, session: str, until: float) -> None:
        if self._link.up:
            self._link.spawn(self._send(session, until))
        # Else the next sync sends it.

    async def _send(self, session: str, until: float) -> None:
        try:
            await self._link.client.zadd(self._keys.revoked, {session: until})
        except Exception as exc:
            self._link.broken("sending a sign-out", exc)
        else:
            self._announce({"t": "signed-out", "s": session, "u": until})
