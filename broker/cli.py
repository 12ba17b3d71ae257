"""`framebroker`: flags and FRAMEBROKER_* variables in, a running broker out."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import logging
import signal
import socket
import sys
import time
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from . import __version__
from .config import ConfigError, Settings, env_name, parse_value, settings_from_env
from .logs import configure_logging
from .params import CAMERA_ID
from .passwords import hash_password
from .server import BrokerServer
from .share import ShareLinks
from .state import read_signing_key
from .systemd import Notifier, ServiceNotifier

__all__ = ["build_parser", "main", "serve"]

log = logging.getLogger("broker")

T = TypeVar("T")

GROUP_TITLES = {
    "network": "network",
    "access": "access (see README, Security)",
    "limits": "limits",
    "timeouts": "timeouts (seconds)",
    "cluster": "cluster (see README, Scaling out)",
    "compat": "URLs of other camera servers",
    "other": "page, logging and demo",
}


def build_parser() -> argparse.ArgumentParser:
    """One flag per setting; each says its environment variable and default."""
    parser = argparse.ArgumentParser(
        prog="framebroker",
        description="Live-camera frame broker: JPEG frames in over WebSocket or HTTP, out to "
        "WebSocket viewers, snapshots and MJPEG. Every flag can also be set with the "
        "environment variable shown, or as a top-level key of the --config file; a flag wins "
        "over the variable, which wins over the file.",
        epilog="other commands: 'framebroker hash-password' prints a password hash for a [[user]] entry; "
        "'framebroker share CAMERA --ttl 24h' prints share links (each has its own --help)",
    )
    parser.add_argument("--version", action="version", version=f"framebroker {__version__}")
    groups = {key: parser.add_argument_group(title) for key, title in GROUP_TITLES.items()}
    defaults = Settings()
    for f in dataclasses.fields(Settings):
        if not f.metadata.get("flag", True):
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name) if f.name != "publish_token" else "(generated into the state dir)"
        help_text = f"{f.metadata['help']} [env {env_name(f.name)}; default {default}]"
        group = groups[f.metadata["group"]]
        if f.type == "bool":
            group.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            group.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(), help=help_text)
    return parser


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    """Settings from the command line over the environment; ConfigError names what is wrong."""
    args = build_parser().parse_args(argv)
    overrides: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        flag = "--" + f.name.replace("_", "-")
        overrides[f.name] = value if f.type == "bool" else parse_value(flag, str(f.type), value)
    return settings_from_env(**overrides)


def raise_open_file_limit() -> None:
    """Lift the soft limit on open files to the hard one.

    Each viewer holds two descriptors (the connection and the broker's own sending
    descriptor, see writer.py), so the common soft limit of 1024 would cap a broker
    at a few hundred viewers.
    """
    try:
        import resource
    except ImportError:  # Windows has no such limit
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, exc)
            return
        soft = hard
    log.debug("open-file limit: %s", soft)


async def serve(settings: Settings, notifier: Notifier | None = None) -> None:
    """Run the broker until SIGINT or SIGTERM, then shut down gracefully; SIGHUP rereads the certificate.

    `notifier` hears "ready" and "stopping": systemd's by default, a supervisor's for a worker.
    """
    server = BrokerServer(settings)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload_tls)
    for host, port in server.addresses:
        shown = f"[{host}]" if ":" in host else host
        url = f"{server.scheme}://{shown}:{port}/"
        log.info("framebroker %s serving on %s (open it in a browser)", __version__, url)
    if settings.host in ("0.0.0.0", "::", ""):
        log.info("listening on every interface: use this machine's address in the URL")
    if settings.demo:
        log.info("demo camera: %s://127.0.0.1:%d/#/cameras/demo", server.scheme, server.port)
    systemd = notifier or ServiceNotifier()
    systemd.ready(f"serving on port {server.port}")
    await stop.wait()
    systemd.stopping()
    log.info("shutting down (at most %.1f s)", server.settings.shutdown_timeout)
    await server.stop()
    log.info("stopped")


def hash_password_command(argv: Sequence[str]) -> int:
    """`framebroker hash-password`: a hash for a `[[user]]` entry, of a password typed or piped in."""
    argparse.ArgumentParser(
        prog="framebroker hash-password",
        description="Print a password hash (scrypt) for a [[user]] entry's password_hash. The password "
        "is typed without echo, or read as one line from standard input when that is not a terminal.",
    ).parse_args(argv)
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("framebroker: error: the passwords differ", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("framebroker: error: empty password", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0


def share_command(argv: Sequence[str]) -> int:
    """`framebroker share CAMERA --ttl 24h`: page, MJPEG and snapshot links that need no account."""
    parser = argparse.ArgumentParser(
        prog="framebroker share",
        description="Print links that let anyone holding them watch one camera, read-only, until they "
        "expire. They are signed with the broker's key (secret_file in the config, FRAMEBROKER_SECRET, "
        "or the key the broker generated in its state directory, which share reads but never makes); "
        "changing the key revokes every link.",
    )
    parser.add_argument("camera", help="camera id")
    parser.add_argument(
        "--ttl", default="24h", help="how long the links work: seconds, or 30m, 24h, 7d (default 24h)"
    )
    parser.add_argument(
        "--base-url", help="the broker's address as viewers reach it (default: from --host/--port)"
    )
    parser.add_argument("--config", help="the broker's config file [env FRAMEBROKER_CONFIG]")
    parser.add_argument("--state-dir", help="the broker's state directory [env FRAMEBROKER_STATE_DIR]")
    args = parser.parse_args(argv)
    try:
        overrides = {
            name: parse_value(f"--{name.replace('_', '-')}", "Path", value)
            for name, value in (("config", args.config), ("state_dir", args.state_dir))
            if value is not None
        }
        settings = settings_from_env(**overrides)
        if CAMERA_ID.fullmatch(args.camera) is None:
            raise ConfigError(f"camera={args.camera!r} is invalid: use 1-64 characters from A-Z a-z 0-9 _ -")
        ttl = parse_value("--ttl", "float", args.ttl)
        if ttl <= 0:
            raise ConfigError(f"--ttl={args.ttl!r} is invalid: expected a positive duration")
        links = ShareLinks(read_signing_key(settings))
    except ConfigError as exc:
        print(f"framebroker: error: {exc}", file=sys.stderr)
        return 2
    base_url = args.base_url or _default_base_url(settings)
    for kind, url in links.urls(base_url, args.camera, time.time() + ttl).items():
        print(f"{kind}: {url}")
    return 0


def _default_base_url(settings: Settings) -> str:
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if settings.tls_cert is not None else "http"
    return f"{scheme}://{shown}:{settings.port}/"


COMMANDS = {"hash-password": hash_password_command, "share": share_command}


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: the broker, or one of COMMANDS."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    try:
        settings = parse_settings(argv)
    except ConfigError as exc:
        print(f"framebroker: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    raise_open_file_limit()
    try:
        if settings.workers > 1:
            from .supervisor import Supervisor

            return run_loop(Supervisor(settings).run())
        run_loop(serve(settings))
    except ConfigError as exc:
        print(f"framebroker: error: {exc}", file=sys.stderr)
        return 2
    return 0


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on uvloop (asyncio's own loop where uvloop does not exist, on Windows)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
