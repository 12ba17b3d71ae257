"""The one interface every frame source implements, and the errors it may raise."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

__all__ = ["FrameCallback", "FrameSource", "SourceError", "SourceUnavailable", "import_failure"]

#: Receives one complete JPEG; always called on the event-loop thread.
FrameCallback = Callable[[bytes], None]


class SourceError(Exception):
    """A source failed at run time; the message is one line meant for the log."""


class SourceUnavailable(SourceError):
    """The device is missing, busy or unreachable right now; worth retrying later."""


class FrameSource(Protocol):
    """A camera that pushes JPEG frames while ``run()`` is running.

    ``run()`` opens the device, calls ``on_frame`` on the event-loop thread for
    every new JPEG, and closes the device when it is cancelled. It returns when a
    finite source (a video file without ``--loop``) is exhausted, and raises
    ``SourceError`` when the device cannot be opened or fails.
    """

    #: Source kind as named on the command line ("opencv", "synthetic", ...).
    kind: str
    #: True when frames should arrive steadily, so that silence means a stall.
    steady: bool

    async def run(self, on_frame: FrameCallback) -> None: ...


def import_failure(what: str, exc: BaseException, remedy: str) -> str:
    """One line for an optional module that cannot be imported: missing (ImportError), or
    broken, e.g. built against another numpy (ValueError, AttributeError, RuntimeError)."""
    lines = str(exc).strip().splitlines()
    detail = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return f"{what} cannot be imported ({detail}): {remedy}"
