"""aiohttp's server log, made safe for requests it cannot parse.

aiohttp answers a request it cannot parse (a control character in a header, a bad
Content-Length, a line too long) with 400, and logs it at ERROR with a traceback whose
message quotes the offending line: `Authorization: Basic ...` or `?token=...` included.
Any stranger could fill the log with those, and with secrets. Here such a request is
one WARNING line naming the client and what was wrong, without a byte of the request.
Every other record passes through unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)

__all__ = ["ServerLog"]

# Most specific first: each is a subclass of a later one.
_WHAT = (
    (BadHttpMethod, "not an HTTP method"),
    (BadStatusLine, "a malformed request line"),
    (InvalidURLError, "a malformed URL"),
    (LineTooLong, "a line or header too long"),
    (InvalidHeader, "a malformed header"),
    (PayloadEncodingError, "a malformed body framing"),
    (HttpProcessingError, "a malformed request"),
)


def _what(exc: HttpProcessingError) -> str:
    return next(text for kind, text in _WHAT if isinstance(exc, kind))


class ServerLog:
    """The logger aiohttp's request handlers are given (AppRunner's `logger`): `logger` (the
    standard library's, or gunicorn's) with the two calls aiohttp reports bad requests through."""

    def __init__(self, logger: logging.Logger | Any) -> None:
        self.logger = logger

    def __getattr__(self, name: str) -> Any:
        return getattr(self.logger, name)

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        """aiohttp logs errors through this; those of unparsable requests become one WARNING line."""
        if isinstance(exc_info, HttpProcessingError):
            self._unparsable(logging.WARNING, exc_info, args)
        else:
            self.logger.exception(msg, *args, exc_info=exc_info, **kwargs)

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        """aiohttp logs non-HTTP first bytes (TLS on the plain port) at DEBUG: without the bytes too."""
        exc = kwargs.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            self._unparsable(logging.DEBUG, exc, args)
        else:
            self.logger.debug(msg, *args, **kwargs)

    def _unparsable(self, level: int, exc: HttpProcessingError, args: tuple[object, ...]) -> None:
        # aiohttp passes the client's address as the only argument ("... from %s").
        peer = args[0] if args else "unknown"
        self.logger.log(
            level,
            "client %s: answered %d to an unreadable request (%s)",
            peer,
            exc.code,
            _what(exc),
            extra={"peer": str(peer)},
        )
