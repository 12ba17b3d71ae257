"""Share links: one camera, read-only, until a time, for anyone holding the link; no account needed."""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import quote

from .signing import BadSignature, sign, unsign
from .state import SigningKey

__all__ = ["ShareError", "ShareExpired", "ShareGrant", "ShareLinks", "ShareRejected"]

PURPOSE = "share-link"
QUERY_PARAM = "share"


class ShareError(Exception):
    """Base of the reasons a share link is refused."""


class ShareRejected(ShareError):
    """The link was not signed by this broker's key (tampered, or the key changed)."""


class ShareExpired(ShareError):
    """A genuine link whose time is up."""


@dataclass(frozen=True)
class ShareGrant:
    """What a valid link allows: watching `camera` until `expires` (Unix time)."""

    camera: str
    expires: float


class ShareLinks:
    """Makes and checks share tokens with the broker's signing key."""

    def __init__(self, key: SigningKey) -> None:
        self._key = key.for_purpose(PURPOSE)

    def token(self, camera: str, expires: float) -> str:
        """A token for `camera` valid until `expires`."""
        return sign(self._key, {"c": camera, "e": int(expires)})

    def check(self, token: str, now: float | None = None) -> ShareGrant:
        """The grant of a token; ShareRejected or ShareExpired otherwise."""
        try:
            payload = unsign(self._key, token)
        except BadSignature:
            raise ShareRejected(
                "this share link is not valid: it was changed, cut short, or the broker's key has changed"
            ) from None
        camera, expires = payload.get("c"), payload.get("e")
        if not isinstance(camera, str) or not isinstance(expires, int):
            raise ShareRejected("this share link is not valid")
        if expires <= (time.time() if now is None else now):
            shown = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(expires))
            raise ShareExpired(f"this share link expired at {shown}; ask for a new one")
        return ShareGrant(camera, float(expires))

    def urls(self, base_url: str, camera: str, expires: float) -> dict[str, str]:
        """The page, MJPEG and snapshot URLs of a new link, under `base_url`."""
        token = quote(self.token(camera, expires), safe="")
        base = base_url.rstrip("/") + "/"
        cam = quote(camera, safe="")
        return {
            "page": f"{base}?{QUERY_PARAM}={token}#/cameras/{cam}",
            "mjpeg": f"{base}cameras/{cam}/mjpeg?{QUERY_PARAM}={token}",
            "snapshot": f"{base}cameras/{cam}/snapshot.jpg?{QUERY_PARAM}={token}",
        }
