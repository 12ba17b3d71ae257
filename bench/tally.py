"""What one load process counts: the measured window and the deliveries and requests in it."""

from __future__ import annotations

from array import array

__all__ = ["NEVER", "Tally"]

NEVER = (1 << 63) - 1  # a window bound before the window is known: nothing counts yet


class Tally:
    """Counters shared by every client of one process; times are time.monotonic_ns()."""

    __slots__ = (
        "delivered",
        "end_ns",
        "latencies",
        "request_errors",
        "request_latencies",
        "requests",
        "start_ns",
    )

    def __init__(self) -> None:
        self.start_ns = NEVER  # frames sent in [start_ns, end_ns) are measured
        self.end_ns = NEVER
        self.delivered = 0
        self.latencies = array("q")  # ns from the publisher's send to the last byte, per delivery
        self.requests = 0  # snapshot 200s completed in the window
        self.request_errors = 0  # other answers, at any time
        self.request_latencies = array("q")
