"""Every setting of the broker, with its default, its CLI flag and its environment variable."""

from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ENV_PREFIX", "ConfigError", "Settings", "default_static_dir", "settings_from_env"]

ENV_PREFIX = "FRAMEBROKER_"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


class ConfigError(ValueError):
    """A setting has a value the broker cannot use; the message names the setting and the value."""


def default_static_dir() -> Path:
    """The viewer page: `static/` beside the package, or where a wheel install put it."""
    import sys

    candidates = (
        Path(__file__).resolve().parent.parent / "static",
        Path(sys.prefix) / "share" / "framebroker" / "static",
    )
    for candidate in candidates:
        if (candidate / "index.html").is_file():
            return candidate
    return candidates[0]


def _help(text: str, group: str) -> dict[str, str]:
    return {"help": text, "group": group}


@dataclass(frozen=True)
class Settings:
    """The broker's configuration. Build it from flags and env with `broker.cli`, or directly."""

    # Network
    host: str = field(default="127.0.0.1", metadata=_help("address to listen on", "network"))
    port: int = field(default=8080, metadata=_help("TCP port to listen on (0 = any free)", "network"))

    # Auth
    publish_token: str = field(
        default="",
        metadata=_help("token publishers must present; empty = generate one at start and log it", "auth"),
    )

    # Limits
    max_frame_bytes: int = field(
        default=8 * 1024 * 1024,
        metadata=_help("largest JPEG a publisher may send, bytes", "limits"),
    )
    max_cameras: int = field(default=256, metadata=_help("most cameras the broker keeps at once", "limits"))
    viewer_sndbuf: int = field(
        default=128 * 1024,
        metadata=_help(
            "kernel send buffer per viewer socket, bytes (bounds memory a stalled viewer pins)",
            "limits",
        ),
    )

    # Timeouts (seconds)
    heartbeat: float = field(
        default=10.0,
        metadata=_help(
            "WebSocket ping interval (up to a fifth longer or shorter per viewer, so pings spread out); "
            "a peer missing a pong is dropped",
            "timeouts",
        ),
    )
    offline_after: float = field(
        default=5.0,
        metadata=_help("a camera expected to send frames is offline after this long without one", "timeouts"),
    )
    viewer_send_timeout: float = field(
        default=10.0,
        metadata=_help("a viewer whose socket accepts nothing for this long is disconnected", "timeouts"),
    )
    mjpeg_keepalive: float = field(
        default=1.0,
        metadata=_help("repeat the last MJPEG frame after this long without a new one", "timeouts"),
    )
    shutdown_timeout: float = field(
        default=5.0, metadata=_help("how long a graceful shutdown may take", "timeouts")
    )

    # Paths and logging
    static_dir: Path = field(
        default_factory=default_static_dir,
        metadata=_help("folder the viewer page is served from", "other"),
    )
    log_level: str = field(default="info", metadata=_help("debug, info, warning or error", "other"))
    log_format: str = field(default="text", metadata=_help("text or json (one object per line)", "other"))
    access_log: bool = field(
        default=True,
        metadata=_help("log one line per HTTP request (query tokens redacted)", "other"),
    )
    demo: bool = field(
        default=False, metadata=_help("run a built-in synthetic camera called 'demo'", "other")
    )

    def __post_init__(self) -> None:
        _check(1 <= self.port <= 65535 or self.port == 0, "port", self.port, "a TCP port 0-65535")
        _check(self.max_frame_bytes >= 1024, "max_frame_bytes", self.max_frame_bytes, ">= 1024")
        _check(self.max_cameras >= 1, "max_cameras", self.max_cameras, ">= 1")
        _check(self.viewer_sndbuf >= 4096, "viewer_sndbuf", self.viewer_sndbuf, ">= 4096")
        for name in (
            "heartbeat",
            "offline_after",
            "viewer_send_timeout",
            "mjpeg_keepalive",
            "shutdown_timeout",
        ):
            value = getattr(self, name)
            _check(value > 0, name, value, "> 0 seconds")
        _check(self.log_level in LOG_LEVELS, "log_level", self.log_level, " or ".join(LOG_LEVELS))
        _check(self.log_format in LOG_FORMATS, "log_format", self.log_format, " or ".join(LOG_FORMATS))

    def with_token(self) -> tuple[Settings, bool]:
        """These settings with a publish token; True when it had to be generated."""
        if self.publish_token:
            return self, False
        return dataclasses.replace(self, publish_token=secrets.token_urlsafe(18)), True


def _check(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r} is invalid: expected {expected}")


def env_name(name: str) -> str:
    """The environment variable for a setting: FRAMEBROKER_ plus its name in capitals."""
    return ENV_PREFIX + name.upper()


def parse_value(name: str, annotation: str, raw: str) -> Any:
    """Turn a flag's or environment variable's text into a setting's value."""
    try:
        if annotation == "int":
            return int(raw)
        if annotation == "float":
            return float(raw)
        if annotation == "bool":
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if annotation == "Path":
            return Path(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is invalid: expected {annotation}") from None
    return raw


def settings_from_env(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from FRAMEBROKER_* variables, then `overrides` on top."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        raw = environ.get(env_name(f.name))
        if raw is not None:
            values[f.name] = parse_value(env_name(f.name), str(f.type), raw)
    values.update(overrides)
    return Settings(**values)
