"""Retry pacing and retry logging: wait longer after each failure, say so rarely."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

__all__ = ["Backoff", "FailureLog"]


class Backoff:
    """Exponential backoff with full jitter: the n-th delay is uniform(0, min(max, initial·2ⁿ)).

    Full jitter spreads the reconnects of many agents after a broker restart.
    """

    def __init__(
        self,
        initial: float,
        maximum: float,
        *,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self._rng = rng
        self.attempts = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one failed attempt."""
        cap = min(self.maximum, self.initial * 2.0 ** min(self.attempts, 62))
        self.attempts += 1
        return cap * self._rng()

    def reset(self) -> None:
        """Start over from ``initial`` (after a success that lasted)."""
        self.attempts = 0


class FailureLog:
    """Logs a failing state once: when it starts or its reason changes, then a
    'still failing' line at most every ``repeat_after`` seconds, and one line on recovery."""

    def __init__(
        self,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
        subject: str,
        *,
        repeat_after: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._subject = subject
        self._repeat_after = repeat_after
        self._clock = clock
        self._reason: str | None = None
        self._since = 0.0
        self._logged_at = 0.0
        self.failures = 0

    @property
    def failing(self) -> bool:
        return self._reason is not None

    def failed(self, reason: str, retry_in: float, level: int = logging.WARNING) -> None:
        """Record one failed attempt; logs only on a new reason or rarely while it lasts."""
        now = self._clock()
        self.failures += 1
        if reason != self._reason:
            if self._reason is None:
                self._since = now
            self._reason = reason
            self._logged_at = now
            self._log.log(level, "%s: %s; retrying (next in %.1fs)", self._subject, reason, retry_in)
        elif now - self._logged_at >= self._repeat_after:
            self._logged_at = now
            self._log.log(
                level,
                "%s: still retrying after %d attempts over %.0fs: %s",
                self._subject,
                self.failures,
                now - self._since,
                reason,
            )

    def recovered(self, what: str) -> None:
        """Log ``what`` (e.g. 'connected to ...'), noting the outage if there was one."""
        if self._reason is None:
            self._log.info("%s: %s", self._subject, what)
        else:
            self._log.info(
                "%s: %s after %d failed attempts over %.0fs",
                self._subject,
                what,
                self.failures,
                self._clock() - self._since,
            )
        self._reason = None
        self.failures = 0
