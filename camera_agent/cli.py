"""``camera-agent``: flags and CAMERA_AGENT_* variables → AgentConfig → Agent.run()."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

from broker.logs import configure_logging
from broker.systemd import ServiceNotifier

from . import __version__
from .agent import Agent
from .config import OPTIONS, AgentConfig, ConfigError, load_config
from .sources import FrameSource, open_source

__all__ = ["build_parser", "main"]

log = logging.getLogger("camera_agent")

_GROUPS = {
    "file": "configuration file",
    "agent": "agent",
    "broker": "broker",
    "camera": "camera (with --config: these flags apply to every [[camera]])",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every option shows its environment variable and default."""
    parser = argparse.ArgumentParser(
        prog="camera-agent",
        description="Capture a camera and keep a framebroker supplied with its newest frame.",
        epilog="Precedence: flag, then --config file, then environment, then default.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    groups = {scope: parser.add_argument_group(title) for scope, title in _GROUPS.items()}
    for option in OPTIONS:
        default = option.default
        shown = "required" if default is dataclasses.MISSING else ("none" if default is None else default)
        if isinstance(shown, tuple):
            shown = "x".join(map(str, shown))
        text = f"{option.help} [env {option.env}; default: {shown}]"
        kwargs: dict[str, Any] = {"dest": option.key, "default": None, "help": text}
        if option.is_bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["metavar"] = option.metavar or option.key.upper()
        groups[option.scope].add_argument(option.flag, **kwargs)
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the agent; returns the exit code (2 for bad configuration)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    flags = {key: value for key, value in vars(args).items() if value is not None}
    try:
        config = load_config(flags, os.environ if environ is None else environ)
        sources = {camera.id: open_source(camera) for camera in config.cameras}
    except ConfigError as exc:
        print(f"camera-agent: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_format)
    return _run(_serve(config, sources))


async def _serve(config: AgentConfig, sources: Mapping[str, FrameSource]) -> None:
    """Run the agent until it finishes or SIGINT/SIGTERM asks it to stop."""
    loop = asyncio.get_running_loop()
    runner = Agent(config, sources)
    agent = asyncio.create_task(runner.run(), name="agent")
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, agent.cancel)
    systemd = ServiceNotifier()
    started = asyncio.ensure_future(runner.started.wait())
    try:
        await asyncio.wait({agent, started}, return_when=asyncio.FIRST_COMPLETED)
        if started.done():
            systemd.ready(f"publishing {len(config.cameras)} camera(s) to {config.broker.url}")
        await agent
    except asyncio.CancelledError:
        log.info("stopped")
    finally:
        started.cancel()
        systemd.stopping()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _run(coro: Coroutine[Any, Any, None]) -> int:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)
    return 0
