"""Who may watch and who may publish which camera: users, groups, per-camera rules, principals."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .passwords import PasswordHash

__all__ = ["ANONYMOUS", "AccessPolicy", "CameraRule", "Principal", "User"]

EVERY_USER = "*"


@dataclass(frozen=True)
class User:
    """A viewer account from a `[[user]]` entry."""

    name: str
    password_hash: PasswordHash = field(repr=False)
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True)
class CameraRule:
    """A `[[camera]]` entry: its title, its own publish token, who may watch it."""

    id: str
    title: str | None = None
    publish_token: str | None = field(default=None, repr=False)
    viewers: frozenset[str] | None = None  # user names, "@group", "*"; None: any signed-in user
    public: bool = False


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: a signed-in user, a share link for one camera, or nobody."""

    kind: str  # "user", "share" or "anonymous"
    name: str | None = None
    groups: frozenset[str] = frozenset()
    camera: str | None = None  # a share link's camera
    via: str = "none"  # how it was established: "session", "basic", "share", "none"
    session: str | None = field(default=None, repr=False)  # the session id, for signing out

    @property
    def is_user(self) -> bool:
        return self.kind == "user"


ANONYMOUS = Principal("anonymous")


class AccessPolicy:
    """The access rules of one broker, built once at start from the settings and the config file."""

    def __init__(
        self,
        *,
        users: Iterable[User] = (),
        cameras: Iterable[CameraRule] = (),
        publish_token: str,
        public: bool = False,
    ) -> None:
        self.users: Mapping[str, User] = {user.name: user for user in users}
        self.cameras: Mapping[str, CameraRule] = {rule.id: rule for rule in cameras}
        self._publish_token = publish_token
        self._public = public

    @property
    def has_users(self) -> bool:
        return bool(self.users)

    @property
    def viewer_access_configured(self) -> bool:
        """Users, `--public` or a public camera: someone was meant to watch from elsewhere."""
        return self.has_users or self._public or any(rule.public for rule in self.cameras.values())

    @property
    def anyone_may_watch_something(self) -> bool:
        """Whether a visitor who has not signed in can see any camera at all."""
        return self._public or any(rule.public for rule in self.cameras.values())

    def title(self, camera: str) -> str:
        """The camera's title for people (its id unless the config gives one)."""
        rule = self.cameras.get(camera)
        return rule.title if rule is not None and rule.title else camera

    def is_public(self, camera: str) -> bool:
        """Whether anyone may watch `camera` without signing in."""
        rule = self.cameras.get(camera)
        if rule is not None and (rule.public or rule.viewers is not None):
            return rule.public
        return self._public

    def may_view(self, principal: Principal, camera: str, *, open_locally: bool = False) -> bool:
        """Whether `principal` may watch `camera`.

        `open_locally`: the request came from this machine to a broker without any user
        accounts, the quick start's case, where everyone on the machine may watch.
        """
        if principal.kind == "share":
            return principal.camera == camera
        if self.is_public(camera) or (open_locally and not self.has_users):
            return True
        if not principal.is_user:
            return False
        rule = self.cameras.get(camera)
        if rule is None or rule.viewers is None:
            return True  # any signed-in user may watch a camera without a list of its own
        allowed = rule.viewers
        return (
            EVERY_USER in allowed
            or principal.name in allowed
            or any("@" + group in allowed for group in principal.groups)
        )

    def publish_token_matches(self, camera: str, token: str) -> bool:
        """Whether `token` may publish `camera`: its own token if it has one, else the broker's.

        Compared in constant time.
        """
        rule = self.cameras.get(camera)
        expected = rule.publish_token if rule is not None and rule.publish_token else self._publish_token
        return hmac.compare_digest(token.encode("utf-8", "surrogateescape"), expected.encode())
