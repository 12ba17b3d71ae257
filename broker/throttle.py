"""Failed sign-ins, tokens and share links counted per client address, so guessing is slow."""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections import OrderedDict, deque

__all__ = ["FailureThrottle"]

log = logging.getLogger(__name__)

WINDOW = 60.0
# Addresses remembered at once. Each costs a few hundred bytes; past this the address
# whose last failure is oldest is forgotten first, so a spread-out attack cannot grow memory.
MAX_ADDRESSES = 65_536


def address_key(address: str) -> str:
    """IPv4 addresses count one by one; IPv6 by /64, the block one subscriber usually holds."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class _Record:
    __slots__ = ("failures", "logged_at")

    def __init__(self, limit: int) -> None:
        self.failures: deque[float] = deque(maxlen=limit)
        self.logged_at = -math.inf


class FailureThrottle:
    """At most `per_minute` failures per address in any minute; past that, `retry_after()` says how long."""

    def __init__(self, per_minute: int) -> None:
        self._limit = per_minute
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def retry_after(self, address: str, now: float | None = None) -> int | None:
        """Seconds until `address` may try again, or None if it may try now."""
        record = self._records.get(address_key(address))
        if record is None or len(record.failures) < self._limit:
            return None
        now = time.monotonic() if now is None else now
        wait = record.failures[0] + WINDOW - now
        return math.ceil(wait) if wait > 0 else None

    def failed(self, address: str, what: str, now: float | None = None) -> None:
        """Count one failure of `what` ("password", "publish token", ...) from `address`."""
        now = time.monotonic() if now is None else now
        key = address_key(address)
        record = self._records.pop(key, None) or _Record(self._limit)
        record.failures.append(now)
        self._records[key] = record  # most recent last, so the oldest go first
        while len(self._records) > MAX_ADDRESSES:
            self._records.popitem(last=False)
        if self.retry_after(address, now) is not None and now - record.logged_at >= WINDOW:
            record.logged_at = now
            log.warning(
                "client %s: %d wrong passwords, tokens or share links within a minute (last: %s); "
                "refusing its credentials with 429 for a while",
                address,
                self._limit,
                what,
            )
