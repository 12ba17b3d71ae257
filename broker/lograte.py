"""Log lines that a flood could repeat thousands of times a second, at most once a minute each."""

from __future__ import annotations

import logging
import time
from typing import Any

__all__ = ["LogLimiter"]


class LogLimiter:
    """One WARNING per key per `interval`; the lines held back in between are counted in the next one.

    Keys are a fixed set of reasons chosen by the caller (never a client address), so
    this holds a handful of entries at most.
    """

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self._logger = logger
        self._interval = interval
        self._state: dict[str, tuple[float, int]] = {}

    def warning(self, key: str, message: str, *args: Any) -> None:
        """Log `message % args` unless `key` was logged less than `interval` ago."""
        now = time.monotonic()
        last, held_back = self._state.get(key, (-self._interval, 0))
        if now - last < self._interval:
            self._state[key] = (last, held_back + 1)
            return
        self._state[key] = (now, 0)
        if held_back:
            message += " (and %d more like it since the last such line)"
            args = (*args, held_back)
        self._logger.warning(message, *args)
