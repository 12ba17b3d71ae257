"""The progress line on stderr while a run goes (one line per second; rewritten in place on a terminal)."""

from __future__ import annotations

import sys
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """Shows how a run is going; silent when `quiet`."""

    def __init__(self, quiet: bool, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = self.stream.isatty()
        self._width = 0

    def show(self, text: str) -> None:
        """Print one progress line."""
        if self.quiet:
            return
        if self.tty:
            # Pad over the previous line's leftovers: '\r' only moves the cursor back.
            self.stream.write("\r" + text.ljust(self._width))
            self._width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def end(self) -> None:
        """Finish the line being rewritten, so other output starts on a fresh one."""
        if self.tty and self._width and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()
        self._width = 0
