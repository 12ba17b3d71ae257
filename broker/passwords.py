"""Password hashes: scrypt, a memory-hard KDF from the standard library, in one self-describing string."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

__all__ = ["PasswordHash", "hash_password"]

# 2**15 x 128 x 8 bytes = 32 MiB and about 0.1 s per check on a desktop core: slow for a
# guesser, still fine once per sign-in (checks are cached per connection, never per frame).
DEFAULT_LOG_N = 15
BLOCK_SIZE = 8
PARALLELISM = 1
# Bounds on parameters read from a config file, so that a typo cannot ask for gigabytes.
MIN_LOG_N, MAX_LOG_N = 14, 20
SALT_BYTES = 16
KEY_BYTES = 32

_FORMAT = re.compile(
    r"scrypt\$ln=(?P<ln>\d{1,2}),r=(?P<r>\d{1,2}),p=(?P<p>\d)\$(?P<salt>[A-Za-z0-9+/]+={0,2})"
    r"\$(?P<key>[A-Za-z0-9+/]+={0,2})"
)


@dataclass(frozen=True, repr=False)
class PasswordHash:
    """A parsed `scrypt$ln=15,r=8,p=1$SALT$KEY` string (what `framebroker hash-password` prints)."""

    log_n: int
    block_size: int
    parallelism: int
    salt: bytes
    key: bytes

    def __repr__(self) -> str:  # keep hashes out of tracebacks and debug output
        return "<PasswordHash scrypt>"

    @classmethod
    def parse(cls, text: str) -> PasswordHash:
        """Parse a stored hash; ValueError says what is wrong without repeating the hash."""
        match = _FORMAT.fullmatch(text.strip())
        if match is None:
            raise ValueError(
                "not a password hash from 'framebroker hash-password' (scrypt$ln=...,r=...,p=...$salt$key)"
            )
        log_n, block_size, parallelism = int(match["ln"]), int(match["r"]), int(match["p"])
        if not MIN_LOG_N <= log_n <= MAX_LOG_N or not 1 <= block_size <= 16 or not 1 <= parallelism <= 4:
            raise ValueError(f"scrypt parameters out of range (ln {MIN_LOG_N}-{MAX_LOG_N}, r 1-16, p 1-4)")
        salt, key = base64.b64decode(match["salt"]), base64.b64decode(match["key"])
        if len(salt) < 8 or len(key) < 16:
            raise ValueError("salt or key too short")
        return cls(log_n, block_size, parallelism, salt, key)

    def verify(self, password: str) -> bool:
        """Whether `password` matches; constant time in the comparison. Takes about 0.1 s: not on the loop."""
        return hmac.compare_digest(
            _derive(password, self.salt, self.log_n, self.block_size, self.parallelism, len(self.key)),
            self.key,
        )

    def fingerprint(self) -> bytes:
        """A short digest of the stored hash, so a changed password invalidates signed sessions."""
        return hashlib.sha256(self.salt + self.key).digest()[:8]


def hash_password(password: str, *, log_n: int = DEFAULT_LOG_N) -> str:
    """A new hash of `password` with a random salt, as a string for the config file."""
    salt = secrets.token_bytes(SALT_BYTES)
    key = _derive(password, salt, log_n, BLOCK_SIZE, PARALLELISM, KEY_BYTES)
    encoded = (base64.b64encode(part).decode() for part in (salt, key))
    return f"scrypt$ln={log_n},r={BLOCK_SIZE},p={PARALLELISM}$" + "$".join(encoded)


def _derive(password: str, salt: bytes, log_n: int, block_size: int, parallelism: int, length: int) -> bytes:
    n = 1 << log_n
    return hashlib.scrypt(
        password.encode("utf-8", "surrogateescape"),
        salt=salt,
        n=n,
        r=block_size,
        p=parallelism,
        maxmem=2 * 128 * n * block_size * parallelism,
        dklen=length,
    )
