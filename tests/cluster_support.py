"""A real redis-server on a free loopback port, and brokers started as nodes of its cluster."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from redis.asyncio import Redis

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"

# Short timeouts, so that outages are noticed and dead nodes expire within a test.
NODE_FLAGS = ("--redis-timeout", "1", "--node-ttl", "3", "--offline-after", "1", "--heartbeat", "30")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """`redis-server` as a child process, without persistence; it can be killed, restarted, frozen."""

    def __init__(self, folder: Path, *extra: str) -> None:
        if not os.path.exists(REDIS_SERVER):
            pytest.skip(f"{REDIS_SERVER} not found: the cluster tests need Debian's redis-server package")
        self.folder = folder
        self.port = free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, password: str | None = None) -> Redis:
        """A redis-py client of this server, for a test to look at what the nodes keep there."""
        return Redis(host="127.0.0.1", port=self.port, password=password)

    async def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder), *self.extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.025)
                continue
            writer.close()
            return
        raise AssertionError("redis-server did not start")

    def kill(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
