"""The broker's TOML file: settings as top-level keys, `[[user]]` and `[[camera]]` entries.

Every mistake stops the broker at start with one line naming the file, the entry and the key.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

from .access import EVERY_USER, CameraRule, User
from .config import ConfigError, Settings, coerce_value
from .params import CAMERA_ID
from .passwords import PasswordHash

__all__ = ["read_access", "read_settings"]

NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")  # user and group names: no ':' (HTTP Basic), no spaces
USER_KEYS = frozenset({"name", "password_hash", "groups"})
CAMERA_KEYS = frozenset({"id", "title", "publish_token", "publish_token_file", "viewers", "public"})
TABLES = frozenset({"user", "camera"})


def _file_keys() -> dict[str, str]:
    return {f.name: str(f.type) for f in dataclasses.fields(Settings) if f.metadata.get("file", True)}


def _load(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # TOML is UTF-8 text; tomllib lets this through
        raise ConfigError(
            f"{path}: not valid TOML: not UTF-8 text "
            f"(byte {exc.object[exc.start]:#04x} at offset {exc.start})"
        ) from None


def read_settings(path: Path) -> dict[str, Any]:
    """The top-level settings of the file, typed; unknown keys are an error."""
    data = _load(path)
    keys = _file_keys()
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in TABLES:
            continue
        if key not in keys:
            hint = " (it can only be given as a flag or variable)" if key in {"config", "secret"} else ""
            raise ConfigError(f"{path}: unknown key {key!r}{hint}")
        try:
            values[key] = coerce_value(key, keys[key], value)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return values


def read_access(path: Path) -> tuple[list[User], list[CameraRule]]:
    """The `[[user]]` and `[[camera]]` entries, checked against each other."""
    data = _load(path)
    users = [_user(path, index, entry) for index, entry in enumerate(_entries(path, data, "user"), 1)]
    names: set[str] = set()
    for index, user in enumerate(users, 1):
        if user.name in names:
            raise ConfigError(f"{path}: user[{index}] ({user.name}): name: duplicate user {user.name!r}")
        names.add(user.name)
    groups = {group for user in users for group in user.groups}
    cameras = []
    ids: set[str] = set()
    for index, entry in enumerate(_entries(path, data, "camera"), 1):
        rule = _camera(path, index, entry, names, groups)
        if rule.id in ids:
            raise ConfigError(f"{path}: camera[{index}] ({rule.id}): id: duplicate camera {rule.id!r}")
        ids.add(rule.id)
        cameras.append(rule)
    return users, cameras


def _entries(path: Path, data: dict[str, Any], table: str) -> list[dict[str, Any]]:
    entries = data.get(table, [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"{path}: {table}: expected [[{table}]] entries")
    return entries


def _string(path: Path, where: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{path}: {where}: {key}: expected a non-empty string")
    return value.strip()


def _unknown(path: Path, where: str, entry: dict[str, Any], allowed: frozenset[str]) -> None:
    for key in entry:
        if key not in allowed:
            raise ConfigError(
                f"{path}: {where}: unknown key {key!r} (expected one of {', '.join(sorted(allowed))})"
            )


def _user(path: Path, index: int, entry: dict[str, Any]) -> User:
    where = f"user[{index}]"
    if "name" not in entry:
        raise ConfigError(f"{path}: {where}: name: missing")
    name = _string(path, where, "name", entry["name"])
    where = f"user[{index}] ({name})"
    if NAME.fullmatch(name) is None:
        raise ConfigError(f"{path}: {where}: name: use 1-64 of A-Z a-z 0-9 _ . @ -")
    _unknown(path, where, entry, USER_KEYS)
    if "password_hash" not in entry:
        raise ConfigError(
            f"{path}: {where}: password_hash: missing (make one with 'framebroker hash-password')"
        )
    try:
        password_hash = PasswordHash.parse(_string(path, where, "password_hash", entry["password_hash"]))
    except ValueError as exc:
        raise ConfigError(f"{path}: {where}: password_hash: {exc}") from None
    groups = entry.get("groups", [])
    if not isinstance(groups, list) or not all(isinstance(g, str) and NAME.fullmatch(g) for g in groups):
        raise ConfigError(f'{path}: {where}: groups: expected a list of names such as ["family"]')
    return User(name, password_hash, frozenset(groups))


def _camera(path: Path, index: int, entry: dict[str, Any], users: set[str], groups: set[str]) -> CameraRule:
    where = f"camera[{index}]"
    if "id" not in entry:
        raise ConfigError(f"{path}: {where}: id: missing")
    camera = _string(path, where, "id", entry["id"])
    where = f"camera[{index}] ({camera})"
    if CAMERA_ID.fullmatch(camera) is None:
        raise ConfigError(f"{path}: {where}: id: use 1-64 characters from A-Z a-z 0-9 _ -")
    _unknown(path, where, entry, CAMERA_KEYS)
    title = _string(path, where, "title", entry["title"]) if "title" in entry else None
    token = _publish_token(path, where, entry)
    public = entry.get("public", False)
    if not isinstance(public, bool):
        raise ConfigError(f"{path}: {where}: public: expected true or false")
    viewers = None
    if "viewers" in entry:
        if public:
            raise ConfigError(
                f"{path}: {where}: viewers: a public camera has no viewers list (remove one of them)"
            )
        viewers = _viewers(path, where, entry["viewers"], users, groups)
    return CameraRule(camera, title, token, viewers, public)


def _publish_token(path: Path, where: str, entry: dict[str, Any]) -> str | None:
    if "publish_token" in entry and "publish_token_file" in entry:
        raise ConfigError(
            f"{path}: {where}: publish_token_file: give publish_token or publish_token_file, not both"
        )
    if "publish_token" in entry:
        return _string(path, where, "publish_token", entry["publish_token"])
    if "publish_token_file" not in entry:
        return None
    file = Path(_string(path, where, "publish_token_file", entry["publish_token_file"]))
    if not file.is_absolute():
        file = path.parent / file
    try:
        token = file.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {where}: publish_token_file: cannot read {file}: {exc}") from None
    if not token:
        raise ConfigError(f"{path}: {where}: publish_token_file: {file} is empty")
    return token


def _viewers(path: Path, where: str, value: Any, users: set[str], groups: set[str]) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f'{path}: {where}: viewers: expected a list such as ["alice", "@family", "*"]')
    for viewer in value:
        if viewer == EVERY_USER:
            continue
        if viewer.startswith("@"):
            if viewer[1:] not in groups:
                raise ConfigError(f"{path}: {where}: viewers: no user is in group {viewer[1:]!r}")
        elif viewer not in users:
            raise ConfigError(f"{path}: {where}: viewers: unknown user {viewer!r}")
    return frozenset(value)
