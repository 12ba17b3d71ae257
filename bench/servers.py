"""The servers under test: a broker or the ideal relay started here (pinned to a core), or the user's."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .errors import BenchError
from .target import Target
from .tls import TlsFiles

__all__ = ["Server", "check_reachable", "pinned", "started"]

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
MAX_LOG_LINES = 20
VIEWER_LIMIT_FLOOR = 10_000  # the broker's default --max-viewers: never lowered for small runs


@dataclass(frozen=True)
class Server:
    """A server to measure: `name` is "broker", "ideal" or "your broker"; `pid` None if unknown."""

    name: str
    target: Target
    pid: int | None


@contextlib.contextmanager
def pinned(core: int | None) -> Iterator[None]:
    """Run the block with this thread pinned to `core`: processes started in it inherit the pinning."""
    if core is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def check_reachable(target: Target, timeout: float = 5.0) -> None:
    """Raise BenchError unless GET /healthz answers 200."""
    try:
        with urllib.request.urlopen(
            f"{target.url}/healthz", timeout=timeout, context=target.client_context()
        ) as response:
            if response.status == 200:
                return
            raise BenchError(f"{target.url}/healthz answered {response.status}, not 200")
    except urllib.error.HTTPError as exc:
        raise BenchError(f"{target.url}/healthz answered {exc.code} {exc.reason}, not 200") from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise BenchError(f"cannot reach a broker at {target.url}: {reason}") from None


@contextlib.contextmanager
def started(
    name: str,
    camera: str,
    token: str,
    core: int | None,
    clients: int,
    tls: TlsFiles | None = None,
    flags: Sequence[str] = (),
) -> Iterator[Server]:
    """Start the broker (`name` "broker") or the ideal relay ("ideal") on a free loopback port.

    With `tls` the broker serves HTTPS and WSS with that certificate (the ideal relay has no TLS).

    It runs pinned to `core` (if not None), is stopped with SIGTERM (SIGKILL after
    5 s) when the block ends, and whatever it wrote to stderr is repeated then. The
    broker's viewer limits are raised to `clients` where they are lower, so that they
    are not what the run measures (an idle run's viewers all wait for a camera that
    has never published).
    """
    host = "127.0.0.1"
    port = _free_port(host)
    if name == "broker":
        limit = str(max(clients, VIEWER_LIMIT_FLOOR))
        command = [sys.executable, "-m", "broker", "--host", host, "--port", str(port),
                   f"--publish-token={token}", "--no-access-log", "--log-level", "warning",
                   "--max-viewers", limit, "--max-viewers-per-camera", limit,
                   "--max-waiting-viewers", limit]  # fmt: skip
        if tls is not None:
            command += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
        command += flags
    else:
        command = [sys.executable, "-m", "bench.ideal", "--host", host, "--port", str(port)]
    path = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
    with tempfile.TemporaryFile("w+") as log:
        with pinned(core):
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=os.environ | {"PYTHONPATH": path},
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,  # Ctrl-C is for the bench, which then stops the server itself
            )
        try:
            target = Target(host, port, camera, str(tls.ca) if tls is not None else None)
            _wait_healthy(process, target, name, log)  # its error quotes the log's last line
        except BaseException:
            _stop(process)
            raise
        try:
            yield Server(name, target, process.pid)
        finally:
            _stop(process)
            _repeat_log(name, log)


def _wait_healthy(process: subprocess.Popen[bytes], target: Target, name: str, log: IO[str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            check_reachable(target, timeout=1.0)
            return
        except BenchError:
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                lines = log.read().strip().splitlines() or ["(nothing on stderr)"]
                how = f"exited with {process.returncode}" if process.poll() is not None else "did not answer"
                raise BenchError(f"the {name} {how}: {lines[-1]}") from None
            time.sleep(0.1)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _repeat_log(name: str, log: IO[str]) -> None:
    log.seek(0)
    lines = [line for line in log.read().splitlines() if line.strip() and "listening on" not in line]
    for line in lines[:MAX_LOG_LINES]:
        print(f"{name}: {line}", file=sys.stderr)
    if len(lines) > MAX_LOG_LINES:
        print(f"{name}: ... {len(lines) - MAX_LOG_LINES} more lines", file=sys.stderr)
