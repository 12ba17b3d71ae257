"""What the broker keeps between runs in its state directory: its signing key, a generated publish token."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from .config import ConfigError, Settings

__all__ = ["SigningKey", "load_publish_token", "load_signing_key", "read_signing_key"]

log = logging.getLogger(__name__)

SECRET_FILE = "secret.key"
TOKEN_FILE = "publish-token"


class SigningKey:
    """The key behind session cookies and share links; one derived key per purpose."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def __repr__(self) -> str:
        return "<SigningKey>"

    def for_purpose(self, purpose: str) -> bytes:
        """A key used only for `purpose`, so a session MAC can never pass as a share MAC."""
        return hmac.new(self._key, purpose.encode(), hashlib.sha256).digest()


def load_signing_key(settings: Settings) -> SigningKey:
    """FRAMEBROKER_SECRET, else `secret_file`, else the state directory's key (made once)."""
    generated = settings.state_dir / SECRET_FILE
    return _configured_key(settings) or SigningKey(_kept(generated, "signing key").encode())


def read_signing_key(settings: Settings) -> SigningKey:
    """The key load_signing_key() finds, never made: ConfigError if the state directory has none.

    For `framebroker share`, whose links the broker must accept: a key made here, in a state
    directory the broker does not use, would sign links that no broker knows.
    """
    key = _configured_key(settings)
    if key is not None:
        return key
    path = settings.state_dir / SECRET_FILE
    try:
        return SigningKey(_read(path).encode())
    except FileNotFoundError:
        raise ConfigError(
            f"no signing key in {path}: the broker makes it there at its first start. Start the broker "
            f"once with --state-dir {settings.state_dir}, or give share the broker's own --state-dir "
            "(or the secret_file or FRAMEBROKER_SECRET the broker has)"
        ) from None


def load_publish_token(settings: Settings) -> tuple[str, Path | None]:
    """The publish token, and the file it was generated into when none was configured."""
    if settings.publish_token:
        return settings.publish_token, None
    path = settings.state_dir / TOKEN_FILE
    return _kept(path, "publish token"), path


def _configured_key(settings: Settings) -> SigningKey | None:
    """FRAMEBROKER_SECRET, else `secret_file`, else None."""
    if settings.secret:
        return SigningKey(settings.secret.encode())
    if settings.secret_file is not None:
        name = settings.qualified("secret_file")
        try:
            key = settings.secret_file.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"{name}: cannot read {settings.secret_file}: {exc.strerror or exc}") from None
        if len(key) < 16:
            raise ConfigError(f"{name}: {settings.secret_file} holds less than 16 bytes")
        return SigningKey(key)
    return None


def _kept(path: Path, what: str) -> str:
    """The secret in `path`, generated (readable by the owner only) on first use."""
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    value = secrets.token_urlsafe(24)
    staging = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with os.fdopen(os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
            file.write(value + "\n")
        # link() fails if the name exists: two brokers starting at once agree on one value.
        os.link(staging, path)
    except FileExistsError:
        return _read(path)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the {what} in {path.parent}: {exc.strerror or exc} "
            "(set --state-dir to a writable folder)"
        ) from None
    finally:
        staging.unlink(missing_ok=True)
    log.info("generated a %s into %s", what, path)
    return value


def _read(path: Path) -> str:
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not value:
        raise ConfigError(f"{path} is empty: delete it and a new one is generated")
    return value
