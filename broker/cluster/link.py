"""The Redis link of a node: connecting, noticing an outage (a dead or frozen Redis), and coming back.

Every other part of the cluster uses `link.client` while `link.up`, and calls
`link.broken()` when a command fails; the link then logs the outage once, drops its
connections (so nothing waits on a frozen server), and reconnects with backoff and
jitter, running each part's `on_up` step again once Redis answers.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any
from urllib.parse import parse_qs, urlsplit

from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from ..config import ConfigError, Settings

__all__ = ["RedisLink", "redis_location"]

log = logging.getLogger("broker.cluster")

FIRST_BACKOFF = 0.1


def redis_location(url: str) -> str:
    """host:port/db of a Redis URL, for logs: never the password."""
    parts = urlsplit(url)
    db = parts.path.lstrip("/") or "0"
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}/{db}"


def database_number(settings: Settings) -> int:
    """The database the URL names: the cluster's keys and channels are kept apart per database."""
    parts = urlsplit(settings.redis)
    try:
        return int(parts.path.lstrip("/") or "0")
    except ValueError:
        raise ConfigError(
            f"{settings.qualified('redis')}={redis_location(settings.redis)!r} is invalid: "
            "the path must be a database number"
        ) from None


def _check_protocol(settings: Settings) -> None:
    # redis-py lets the URL's parameters override its arguments, and RESP3 would undo the
    # choice of RESP2 below.
    protocols = parse_qs(urlsplit(settings.redis).query).get("protocol", [])
    if any(value != "2" for value in protocols):
        raise ConfigError(
            f"{settings.qualified('redis')}={redis_location(settings.redis)!r} is invalid: "
            f"protocol={protocols[0]} is not supported: the broker speaks RESP2 (protocol=2) to Redis"
        )


def _password(settings: Settings) -> str | None:
    if settings.redis_password_file is None:
        return None
    try:
        return settings.redis_password_file.read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"{settings.qualified('redis_password_file')}={str(settings.redis_password_file)!r}: "
            f"cannot read it: {exc.strerror or exc}"
        ) from None


class RedisLink:
    """One node's connections to Redis and their state: connecting, up, or down (an outage)."""

    def __init__(self, settings: Settings) -> None:
        self.location = redis_location(settings.redis)
        self.db = database_number(settings)
        _check_protocol(settings)
        name = settings.qualified("redis")
        self.timeout = settings.redis_timeout
        password = _password(settings)
        extra = {"password": password} if password is not None else {}
        try:
            self.client: Redis = Redis.from_url(
                settings.redis,
                socket_timeout=settings.redis_timeout,
                socket_connect_timeout=settings.redis_timeout,
                health_check_interval=settings.redis_timeout,
                # The link reconnects by itself, with backoff; redis-py retrying inside a
                # command would only hold that command (and a frame) longer.
                retry=Retry(NoBackoff(), 0),
                # RESP2: under RESP3, redis-py's hiredis parser turns every pub/sub message into a
                # debug string (str() of the payload: milliseconds per 120 kB frame) whatever the
                # log level. RESP2 hands the message over as it is.
                protocol=2,
                **extra,
            )
            # The URL's query parameters reach redis-py only when it makes a connection, which
            # the link then reports as an outage for ever; making one now (no I/O yet) finds an
            # unknown parameter (TypeError) or a bad value at start.
            self.client.connection_pool.make_connection()
        except TypeError as exc:
            raise ConfigError(
                f"{name}={self.location!r} is invalid: the URL has a parameter redis-py does not know ({exc})"
            ) from None
        except (ValueError, RedisError) as exc:
            raise ConfigError(f"{name}={self.location!r} is invalid: {exc}") from None
        self.state = "connecting"
        self.since = time.time()
        self._on_connect: list[Callable[[], Awaitable[None]]] = []
        self._on_up: list[Callable[[], Awaitable[None]]] = []
        self._on_down: list[Callable[[], None]] = []
        self._broken = asyncio.Event()
        self._reason = ""
        self._tasks: set[asyncio.Future[None]] = set()

    @property
    def up(self) -> bool:
        """Whether Redis answers: cross-node work is done only then."""
        return self.state == "up"

    def on_connect(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run `step` each time Redis answers, before the link counts as up: what every command
        relies on (the scripts) is in place before any command is sent."""
        self._on_connect.append(step)

    def on_up(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run `step` each time the link comes up (in the order registered); a failure breaks the link."""
        self._on_up.append(step)

    def on_down(self, step: Callable[[], None]) -> None:
        """Run `step` each time the link goes down."""
        self._on_down.append(step)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in the background, holding on to it until it ends (it handles its own errors)."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def broken(self, what: str, exc: BaseException) -> None:
        """A command failed: treat Redis as gone until it answers again."""
        if self.state == "up" and not self._broken.is_set():
            self._reason = f"{what}: {exc!r}" if not str(exc) else f"{what}: {exc}"
            self._broken.set()

    async def run(self) -> None:
        """Connect, watch, and reconnect forever."""
        backoff = FIRST_BACKOFF
        while True:
            try:
                await asyncio.wait_for(self.client.ping(), self.timeout)
                for step in self._on_connect:
                    await asyncio.wait_for(step(), self.timeout * 2)
                self._broken.clear()
                self._set_state("up")
                for step in self._on_up:
                    await asyncio.wait_for(step(), self.timeout * 2)
            except Exception as exc:  # any failure to reach or use Redis is an outage, never a crash
                self._reason = self._reason if self._broken.is_set() else (str(exc) or repr(exc))
                await self._went_down()
                # Full jitter, capped at the timeout: a Redis that returns is used again within
                # a few seconds, and nodes that lost it together do not reconnect together.
                await asyncio.sleep(random.uniform(0, backoff))
                backoff = min(backoff * 2, self.timeout)
                continue
            backoff = FIRST_BACKOFF
            await self._watch()
            await self._went_down()

    async def close(self) -> None:
        """Let background work finish (within the timeout), then drop every connection."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.timeout)
        for task in self._tasks:
            task.cancel()
        await self.client.aclose()

    def status(self) -> dict[str, object]:
        """The link for /healthz: state and since when (it never fails liveness)."""
        return {"state": self.state, "since": round(self.since, 3), "server": self.location}

    # -- internals -------------------------------------------------------------------

    async def _watch(self) -> None:
        """Ping every timeout; a slow answer, a failure or a broken() ends the watch."""
        while True:
            try:
                await asyncio.wait_for(self._broken.wait(), self.timeout)
            except TimeoutError:
                pass
            else:
                return
            try:
                await asyncio.wait_for(self.client.ping(), self.timeout)
            except Exception as exc:
                self._reason = f"no answer to PING within {self.timeout:g} s ({exc!r})"
                return

    async def _went_down(self) -> None:
        was = self.state
        self._set_state("down")
        if was != "down":
            log.warning(
                "redis %s unreachable (%s): serving this node's own cameras to its own viewers; reconnecting",
                self.location,
                self._reason,
            )
            for step in self._on_down:
                step()
        self._broken.clear()
        # Close every socket, so that commands stuck on a frozen server fail now.
        await self.client.connection_pool.disconnect(inuse_connections=True)

    def _set_state(self, state: str) -> None:
        if state == self.state:
            return
        if state == "up":
            if self.state == "down":
                log.info("redis %s reachable again after %.1f s", self.location, time.time() - self.since)
            else:
                log.info("redis %s connected", self.location)
        self.state = state
        self.since = time.time()
