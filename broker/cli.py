"""`framebroker`: flags and FRAMEBROKER_* variables in, a running broker out."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .config import ConfigError, Settings, env_name, parse_value, settings_from_env
from .logs import configure_logging
from .server import BrokerServer

__all__ = ["build_parser", "main", "serve"]

log = logging.getLogger("broker")

GROUP_TITLES = {
    "network": "network",
    "auth": "authentication",
    "limits": "limits",
    "timeouts": "timeouts (seconds)",
    "other": "page, logging and demo",
}


def build_parser() -> argparse.ArgumentParser:
    """One flag per setting; each says its environment variable and default."""
    parser = argparse.ArgumentParser(
        prog="framebroker",
        description="Live-camera frame broker: JPEG frames in over WebSocket or HTTP, out to "
        "WebSocket viewers, snapshots and MJPEG. Every flag can also be set with the "
        "environment variable shown; a flag wins over the variable.",
    )
    parser.add_argument("--version", action="version", version=f"framebroker {__version__}")
    groups = {key: parser.add_argument_group(title) for key, title in GROUP_TITLES.items()}
    defaults = Settings(publish_token="unused")
    for f in dataclasses.fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name) if f.name != "publish_token" else "(generated)"
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
        value = getattr(args, f.name)
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


async def serve(settings: Settings) -> None:
    """Run the broker until SIGINT or SIGTERM, then shut down gracefully."""
    server = BrokerServer(settings)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    for host, port in server.addresses:
        shown = f"[{host}]" if ":" in host else host
        log.info("framebroker %s serving on http://%s:%d/ (open it in a browser)", __version__, shown, port)
    if settings.host in ("0.0.0.0", "::", ""):
        log.info("listening on every interface: use this machine's address in the URL")
    if settings.demo:
        log.info("demo camera: http://127.0.0.1:%d/#/cameras/demo", server.port)
    await stop.wait()
    log.info("shutting down (at most %.1f s)", server.settings.shutdown_timeout)
    await server.stop()
    log.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    try:
        settings = parse_settings(argv)
    except ConfigError as exc:
        print(f"framebroker: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    raise_open_file_limit()
    try:
        import uvloop
    except ImportError:  # Windows: uvloop does not exist there
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))
    return 0
