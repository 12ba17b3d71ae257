"""A broker with accounts, as the README's "Security" section sets one up, for the access tests."""

from __future__ import annotations

import base64
from functools import cache
from pathlib import Path

from broker.passwords import hash_password

PASSWORDS = {"alice": "alice-pass-Hn7q", "bob": "bob-pass-X2w8", "carol": "carol-pass-Lp0z"}
GARDEN_TOKEN = "garden-publish-token-5Yb1"


@cache
def password_hash(name: str) -> str:
    """One scrypt hash per user per test run (each costs a tenth of a second)."""
    return hash_password(PASSWORDS[name])


def basic(name: str, password: str | None = None) -> dict[str, str]:
    """The HTTP Basic header for `name` (with its own password unless another is given)."""
    pair = f"{name}:{PASSWORDS[name] if password is None else password}"
    return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


def family_config(folder: Path, extra: str = "") -> Path:
    """alice and carol are family, bob is not; garden is the family's, door is bob's, yard is unlisted."""
    path = folder / "broker.toml"
    path.write_text(
        f"""
[[user]]
name = "alice"
password_hash = "{password_hash("alice")}"
groups = ["family"]

[[user]]
name = "bob"
password_hash = "{password_hash("bob")}"

[[user]]
name = "carol"
password_hash = "{password_hash("carol")}"
groups = ["family"]

[[camera]]
id = "garden"
title = "Garden"
publish_token = "{GARDEN_TOKEN}"
viewers = ["@family"]

[[camera]]
id = "door"
title = "Front door"
viewers = ["bob"]
{extra}
"""
    )
    return path
