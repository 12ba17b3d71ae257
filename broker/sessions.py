"""Browser sign-in sessions: a signed cookie, and the server-side list of sessions signed out early."""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from .access import User
from .signing import BadSignature, sign, unsign
from .state import SigningKey

__all__ = ["COOKIE_NAME", "Sessions"]

log = logging.getLogger(__name__)

COOKIE_NAME = "framebroker_session"
PURPOSE = "session"
REVOKED_FILE = "signed-out-sessions.json"
# Sign-outs are kept until their session would have expired anyway; this caps the list
# even for a user who signs in and out in a loop (the oldest entries go first).
MAX_REVOKED = 100_000


class Sessions:
    """Issues session cookies for users and recognises them; sign-out revokes one on the server.

    The cookie carries the user name, a random session id and the expiry, signed with
    the broker's key and the user's password hash: a changed password or a removed user
    ends every session of that user, and a changed key ends all of them. Sign-outs are
    kept in the state directory, so a copied cookie stays dead across restarts.
    """

    def __init__(self, key: SigningKey, lifetime: float, state_dir: Path | None) -> None:
        self._key = key.for_purpose(PURPOSE)
        self.lifetime = lifetime
        self._file = state_dir / REVOKED_FILE if state_dir is not None else None
        self._revoked: dict[str, float] = self._load()
        # Told of each sign-out, so the other nodes of a cluster refuse the session too.
        self.on_revoke: Callable[[str, float], None] | None = None

    def issue(self, user: User) -> str:
        """A new session cookie value for `user`."""
        payload = {
            "u": user.name,
            "s": secrets.token_urlsafe(12),
            "e": int(time.time() + self.lifetime),
            "f": user.password_hash.fingerprint().hex(),
        }
        return sign(self._key, payload)

    def check(self, cookie: str, users: Mapping[str, User]) -> tuple[User, str] | None:
        """The user and session id of a live session cookie, else None."""
        try:
            payload = unsign(self._key, cookie)
        except BadSignature:
            return None
        name, session, expires, fingerprint = (payload.get(k) for k in ("u", "s", "e", "f"))
        user = users.get(name) if isinstance(name, str) else None
        if user is None or not isinstance(session, str) or not isinstance(expires, int):
            return None
        if not isinstance(fingerprint, str) or not hmac.compare_digest(
            fingerprint.encode(), user.password_hash.fingerprint().hex().encode()
        ):
            return None  # the password changed since this session began
        if expires <= time.time() or session in self._revoked:
            return None
        return user, session

    def revoke(self, session: str) -> None:
        """Sign a session out for good (until it would have expired anyway)."""
        now = time.time()
        self._revoked = {s: t for s, t in self._revoked.items() if t > now}
        while len(self._revoked) >= MAX_REVOKED:
            del self._revoked[next(iter(self._revoked))]
        self._revoked[session] = now + self.lifetime
        self._save()
        if self.on_revoke is not None:
            self.on_revoke(session, now + self.lifetime)

    def revoked_elsewhere(self, session: str, until: float) -> None:
        """Another node of the cluster signed `session` out."""
        if until > time.time() and len(self._revoked) < MAX_REVOKED:
            self._revoked[session] = until

    def revoked_sessions(self) -> dict[str, float]:
        """The sessions signed out early, and until when they would have lasted."""
        return dict(self._revoked)

    def _load(self) -> dict[str, float]:
        if self._file is None:
            return {}
        try:
            data = json.loads(self._file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring the list of signed-out sessions %s: %s", self._file, exc)
            return {}
        now = time.time()
        if not isinstance(data, dict):
            return {}
        return {s: float(t) for s, t in data.items() if isinstance(t, int | float) and t > now}

    def _save(self) -> None:
        if self._file is None:
            return
        staging = self._file.with_name(self._file.name + ".new")
        try:
            self._file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            staging.write_text(json.dumps(self._revoked))
            staging.replace(self._file)
        except OSError as exc:
            log.warning(
                "could not save signed-out sessions to %s (%s): they stay signed out until a restart",
                self._file,
                exc.strerror or exc,
            )
