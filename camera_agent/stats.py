"""Per-camera counters and the periodic one-line stats log."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace

__all__ = ["CameraStats", "StatsReporter"]

log = logging.getLogger("camera_agent.stats")


@dataclass
class CameraStats:
    """Counters since the agent started; only the event-loop thread changes them."""

    captured: int = 0
    sent: int = 0
    sent_bytes: int = 0
    sent_age: float = 0.0  # sum over sent frames of seconds from capture to sent
    dropped: int = 0  # replaced in the slot before sending, or too large
    bad: int = 0  # not complete JPEGs: dropped at capture
    reconnects: int = 0
    restarts: int = 0  # source reopened by the watchdog: no frame, or only bad ones


class StatsReporter:
    """Logs one line per camera every ``interval`` seconds: rates since the last line."""

    def __init__(self, stats: Mapping[str, CameraStats], interval: float) -> None:
        self._stats = stats
        self._interval = interval

    async def run(self) -> None:
        """Log forever (until cancelled)."""
        last = {camera: replace(s) for camera, s in self._stats.items()}
        last_at = time.monotonic()
        while True:
            await asyncio.sleep(self._interval)
            now = time.monotonic()
            for camera, stats in self._stats.items():
                log.info(
                    "%s", self.line(camera, stats, last[camera], now - last_at), extra={"camera": camera}
                )
                last[camera] = replace(stats)
            last_at = now

    @staticmethod
    def line(camera: str, now: CameraStats, before: CameraStats, seconds: float) -> str:
        """The stats line for one camera over ``seconds``."""
        seconds = max(seconds, 1e-9)

        def rate(field: str) -> float:
            return (getattr(now, field) - getattr(before, field)) / seconds

        sent = now.sent - before.sent
        age = (now.sent_age - before.sent_age) / sent * 1000 if sent else 0.0
        return (
            f"{camera}: captured {rate('captured'):.1f} fps, sent {rate('sent'):.1f} fps, "
            f"dropped {rate('dropped'):.1f} fps, {rate('sent_bytes') / 1000:.0f} kB/s, "
            f"age {age:.0f} ms, bad {now.bad - before.bad}, reconnects {now.reconnects - before.reconnects}, "
            f"restarts {now.restarts - before.restarts}"
        )
