"""Agent configuration: frozen dataclasses, the option table, and layering of sources.

Every option has a command-line flag and a ``CAMERA_AGENT_*`` environment variable.
Precedence, highest first: flag, ``--config`` file, environment, built-in default.
Errors name the option (flag, variable or file key) and the bad value.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from broker.logs import LOG_FORMATS, LOG_LEVELS

__all__ = [
    "OPTIONS",
    "SOURCE_KINDS",
    "AgentConfig",
    "BrokerConfig",
    "CameraConfig",
    "ConfigError",
    "Option",
    "load_config",
]

SOURCE_KINDS = ("picamera2", "opencv", "synthetic", "files")
WATCH_METHODS = ("auto", "events", "poll")
TRANSPORTS = ("ws", "http")
ENV_PREFIX = "CAMERA_AGENT_"
_CAMERA_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_URL_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


class ConfigError(ValueError):
    """Unusable configuration; the message names the key and the bad value."""


@dataclass(frozen=True)
class BrokerConfig:
    """Where and how to publish; shared by every camera of one agent."""

    url: str  # normalised http(s) base URL, no trailing slash
    token: str
    transport: str = "ws"
    # Limits
    max_frame_bytes: int = 8 * 1024 * 1024
    # Reconnect backoff (seconds): full jitter, doubling from initial up to max.
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    # Timeouts (seconds)
    heartbeat: float = 20.0  # WebSocket ping interval; a dead broker is noticed within about twice this
    connect_timeout: float = 30.0  # connect plus handshake, and one HTTP POST

    def publish_url(self, camera: str, *, websocket: bool) -> str:
        """The publish route for ``camera``, as ws(s):// or http(s)://."""
        base = self.url
        if websocket:
            base = "ws" + base[len("http") :]
        return f"{base}/cameras/{camera}/publish"


@dataclass(frozen=True)
class CameraConfig:
    """One camera: its id on the broker, its source and how to run it."""

    id: str
    source: str
    input: str | None = None  # device index or path, video file, URL, or folder
    # Picture
    fps: float = 15.0
    size: tuple[int, int] | None = None  # None: the source's own size
    quality: int = 80
    camera_num: int = 0
    hflip: bool = False
    vflip: bool = False
    brightness: float | None = None
    contrast: float | None = None
    loop: bool = False
    watch: bool = False
    watch_method: str = "auto"  # events (inotify), poll, or auto: poll on network filesystems
    watch_poll_interval: float = 0.5
    # Demand and health
    always_on: bool = False
    idle_grace: float = 10.0
    stall_timeout: float = 10.0
    max_bad_frames: int = 30  # frames in a row that are not complete JPEGs before the source is reopened


@dataclass(frozen=True)
class AgentConfig:
    """The whole agent: one broker, one or more cameras."""

    broker: BrokerConfig
    cameras: tuple[CameraConfig, ...]
    log_level: str = "info"
    log_format: str = "text"
    stats_interval: float = 60.0


# -- value parsers: accept CLI/env strings and TOML values alike -------------------


def _text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty string")
    return value.strip()


def _choice(*choices: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        text = _text(value).lower()
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return text

    return parse


def _number(kind: type, low: float, high: float) -> Callable[[object], Any]:
    def parse(value: object) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        try:
            number = kind(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            raise ValueError(f"expected {'an integer' if kind is int else 'a number'}") from None
        if isinstance(number, float) and not math.isfinite(number):
            raise ValueError("expected a finite number")
        if not low <= number <= high:
            raise ValueError(f"expected {low:g} to {high:g}")
        return number

    return parse


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true/false, yes/no, on/off or 1/0")


def _size(value: object) -> tuple[int, int]:
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", value)
        if not match:
            raise ValueError("expected WIDTHxHEIGHT, e.g. 1280x720")
        width, height = int(match[1]), int(match[2])
    elif isinstance(value, list | tuple) and len(value) == 2 and all(type(v) is int for v in value):
        width, height = value
    else:
        raise ValueError("expected WIDTHxHEIGHT, e.g. 1280x720")
    if not (16 <= width <= 8192 and 16 <= height <= 8192):
        raise ValueError("width and height must be 16 to 8192")
    return width, height


def _camera_id(value: object) -> str:
    text = _text(value)
    if not _CAMERA_ID.fullmatch(text):
        raise ValueError("use 1 to 64 of A-Z a-z 0-9 _ -")
    return text


def _token(value: object) -> str:
    text = _text(value)
    if any(c.isspace() for c in text):
        raise ValueError("a token cannot contain whitespace")
    return text


def _broker_url(value: object) -> str:
    text = _text(value)
    parts = urlsplit(text)
    if parts.scheme.lower() not in _URL_SCHEMES:
        raise ValueError("expected an http://, https://, ws:// or wss:// URL")
    if not parts.hostname:
        raise ValueError("the URL has no host")
    if parts.query or parts.fragment:
        raise ValueError("the URL must not have a query or fragment")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("the URL has a bad port") from None
    scheme = _URL_SCHEMES[parts.scheme.lower()]
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


@dataclass(frozen=True)
class Option:
    """One setting: its key, where it lives, how to parse it and its help text."""

    key: str
    scope: str  # "agent", "broker", "camera" (dataclass and file table) or "file" (--config)
    parse: Callable[[object], Any]
    help: str
    flag_name: str | None = None  # defaults to the key with dashes
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + (self.flag_name or self.key.replace("_", "-"))

    @property
    def env(self) -> str:
        return ENV_PREFIX + (self.flag_name or self.key).replace("-", "_").upper()

    @property
    def is_bool(self) -> bool:
        return self.parse is _bool

    @property
    def default(self) -> Any:
        """The dataclass default, or dataclasses.MISSING for required settings."""
        owner = {"agent": AgentConfig, "broker": BrokerConfig, "camera": CameraConfig}
        if self.scope not in owner:
            return None
        for f in dataclasses.fields(owner[self.scope]):
            if f.name == self.key:
                return f.default
        raise LookupError(self.key)


_POSITIVE = _number(float, 0.001, 86400.0)

OPTIONS: tuple[Option, ...] = (
    # Agent
    Option("config", "file", _text, "TOML file with a [broker] table and [[camera]] entries",
           metavar="FILE"),
    Option("log_level", "agent", _choice(*LOG_LEVELS), "log level",
           metavar="{" + ",".join(LOG_LEVELS) + "}"),
    Option("log_format", "agent", _choice(*LOG_FORMATS), "text, or json: one object per line",
           metavar="{" + ",".join(LOG_FORMATS) + "}"),
    Option("stats_interval", "agent", _number(float, 0.0, 86400.0),
           "seconds between stats lines (0: none)", metavar="SECONDS"),
    # Broker
    Option("url", "broker", _broker_url, "broker base URL: http(s):// or ws(s)://host:port",
           flag_name="broker", metavar="URL"),
    Option("token", "broker", _token, "publish token (prefer the environment variable)",
           metavar="TOKEN"),
    Option("transport", "broker", _choice(*TRANSPORTS),
           "ws: one WebSocket per camera; http: POST each frame (always on)",
           metavar="{" + ",".join(TRANSPORTS) + "}"),
    Option("max_frame_bytes", "broker", _number(int, 1024, 1 << 30),
           "frames larger than this are dropped before sending", metavar="BYTES"),
    Option("backoff_initial", "broker", _POSITIVE, "first reconnect delay cap", metavar="SECONDS"),
    Option("backoff_max", "broker", _POSITIVE, "longest reconnect delay", metavar="SECONDS"),
    Option("heartbeat", "broker", _POSITIVE, "WebSocket ping interval; a silent broker is dropped",
           metavar="SECONDS"),
    Option("connect_timeout", "broker", _POSITIVE,
           "longest connect and handshake (ws), or one POST (http)", metavar="SECONDS"),
    # Camera
    Option("id", "camera", _camera_id, "camera id on the broker", flag_name="camera",
           metavar="ID"),
    Option("source", "camera", _choice(*SOURCE_KINDS), "where frames come from",
           metavar="{" + ",".join(SOURCE_KINDS) + "}"),
    Option("input", "camera", _text,
           "opencv: device index, /dev/videoN, video file or rtsp/http URL; files: folder",
           metavar="WHAT"),
    Option("fps", "camera", _number(float, 0.1, 240.0), "frames per second", metavar="FPS"),
    Option("size", "camera", _size, "frame size WIDTHxHEIGHT (default: the source's own)",
           metavar="WxH"),
    Option("quality", "camera", _number(int, 1, 100), "JPEG quality when encoding", metavar="Q"),
    Option("camera_num", "camera", _number(int, 0, 63), "picamera2: camera number",
           metavar="N"),
    Option("hflip", "camera", _bool, "mirror left-right (picamera2, opencv)"),
    Option("vflip", "camera", _bool, "flip upside down (picamera2, opencv)"),
    Option("brightness", "camera", _number(float, -1.0, 1.0),
           "picamera2: Brightness control, -1..1", metavar="B"),
    Option("contrast", "camera", _number(float, 0.0, 32.0),
           "picamera2: Contrast control, 1.0 normal", metavar="C"),
    Option("loop", "camera", _bool, "opencv: restart a video file at its end"),
    Option("watch", "camera", _bool, "files: publish each new JPEG written to the folder"),
    Option("watch_method", "camera", _choice(*WATCH_METHODS),
           "files --watch: events (inotify), poll, or auto (poll on network filesystems)",
           metavar="{" + ",".join(WATCH_METHODS) + "}"),
    Option("watch_poll_interval", "camera", _number(float, 0.01, 3600.0),
           "files --watch: seconds between looks at a polled folder", metavar="SECONDS"),
    Option("always_on", "camera", _bool, "capture even while nobody watches"),
    Option("idle_grace", "camera", _number(float, 0.0, 86400.0),
           "seconds without viewers before the camera is closed", metavar="SECONDS"),
    Option("stall_timeout", "camera", _POSITIVE,
           "reopen the source after this long without a frame", metavar="SECONDS"),
    Option("max_bad_frames", "camera", _number(int, 1, 1_000_000),
           "reopen the source after this many frames in a row that are not complete JPEGs", metavar="N"),
)  # fmt: skip

_BY_KEY = {option.key: option for option in OPTIONS}


@dataclass
class _Layers:
    """Values per scope, filled lowest precedence first."""

    agent: dict[str, Any] = field(default_factory=dict)
    broker: dict[str, Any] = field(default_factory=dict)
    camera: dict[str, Any] = field(default_factory=dict)

    def scope(self, name: str) -> dict[str, Any]:
        return getattr(self, name)


def load_config(flags: Mapping[str, object], environ: Mapping[str, str]) -> AgentConfig:
    """Build the configuration from parsed flags (key -> value, only those given),
    the environment, and the ``--config`` file when one is named."""
    env = _Layers()
    for option in OPTIONS:
        if option.env in environ and option.scope != "file":
            env.scope(option.scope)[option.key] = _parse(option, environ[option.env], option.env)
    cli = _Layers()
    for key, value in flags.items():
        option = _BY_KEY[key]
        if option.scope != "file":
            cli.scope(option.scope)[key] = _parse(option, value, option.flag)

    config_file = flags.get("config") or environ.get(_BY_KEY["config"].env)
    if config_file:
        if "id" in cli.camera:
            raise ConfigError("--camera cannot be combined with --config: give each [[camera]] an id")
        agent_file, broker_file, camera_files = _read_file(Path(str(config_file)))
        camera_layers = [env.camera | entry | cli.camera for entry in camera_files]
        agent_values = env.agent | agent_file | cli.agent
        broker_values = env.broker | broker_file | cli.broker
        where = [f"{config_file}: camera[{n}]" for n in range(1, len(camera_layers) + 1)]
    else:
        camera_layers = [env.camera | cli.camera]
        agent_values = env.agent | cli.agent
        broker_values = env.broker | cli.broker
        where = ["camera"]

    broker = _build(BrokerConfig, broker_values, "broker")
    cameras = tuple(_build(CameraConfig, values, w) for values, w in zip(camera_layers, where, strict=True))
    _check_cameras(cameras, broker)
    return _build(AgentConfig, agent_values | {"broker": broker, "cameras": cameras}, "agent")


def _parse(option: Option, value: object, origin: str) -> Any:
    try:
        return option.parse(value)
    except ValueError as exc:
        raise ConfigError(f"{origin}: bad value {value!r}: {exc}") from None


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        hints = ", ".join(_BY_KEY[m].flag + " / " + _BY_KEY[m].env for m in missing)
        raise ConfigError(f"{where}: missing {', '.join(missing)} (set {hints})")
    return cls(**values)


def _check_cameras(cameras: Iterable[CameraConfig], broker: BrokerConfig) -> None:
    seen: set[str] = set()
    for camera in cameras:
        if camera.id in seen:
            raise ConfigError(f"camera id {camera.id!r} appears twice")
        seen.add(camera.id)
    if not seen:
        raise ConfigError("no cameras configured: add a [[camera]] entry")
    if broker.backoff_max < broker.backoff_initial:
        raise ConfigError(
            f"backoff_max={broker.backoff_max:g} is smaller than backoff_initial={broker.backoff_initial:g}"
        )


def _read_file(
    path: Path,
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        raise ConfigError("--config needs Python 3.11 or newer (for tomllib)") from None
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"--config {str(path)!r}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {str(path)!r}: not valid TOML: {exc}") from None

    unknown = set(data) - {"agent", "broker", "camera"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown table {sorted(unknown)[0]!r} (expected [agent], [broker], [[camera]])"
        )
    agent = _table(data.get("agent", {}), "agent", f"{path}: [agent]")
    broker = _table(data.get("broker", {}), "broker", f"{path}: [broker]")
    cameras = data.get("camera", [])
    if not isinstance(cameras, list):
        raise ConfigError(f"{path}: 'camera' must be an array of tables: [[camera]]")
    entries = [_table(entry, "camera", f"{path}: camera[{n}]") for n, entry in enumerate(cameras, start=1)]
    return agent, broker, entries


def _table(table: object, scope: str, where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    known = {o.key for o in OPTIONS if o.scope == scope}
    values = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
        values[key] = _parse(_BY_KEY[key], value, f"{where}.{key}")
    return values
