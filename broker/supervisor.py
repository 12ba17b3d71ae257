"""`framebroker --workers N`: N broker processes on one host sharing the port, kept running.

Each worker is a whole broker with its own event loop, a node of the cluster named
`hostname:port/wN`; the kernel spreads connections over them (SO_REUSEPORT). The
supervisor restarts a worker that dies (with backoff), passes SIGHUP on (TLS certificate
reload), stops them all on SIGTERM or SIGINT, and speaks for them to systemd: ready once
every worker serves, and watchdog pings only while every worker's event loop answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import random
import signal
import socket
import sys
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from .config import ConfigError, Settings
from .logs import configure_logging
from .server import BrokerServer
from .systemd import ServiceNotifier

__all__ = ["Supervisor"]

log = logging.getLogger("broker.supervisor")

HEARTBEAT = 1.0  # seconds between a worker's "alive" messages
FIRST_RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 10.0
STABLE_AFTER = 30.0  # a worker that ran this long starts a new series of restarts
REAP_WITHIN = 1.0  # seconds to wait for an exiting worker's status


class WorkerNotifier:
    """A worker's notifier: tells the supervisor it is ready, then that its loop runs, each second."""

    def __init__(self, pipe: Connection) -> None:
        self._pipe = pipe
        self._beat: asyncio.Task[None] | None = None

    def ready(self, status: str) -> None:
        """Serving: say so, and start the heartbeat."""
        self._send(b"ready")
        self._beat = asyncio.ensure_future(self._heartbeat())

    def stopping(self) -> None:
        """Stop the heartbeat."""
        if self._beat is not None:
            self._beat.cancel()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            self._send(b"alive")

    def _send(self, message: bytes) -> None:
        with contextlib.suppress(OSError):  # the supervisor is gone: it stops us anyway
            self._pipe.send_bytes(message)


def run_worker(settings: Settings, pipe: Connection) -> None:
    """A worker process: one broker, stopped by the supervisor's SIGTERM."""
    from .cli import run_loop, serve

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the supervisor decides
    configure_logging(settings.log_level, settings.log_format)
    try:
        run_loop(serve(settings, WorkerNotifier(pipe)))
    except ConfigError as exc:
        print(f"framebroker: error: worker: {exc}", file=sys.stderr)
        sys.exit(2)


@dataclasses.dataclass
class Worker:
    """One worker slot: its process, its pipe, and its restarts."""

    index: int
    process: BaseProcess | None = None
    pipe: Connection | None = None
    started: float = 0.0
    heard: float = 0.0
    ready: bool = False
    ever_ready: bool = False
    delay: float = FIRST_RESTART_DELAY
    failing: bool = False


class Supervisor:
    """Starts, watches, restarts and stops the workers."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._context = multiprocessing.get_context("spawn")
        self._workers = [Worker(index) for index in range(1, settings.workers + 1)]
        self._stopping = asyncio.Event()
        self._all_ready = asyncio.Event()
        self._host = socket.gethostname()
        self._refused: str | None = None  # a worker's start failed on the configuration

    async def run(self) -> int:
        """Run until SIGTERM or SIGINT; 0 after a clean stop."""
        # The whole configuration is checked here, once (ConfigError: exit 2, no worker started),
        # and the signing key and publish token are made here: workers starting together would
        # each generate a different one.
        token = BrokerServer(self._settings).settings.publish_token
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)  # TLS certificate reload
        with self._reserve_port() as port:
            self._settings = dataclasses.replace(self._settings, port=port, publish_token=token)
            for worker in self._workers:
                self._start(worker)
            systemd = ServiceNotifier()
            ready = asyncio.ensure_future(self._all_ready.wait())
            stop = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait([ready, stop], return_when=asyncio.FIRST_COMPLETED)
            if self._all_ready.is_set():
                log.info("%d workers serving on port %d", len(self._workers), port)
                systemd.ready(f"{len(self._workers)} workers serving on port {port}", self._healthy)
            await stop
            systemd.stopping()
            await self._stop_all()
        if self._refused is not None:
            raise ConfigError(self._refused)
        return 0

    @contextlib.contextmanager
    def _reserve_port(self):  # type: ignore[no-untyped-def]
        """Bind (without listening) so that port 0 becomes one port that every worker then shares."""
        family = socket.AF_INET6 if ":" in self._settings.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self._settings.host, self._settings.port))
            yield sock.getsockname()[1]
        finally:
            sock.close()

    def _start(self, worker: Worker) -> None:
        settings = self._settings
        name = f"{settings.node_name or f'{self._host}:{settings.port}'}/w{worker.index}"
        reader, writer = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=run_worker,
            args=(dataclasses.replace(settings, node_name=name), writer),
            name=f"framebroker-w{worker.index}",
            daemon=False,
        )
        env_backup = {
            key: os.environ.pop(key)
            for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
            if key in os.environ
        }
        try:
            process.start()  # the worker speaks to us, not to systemd
        finally:
            os.environ.update(env_backup)
        writer.close()
        log.info("worker %d started (pid %s)", worker.index, process.pid)
        worker.process, worker.pipe = process, reader
        worker.started = worker.heard = time.monotonic()
        worker.ready = False
        loop = asyncio.get_running_loop()
        loop.add_reader(reader.fileno(), self._heard, worker)
        loop.add_reader(process.sentinel, self._exited, worker)

    def _heard(self, worker: Worker) -> None:
        assert worker.pipe is not None
        try:
            message = worker.pipe.recv_bytes()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(worker.pipe.fileno())
            return
        worker.heard = time.monotonic()
        if message == b"ready" and not worker.ready:
            worker.ready = worker.ever_ready = True
            if worker.failing:
                log.info("worker %d serving again", worker.index)
                worker.failing = False
            if all(w.ready for w in self._workers):
                self._all_ready.set()

    def _exited(self, worker: Worker) -> None:
        process, pipe = worker.process, worker.pipe
        assert process is not None and pipe is not None
        loop = asyncio.get_running_loop()
        loop.remove_reader(process.sentinel)
        loop.remove_reader(pipe.fileno())
        pipe.close()
        # The sentinel closes as the worker's files close, a moment before the kernel has its
        # exit status: join(0) could still find it running (exitcode None).
        process.join(REAP_WITHIN)
        worker.process = worker.pipe = None
        worker.ready = False
        if self._stopping.is_set():
            return
        if process.exitcode == 2 and not worker.ever_ready:
            # Exit status 2 is a configuration the broker cannot run with: restarting won't help.
            self._refused = f"worker {worker.index} could not start (exit status 2; see its message above)"
            self._stopping.set()
            return
        lived = time.monotonic() - worker.started
        if lived >= STABLE_AFTER:
            worker.delay = FIRST_RESTART_DELAY
        delay = random.uniform(worker.delay / 2, worker.delay)
        if not worker.failing:
            # Once per series of failures: a worker that keeps dying is not logged every time.
            log.warning(
                "worker %d %s after %.1f s; restarting it (backing off up to %g s while it keeps failing)",
                worker.index,
                _ending(process.exitcode),
                lived,
                MAX_RESTART_DELAY,
            )
            worker.failing = True
        worker.delay = min(worker.delay * 2, MAX_RESTART_DELAY)
        loop.call_later(delay, self._restart, worker)

    def _restart(self, worker: Worker) -> None:
        if not self._stopping.is_set() and worker.process is None:
            self._start(worker)

    def _forward(self, signum: int) -> None:
        for worker in self._workers:
            if worker.process is not None and worker.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signum)

    def _healthy(self) -> bool:
        """Every worker runs and its loop answered within a few heartbeats."""
        now = time.monotonic()
        return all(w.process is not None and now - w.heard < 5 * HEARTBEAT for w in self._workers)

    async def _stop_all(self) -> None:
        running = [w.process for w in self._workers if w.process is not None]
        log.info("stopping %d workers (at most %.1f s)", len(running), self._settings.shutdown_timeout)
        for process in running:
            if process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self._settings.shutdown_timeout + 1.0
        while any(p.is_alive() for p in running) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for process in running:
            if process.is_alive():
                log.warning("worker %s did not stop in time; killing it", process.name)
                process.kill()
            process.join(1.0)
        log.info("stopped")


def _ending(exitcode: int | None) -> str:
    """How a worker ended, for the log: its exit status, or the signal that killed it."""
    if exitcode is None:
        return f"exited (its status not known within {REAP_WITHIN:g} s)"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            return f"killed by signal {-exitcode}"
        return f"killed by signal {-exitcode} ({name})"
    return f"exited with status {exitcode}"
