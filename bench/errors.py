"""The one exception the bench reports to its user as a single line."""

from __future__ import annotations

__all__ = ["BenchError"]


class BenchError(Exception):
    """Something the user has to fix or know (unreachable broker, refused token, ...): no traceback."""
