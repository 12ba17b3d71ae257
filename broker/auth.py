"""Who is asking, and may they: sessions, HTTP Basic, share links, publish tokens; and logs without secrets.

Every check here runs once per connection or request, never per frame.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections import OrderedDict

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from yarl import URL

from .access import ANONYMOUS, AccessPolicy, Principal, User
from .clients import Client, client_of
from .metrics import Rejections
from .passwords import PasswordHash, hash_password
from .sessions import COOKIE_NAME, Sessions
from .share import QUERY_PARAM, ShareExpired, ShareLinks, ShareRejected
from .throttle import FailureThrottle

__all__ = ["Authenticator", "RedactingAccessLogger", "redacted"]

log = logging.getLogger(__name__)

SECRET_PARAMS = frozenset({"token", "access_token", QUERY_PARAM})
BASIC_CHALLENGE = 'Basic realm="framebroker"'
# For the page's own requests (fetch, <img>, WebSocket): a scheme browsers do not know, so
# they show no Basic dialog and the page shows its sign-in form instead.
PAGE_CHALLENGE = 'Session realm="framebroker"'
# Verified user:password pairs are remembered this long, so that a program sending HTTP
# Basic with every snapshot costs one key derivation, not one per request.
VERIFIED_TTL = 300.0
MAX_VERIFIED = 4096
# Key derivations running at once: each takes 32 MiB, so a flood of sign-ins must queue.
KDF_CONCURRENCY = 2


class Authenticator:
    """Applies an AccessPolicy to requests: establishes the principal and answers 400/401/403/429."""

    def __init__(
        self,
        policy: AccessPolicy,
        sessions: Sessions,
        shares: ShareLinks,
        throttle: FailureThrottle,
        rejections: Rejections,
    ) -> None:
        self.policy = policy
        self._rejections = rejections
        self.sessions = sessions
        self.shares = shares
        self.throttle = throttle
        self._cache_key = secrets.token_bytes(32)
        self._verified: OrderedDict[bytes, float] = OrderedDict()
        self._kdf_slots = asyncio.Semaphore(KDF_CONCURRENCY)
        # Checked against for unknown user names, so their answer takes as long as a wrong password.
        self._decoy = (
            PasswordHash.parse(hash_password(secrets.token_urlsafe(16))) if policy.has_users else None
        )

    # -- viewers ---------------------------------------------------------------------

    async def viewer(self, request: web.Request) -> Principal:
        """Who a viewing request acts for: share link, HTTP Basic, session cookie, or nobody."""
        client = client_of(request)
        share = request.query.get(QUERY_PARAM)
        if share is not None:
            return self._share(client, share)
        header = request.headers.get("Authorization")
        if header is not None:
            return await self._basic(request, client, header)
        return self.session(request) or ANONYMOUS

    async def may_view(self, request: web.Request, camera: str) -> Principal:
        """The principal if it may watch `camera`; 401 for nobody, 403 for somebody else's camera."""
        principal = await self.viewer(request)
        self.require_view(request, principal, camera)
        return principal

    def require_view(self, request: web.Request, principal: Principal, camera: str) -> None:
        """Raise 401 or 403 unless `principal` may watch `camera`."""
        client = client_of(request)
        if self.policy.may_view(principal, camera, open_locally=client.local):
            return
        if principal.kind == "share":
            raise web.HTTPForbidden(text=f"this share link is for camera {principal.camera!r} only\n")
        if principal.is_user:
            raise web.HTTPForbidden(text=f"user {principal.name!r} may not watch camera {camera!r}\n")
        raise self.unauthorized(request, "this camera needs a user name and password")

    def may_list(self, request: web.Request, principal: Principal) -> None:
        """401 for a visitor who can see no camera at all without signing in."""
        if principal.kind != "anonymous" or self.policy.anyone_may_watch_something:
            return
        if client_of(request).local and not self.policy.has_users:
            return
        raise self.unauthorized(request, "sign in to see the cameras")

    def session(self, request: web.Request) -> Principal | None:
        """The signed-in user of the session cookie, if it is live."""
        cookie = request.cookies.get(COOKIE_NAME)
        if not cookie:
            return None
        found = self.sessions.check(cookie, self.policy.users)
        if found is None:
            return None
        user, session = found
        return Principal("user", user.name, user.groups, via="session", session=session)

    async def sign_in(self, request: web.Request, name: str, password: str) -> User:
        """The user for a name and password from the sign-in form; 401 or 429 otherwise."""
        client = client_of(request)
        self._refuse_if_throttled(client)
        user = await self._verify(name, password)
        if user is None:
            self._failed(client, "password", name)
            raise web.HTTPUnauthorized(
                text="wrong user name or password\n", headers={"WWW-Authenticate": PAGE_CHALLENGE}
            )
        return user

    # -- publishers ------------------------------------------------------------------

    def check_publish(self, request: web.Request, camera: str) -> None:
        """Raise 401 for a missing token, 403 for a wrong one, 429 past the failure limit; before any body."""
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        token = value.strip() if scheme.lower() == "bearer" and value.strip() else request.query.get("token")
        if not token:
            detail = " (user names and passwords only watch)" if scheme.lower() == "basic" else ""
            raise web.HTTPUnauthorized(
                text=f"publishing needs a publish token{detail}: "
                "send 'Authorization: Bearer TOKEN' or ?token=TOKEN\n",
                headers={"WWW-Authenticate": 'Bearer realm="framebroker"'},
            )
        client = client_of(request)
        self._refuse_if_throttled(client)
        if not self.policy.publish_token_matches(camera, token):
            self._failed(client, "publish token", None, camera)
            raise web.HTTPForbidden(text=f"wrong publish token for camera {camera!r}\n")

    # -- answers ---------------------------------------------------------------------

    def unauthorized(self, request: web.Request, reason: str) -> web.HTTPUnauthorized:
        """401 asking for credentials: Basic for programs, the page's own form for the page."""
        return web.HTTPUnauthorized(text=reason + "\n", headers={"WWW-Authenticate": _challenge(request)})

    # -- internals -------------------------------------------------------------------

    def _share(self, client: Client, token: str) -> Principal:
        self._refuse_if_throttled(client)
        try:
            grant = self.shares.check(token)
        except ShareExpired as exc:
            raise web.HTTPForbidden(text=f"{exc}\n") from None
        except ShareRejected as exc:
            self._failed(client, "share link", None)
            raise web.HTTPForbidden(text=f"{exc}\n") from None
        return Principal("share", camera=grant.camera, via="share")

    async def _basic(self, request: web.Request, client: Client, header: str) -> Principal:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            raise self.unauthorized(
                request, "viewing takes a user name and password (HTTP Basic); publish tokens only publish"
            )
        try:
            decoded = base64.b64decode(value.strip().encode("ascii"), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeError):
            raise web.HTTPBadRequest(
                text="malformed Authorization header: expected 'Basic ' and base64 of user:password\n"
            ) from None
        name, colon, password = decoded.partition(":")
        if not colon:
            raise web.HTTPBadRequest(
                text="malformed Authorization header: no ':' between user and password\n"
            )
        self._refuse_if_throttled(client)
        user = await self._verify(name, password)
        if user is None:
            self._failed(client, "password", name)
            raise self.unauthorized(request, "wrong user name or password")
        return Principal("user", user.name, user.groups, via="basic")

    async def _verify(self, name: str, password: str) -> User | None:
        user = self.policy.users.get(name)
        digest = hmac.new(
            self._cache_key, f"{name}\0{password}".encode("utf-8", "surrogateescape"), hashlib.sha256
        )
        remembered = digest.digest()
        now = time.monotonic()
        if user is not None and self._verified.get(remembered, 0.0) > now:
            return user
        stored = user.password_hash if user is not None else self._decoy
        if stored is None:
            return None
        async with self._kdf_slots:
            ok = await asyncio.to_thread(stored.verify, password)
        if not ok or user is None:
            return None
        self._verified[remembered] = now + VERIFIED_TTL
        self._verified.move_to_end(remembered)
        while len(self._verified) > MAX_VERIFIED:
            self._verified.popitem(last=False)
        return user

    def _refuse_if_throttled(self, client: Client) -> None:
        wait = self.throttle.retry_after(client.address)
        if wait is not None:
            self._rejections.count("throttled")
            raise web.HTTPTooManyRequests(
                text=f"too many wrong credentials from {client.address}; try again in {wait} s\n",
                headers={"Retry-After": str(wait)},
            )

    def _failed(self, client: Client, what: str, name: str | None, camera: str | None = None) -> None:
        # The name is logged only when it is a real user: a password typed into the
        # name field must not end up in the log.
        who = f" for user {name!r}" if name is not None and name in self.policy.users else ""
        where = f" for camera {camera!r}" if camera else ""
        log.info(
            "client %s: wrong %s%s%s",
            client.address,
            what,
            who,
            where,
            extra={"peer": client.address, "camera": camera},
        )
        self._rejections.count("auth")
        self.throttle.failed(client.address, what)


def _challenge(request: web.Request) -> str:
    mode = request.headers.get("Sec-Fetch-Mode")
    return PAGE_CHALLENGE if mode is not None and mode != "navigate" else BASIC_CHALLENGE


# Path parameters (`/publish;token=...`): nothing in the broker reads them, so a client
# that sends one may have put a secret there.
_PATH_PARAMETERS = re.compile(r";[^/]*")


def redacted(url: URL) -> str:
    """Path and query of `url` with secret query values, and path parameters, replaced by '***'.

    Also for malformed queries a client may send by mistake, with the secret in the
    name (`?token%3D...`) or inside another value (`?x=a%26token%3D...`): a name or
    value that contains a secret parameter's name is not shown.
    """
    path = _PATH_PARAMETERS.sub(";***", url.raw_path)
    if not url.query_string:
        return path
    query = [
        (name.partition("=")[0], "***")
        if _mentions_secret(name) or _mentions_secret(value)
        else (name, value)
        for name, value in url.query.items()
    ]
    return str(URL.build(path=path, encoded=True).with_query(query))


def _mentions_secret(text: str) -> bool:
    lowered = text.lower()
    return any(param in lowered for param in SECRET_PARAMS)


class RedactingAccessLogger(AbstractAccessLogger):
    """aiohttp's access log line, with the client as the guard saw it and without the query's secrets."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d %.3fs "%s"',
            client_of(request).address,  # type: ignore[arg-type]
            request.method,
            redacted(request.rel_url),
            request.version.major,
            request.version.minor,
            response.status,
            time,
            request.headers.get("User-Agent", "-"),
        )
