"""Every setting of the broker, with its default, its CLI flag, its environment variable and its file key."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .logs import LOG_FORMATS, LOG_LEVELS
from .resize import DEFAULT_MAX_PIXELS

__all__ = [
    "CAMERA_ID",
    "ENV_PREFIX",
    "ConfigError",
    "Settings",
    "default_state_dir",
    "default_static_dir",
    "env_name",
    "parse_value",
    "settings_from_env",
]

ENV_PREFIX = "FRAMEBROKER_"
CAMERA_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


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


def default_state_dir() -> Path:
    """systemd's `StateDirectory=` if set, else the XDG state folder of the user."""
    if systemd := os.environ.get("STATE_DIRECTORY"):
        return Path(systemd.split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "framebroker"


def _help(text: str, group: str, **more: Any) -> dict[str, Any]:
    """Field metadata: help text and --help group; `flag=False`, `env=False` or `file=False` leave one
    source out."""
    return {"help": text, "group": group, **more}


@dataclass(frozen=True)
class Settings:
    """The broker's configuration. Build it from flags, env and file with `broker.cli`, or directly."""

    # Network
    host: str = field(default="127.0.0.1", metadata=_help("address to listen on", "network"))
    port: int = field(default=8080, metadata=_help("TCP port to listen on (0 = any free)", "network"))
    allowed_hosts: tuple[str, ...] = field(
        default=(),
        metadata=_help(
            "host names clients may address the broker by (comma-separated; '.example.org' includes "
            "subdomains, '*' any); empty = the loopback names when listening on loopback, else any",
            "network",
        ),
    )
    allowed_origins: tuple[str, ...] = field(
        default=(),
        metadata=_help(
            "web origins besides the broker's own whose pages may open viewer WebSockets or use "
            "a signed-in session (comma-separated, e.g. https://home.example.org)",
            "network",
        ),
    )
    trusted_proxies: tuple[str, ...] = field(
        default=(),
        metadata=_help(
            "reverse proxies (comma-separated addresses or CIDRs) whose X-Forwarded-For, -Proto "
            "and -Host headers are believed; from anyone else they are ignored",
            "network",
        ),
    )
    tls_cert: Path | None = field(
        default=None,
        metadata=_help(
            "serve HTTPS and WSS with this PEM certificate chain (e.g. certbot's fullchain.pem); "
            "reread with --tls-key on SIGHUP",
            "network",
        ),
    )
    tls_key: Path | None = field(
        default=None,
        metadata=_help("the certificate's PEM private key (e.g. certbot's privkey.pem)", "network"),
    )
    tls_handshake_timeout: float = field(
        default=10.0,
        metadata=_help("a client must finish its TLS handshake within this long, seconds", "network"),
    )

    # Access
    config: Path | None = field(
        default=None,
        metadata=_help("TOML file with settings, [[user]] and [[camera]] entries", "access", file=False),
    )
    publish_token: str = field(
        default="",
        repr=False,
        metadata=_help(
            "token publishers must present for cameras without a token of their own; empty = "
            "generate one once into the state directory",
            "access",
        ),
    )
    public: bool = field(
        default=False,
        metadata=_help(
            "let anyone watch every camera that has no viewers list of its own, without signing in",
            "access",
        ),
    )
    state_dir: Path = field(
        default_factory=default_state_dir,
        metadata=_help("folder for the generated signing key and publish token", "access"),
    )
    secret_file: Path | None = field(
        default=None,
        metadata=_help(
            "file holding the key that signs sessions and share links (else FRAMEBROKER_SECRET, "
            "else one generated into the state directory); changing it revokes them all",
            "access",
        ),
    )
    secret: str = field(
        default="",
        repr=False,
        metadata=_help("the signing key itself (environment only)", "access", flag=False, file=False),
    )
    session_lifetime: float = field(
        default=7 * 86400.0,
        metadata=_help("how long a browser stays signed in, seconds (or 12h, 7d)", "access"),
    )
    auth_failures_per_minute: int = field(
        default=10,
        metadata=_help(
            "wrong passwords, tokens or share links one client address may send per minute before "
            "it gets 429",
            "access",
        ),
    )

    # Limits
    max_frame_bytes: int = field(
        default=8 * 1024 * 1024,
        metadata=_help("largest JPEG a publisher may send, bytes", "limits"),
    )
    max_cameras: int = field(
        default=256, metadata=_help("most cameras with a publisher (now or earlier) kept at once", "limits")
    )
    max_bad_frames: int = field(
        default=30,
        metadata=_help(
            "a publisher is closed (1003) after this many frames in a row that are not complete JPEGs; "
            "fewer are dropped and counted",
            "limits",
        ),
    )
    max_viewers: int = field(
        default=10_000, metadata=_help("most WebSocket and MJPEG viewers of the whole broker", "limits")
    )
    max_viewers_per_camera: int = field(
        default=5_000, metadata=_help("most WebSocket and MJPEG viewers of one camera", "limits")
    )
    max_connections_per_ip: int = field(
        default=64,
        metadata=_help(
            "most connections, and most viewers, from one client address (addresses of this machine "
            "and --trusted-proxies are exempt: they speak for many clients)",
            "limits",
        ),
    )
    max_waiting_viewers: int = field(
        default=256,
        metadata=_help("most viewers waiting for cameras that have never published", "limits"),
    )
    descriptor_reserve: int = field(
        default=128,
        metadata=_help(
            "file descriptors kept free for publishers and short requests: viewers are refused "
            "before the process runs out",
            "limits",
        ),
    )
    max_subscriptions: int = field(
        default=64,
        metadata=_help("most cameras one viewer socket (GET /ws) may subscribe to at once", "limits"),
    )
    max_bad_messages: int = field(
        default=20,
        metadata=_help(
            "a viewer socket (GET /ws) is closed (1008) after this many malformed, unknown or refused "
            "messages; each one before that gets a JSON error",
            "limits",
        ),
    )
    max_variants_per_camera: int = field(
        default=4,
        metadata=_help(
            "most smaller sizes (?width=) of one camera made at once; past it a request gets the "
            "live size nearest to the one it asked for",
            "limits",
        ),
    )
    resize_threads: int = field(
        default=2,
        metadata=_help("threads that make the smaller sizes of frames (off the event loop)", "limits"),
    )
    max_resize_pixels: int = field(
        default=DEFAULT_MAX_PIXELS,
        metadata=_help(
            "most pixels (width x height) decoded to make a smaller size of a frame, after libjpeg's "
            "reduced-size decoding; a frame that needs more is not resized (its JPEG header may "
            "claim any size)",
            "limits",
        ),
    )
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
    snapshot_wait: float = field(
        default=3.0,
        metadata=_help(
            "a snapshot of a camera that is not capturing (nobody watches) waits up to this long for a "
            "fresh frame, then gets the last one (0: never waits)",
            "timeouts",
        ),
    )
    snapshot_grace: float = field(
        default=5.0,
        metadata=_help(
            "a snapshot counts as a viewer for this long, so an agent capturing on demand keeps going "
            "for pollers faster than this and pauses between slower ones",
            "timeouts",
        ),
    )
    forget_after: float = field(
        default=3600.0,
        metadata=_help("a camera nobody has published to or watched for this long is removed", "timeouts"),
    )

    # Cluster (README, "Scaling out")
    redis: str = field(
        default="",
        repr=False,  # a password may be in the URL
        metadata=_help(
            "make this broker a node of the cluster named by this Redis database: redis://HOST:PORT/DB "
            "or rediss:// for TLS (password in the URL or in --redis-password-file); empty = one "
            "process on its own",
            "cluster",
        ),
    )
    redis_password_file: Path | None = field(
        default=None,
        metadata=_help("file holding the Redis password (instead of putting it in the URL)", "cluster"),
    )
    node_name: str = field(
        default="",
        metadata=_help("this node's name in the cluster; empty = hostname:port", "cluster"),
    )
    workers: int = field(
        default=1,
        metadata=_help(
            "broker processes on this host sharing the port (SO_REUSEPORT); above 1 needs --redis",
            "cluster",
        ),
    )
    redis_timeout: float = field(
        default=2.0,
        metadata=_help(
            "longest wait for Redis to connect or answer; it is also pinged this often, so a frozen "
            "Redis is noticed within about twice this",
            "cluster",
        ),
    )
    node_ttl: float = field(
        default=5.0,
        metadata=_help(
            "a node's viewer counts and publisher claims expire this long after it last refreshed "
            "them (a third of this), so a node that dies stops counting",
            "cluster",
        ),
    )

    # URLs of other camera servers
    default_camera: str = field(
        default="",
        metadata=_help(
            "camera of the URLs that name none (/?action=stream, /stream, /snapshot); "
            "empty = the only camera, when the broker has exactly one",
            "compat",
        ),
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
        metadata=_help("log one line per HTTP request (secrets in the query redacted)", "other"),
    )
    demo: bool = field(
        default=False, metadata=_help("run a built-in synthetic camera called 'demo'", "other")
    )

    # Where the values came from: not a setting itself, so no flag, variable or file key.
    from_file: frozenset[str] = field(
        default=frozenset(),
        compare=False,
        metadata=_help(
            "the settings whose value came from the config file", "other", flag=False, file=False, env=False
        ),
    )

    def qualified(self, setting: str) -> str:
        """`setting` as an error message names it: after the config file when its value came from there,
        so that the operator knows which of flag, variable and file to fix."""
        return f"{self.config}: {setting}" if setting in self.from_file else setting

    def __post_init__(self) -> None:
        self._check(1 <= self.port <= 65535 or self.port == 0, "port", self.port, "a TCP port 0-65535")
        self._check(self.max_frame_bytes >= 1024, "max_frame_bytes", self.max_frame_bytes, ">= 1024")
        for name in (
            "max_cameras",
            "max_bad_frames",
            "max_viewers",
            "max_viewers_per_camera",
            "max_connections_per_ip",
            "max_waiting_viewers",
            "max_subscriptions",
            "max_bad_messages",
            "max_variants_per_camera",
            "resize_threads",
        ):
            self._check(getattr(self, name) >= 1, name, getattr(self, name), ">= 1")
        self._check(self.descriptor_reserve >= 16, "descriptor_reserve", self.descriptor_reserve, ">= 16")
        self._check(self.viewer_sndbuf >= 4096, "viewer_sndbuf", self.viewer_sndbuf, ">= 4096")
        self._check(self.max_resize_pixels >= 65536, "max_resize_pixels", self.max_resize_pixels, ">= 65536")
        self._check(
            self.auth_failures_per_minute >= 1,
            "auth_failures_per_minute",
            self.auth_failures_per_minute,
            ">= 1",
        )
        for name in (
            "heartbeat",
            "offline_after",
            "viewer_send_timeout",
            "mjpeg_keepalive",
            "shutdown_timeout",
            "session_lifetime",
            "forget_after",
            "tls_handshake_timeout",
            "snapshot_grace",
        ):
            value = getattr(self, name)
            self._check(value > 0, name, value, "> 0 seconds")
        self._check(self.snapshot_wait >= 0, "snapshot_wait", self.snapshot_wait, ">= 0 seconds")
        self._check(
            not self.default_camera or CAMERA_ID.fullmatch(self.default_camera) is not None,
            "default_camera",
            self.default_camera,
            "empty or 1-64 characters from A-Z a-z 0-9 _ -",
        )
        self._check(1 <= self.workers <= 256, "workers", self.workers, "1 to 256")
        if self.workers > 1 and not self.redis:
            raise ConfigError(
                f"{self.qualified('workers')}={self.workers} needs --redis: worker processes share cameras "
                "and viewers only through Redis; without it each would be a separate broker with its own "
                "cameras"
            )
        self._check(
            not self.redis or self.redis.startswith(("redis://", "rediss://")),
            "redis",
            _redacted(self.redis),
            "a redis:// or rediss:// URL",
        )
        self._check(
            len(self.node_name.encode()) <= 200 and self.node_name.isprintable(),
            "node_name",
            self.node_name,
            "at most 200 printable characters",
        )
        self._check(self.redis_timeout > 0, "redis_timeout", self.redis_timeout, "> 0 seconds")
        self._check(self.node_ttl >= 1, "node_ttl", self.node_ttl, ">= 1 second")
        self._check(self.log_level in LOG_LEVELS, "log_level", self.log_level, " or ".join(LOG_LEVELS))
        self._check(self.log_format in LOG_FORMATS, "log_format", self.log_format, " or ".join(LOG_FORMATS))
        if (self.tls_cert is None) != (self.tls_key is None):
            given, missing = ("tls_cert", "tls_key") if self.tls_key is None else ("tls_key", "tls_cert")
            raise ConfigError(
                f"{self.qualified(given)} is set but {missing} is not: TLS needs both the certificate and "
                "its key"
            )
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ConfigError(
                    f"{self.qualified('trusted_proxies')}: {proxy!r} is invalid: "
                    "expected an IP address or CIDR such as 10.0.0.0/8"
                ) from None
        for origin in self.allowed_origins:
            self._check(
                re.fullmatch(r"https?://[^/?#\s]+", origin) is not None,
                "allowed_origins",
                origin,
                "scheme://host[:port], e.g. https://home.example.org",
            )

    def _check(self, ok: bool, setting: str, value: Any, expected: str) -> None:
        if not ok:
            raise ConfigError(f"{self.qualified(setting)}={value!r} is invalid: expected {expected}")

    @property
    def on_loopback(self) -> bool:
        """Whether the broker listens only on this machine."""
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) only ever means this machine."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _redacted(url: str) -> str:
    """A URL with its password, if any, replaced by ***."""
    return re.sub(r"(://[^/@]*:)[^/@]*@", r"\1***@", url)


def env_name(name: str) -> str:
    """The environment variable for a setting: FRAMEBROKER_ plus its name in capitals."""
    return ENV_PREFIX + name.upper()


_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*", re.IGNORECASE)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(raw: str) -> float:
    """Seconds from '90', '1.5', '90s', '15m', '24h' or '7d'; ValueError otherwise."""
    match = _DURATION.fullmatch(raw)
    if match is None:
        raise ValueError(raw)
    number, unit = match.groups()
    return float(number) * _UNIT_SECONDS[(unit or "s").lower()]


def parse_value(name: str, annotation: str, raw: str) -> Any:
    """Turn a flag's or environment variable's text into a setting's value."""
    try:
        if annotation == "int":
            return int(raw)
        if annotation == "float":
            return parse_duration(raw)
        if annotation == "bool":
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if annotation == "Path":
            return Path(raw)
        if annotation == "Path | None":
            return Path(raw) if raw else None
        if annotation == "tuple[str, ...]":
            return tuple(item.strip() for item in raw.split(",") if item.strip())
    except ValueError:
        expected = "a duration in seconds (or with s, m, h, d)" if annotation == "float" else annotation
        raise ConfigError(f"{name}={raw!r} is invalid: expected {expected}") from None
    return raw


def coerce_value(name: str, annotation: str, value: Any) -> Any:
    """A value from the config file (TOML types) as the setting's type; ConfigError if it does not fit."""
    if isinstance(value, str) and annotation != "tuple[str, ...]":
        return parse_value(name, annotation, value)
    expected = {
        "int": (int,),
        "float": (int, float),
        "bool": (bool,),
        "tuple[str, ...]": (list, str),
        "str": (str,),
    }.get(annotation, (str,))
    if not isinstance(value, expected) or (isinstance(value, bool) and annotation != "bool"):
        raise ConfigError(f"{name}={value!r} is invalid: expected {annotation}")
    if annotation == "float":
        return float(value)
    if annotation == "tuple[str, ...]":
        items = value.split(",") if isinstance(value, str) else value
        if not all(isinstance(item, str) for item in items):
            raise ConfigError(f"{name}={value!r} is invalid: expected a list of strings")
        return tuple(item.strip() for item in items if item.strip())
    return value


def settings_from_env(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from the config file (FRAMEBROKER_CONFIG or `config=`), FRAMEBROKER_*, then `overrides`."""
    from .configfile import read_settings

    environ = os.environ if environ is None else environ
    from_env: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        raw = environ.get(env_name(f.name)) if f.metadata.get("env", True) else None
        if raw is not None:
            from_env[f.name] = parse_value(env_name(f.name), str(f.type), raw)
    config = overrides.get("config", from_env.get("config"))
    from_file = read_settings(config) if config else {}
    return Settings(
        **{**from_file, **from_env, **overrides},
        from_file=frozenset(from_file.keys() - from_env.keys() - overrides.keys()),
    )
