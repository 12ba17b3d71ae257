"""Publish tokens: where they are read from, how they are compared, and keeping them out of logs."""

from __future__ import annotations

import hmac
import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from yarl import URL

__all__ = ["RedactingAccessLogger", "check_publish_token", "redacted"]

log = logging.getLogger(__name__)

SECRET_PARAMS = frozenset({"token", "access_token"})


def presented_token(request: web.Request) -> str | None:
    """The token from `Authorization: Bearer ...`, else from `?token=`."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.query.get("token") or None


def check_publish_token(request: web.Request, expected: str) -> None:
    """Raise 401 for a missing token and 403 for a wrong one, before any body is read."""
    token = presented_token(request)
    if token is None:
        raise web.HTTPUnauthorized(
            text="publishing needs a token: send 'Authorization: Bearer TOKEN' or ?token=TOKEN\n",
            headers={"WWW-Authenticate": 'Bearer realm="framebroker"'},
        )
    # compare_digest on bytes: constant time for any length and any characters.
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise web.HTTPForbidden(text="wrong publish token\n")


def redacted(url: URL) -> str:
    """Path and query of `url` with secret query values replaced by '***'."""
    if not url.query_string:
        return url.raw_path
    query = [(k, "***" if k.lower() in SECRET_PARAMS else v) for k, v in url.query.items()]
    return str(URL.build(path=url.raw_path, encoded=True).with_query(query))


class RedactingAccessLogger(AbstractAccessLogger):
    """aiohttp's access log line, without the query's tokens."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d %.3fs "%s"',
            request.remote,
            request.method,
            redacted(request.rel_url),
            request.version.major,
            request.version.minor,
            response.status,
            time,
            request.headers.get("User-Agent", "-"),
        )
