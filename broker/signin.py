"""The page's sign-in, sign-out and "who am I": the session cookie's whole life."""

from __future__ import annotations

import logging
import re

from aiohttp import web
from multidict import MultiDictProxy

from .app_keys import AUTH
from .clients import client_of
from .sessions import COOKIE_NAME

__all__ = ["session_info", "sign_in", "sign_out"]

log = logging.getLogger(__name__)

MAX_FORM_BYTES = 4096  # a user name and a password; nothing bigger is read
# The page sends its own path, so that behind a proxy's prefix (/cams/) the cookie goes to
# the broker only, not to the site's other applications.
COOKIE_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+=:@%/-]{0,200}")


async def _form(request: web.Request) -> MultiDictProxy[str | bytes | web.FileField]:
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_FORM_BYTES, actual_size=request.content_length)
    if request.content_length is None and request.body_exists:
        raise web.HTTPLengthRequired(text="send the form with a Content-Length\n")
    return await request.post()


def _cookie_path(form: MultiDictProxy[str | bytes | web.FileField]) -> str:
    path = form.get("path")
    return path if isinstance(path, str) and COOKIE_PATH.fullmatch(path) else "/"


async def sign_in(request: web.Request) -> web.Response:
    """`POST /login` with `username` and `password` form fields: sets the session cookie."""
    auth = request.app[AUTH]
    form = await _form(request)
    name, password = form.get("username"), form.get("password")
    if not isinstance(name, str) or not isinstance(password, str) or not name:
        raise web.HTTPBadRequest(text="send the form fields 'username' and 'password'\n")
    user = await auth.sign_in(request, name, password)
    client = client_of(request)
    response = web.json_response({"user": user.name}, headers={"Cache-Control": "no-store"})
    response.set_cookie(
        COOKIE_NAME,
        auth.sessions.issue(user),
        max_age=int(auth.sessions.lifetime),
        path=_cookie_path(form),
        httponly=True,
        samesite="Strict",
        secure=client.scheme == "https",
    )
    log.info("client %s: user %r signed in", client.address, user.name, extra={"peer": client.address})
    return response


async def sign_out(request: web.Request) -> web.Response:
    """`POST /logout`: ends the session on the server too, and clears the cookie."""
    form = await _form(request)
    principal = request.app[AUTH].session(request)
    if principal is not None and principal.session is not None:
        request.app[AUTH].sessions.revoke(principal.session)
        log.info(
            "client %s: user %r signed out",
            client_of(request).address,
            principal.name,
            extra={"peer": client_of(request).address},
        )
    response = web.json_response({"user": None}, headers={"Cache-Control": "no-store"})
    response.del_cookie(COOKIE_NAME, path=_cookie_path(form))
    return response


async def session_info(request: web.Request) -> web.Response:
    """`GET /api/session`: who the page is signed in as, and whether signing in is possible."""
    auth = request.app[AUTH]
    principal = await auth.viewer(request)
    return web.json_response(
        {
            "user": principal.name,
            "via": principal.via,
            "camera": principal.camera,
            "sign_in": auth.policy.has_users,
        },
        headers={"Cache-Control": "no-store"},
    )
