"""Shared test set-up: a real broker on 127.0.0.1, real JPEGs, real clients."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import resource
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest
from playwright.async_api import Browser, async_playwright

from broker.config import Settings
from broker.server import BrokerServer

from .browser_support import CHROMIUM, CHROMIUM_ARGS, Viewer

TOKEN = "test-token-0123456789"

# Small timeouts so liveness tests finish fast; each test may override any setting.
TEST_SETTINGS: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 0,
    "publish_token": TOKEN,
    "heartbeat": 2.0,
    "offline_after": 1.0,
    "viewer_send_timeout": 3.0,
    "mjpeg_keepalive": 0.5,
    "shutdown_timeout": 3.0,
    "access_log": True,
}


def make_jpeg(
    color: tuple[int, int, int] = (0, 128, 255),
    size: tuple[int, int] = (320, 240),
    text: str = "",
    noise: int = 0,
) -> bytes:
    """A real JPEG of one BGR colour (optional text; `noise` > 0 adds grain, making it camera-sized)."""
    width, height = size
    image = np.full((height, width, 3), color, np.uint8)
    if noise:
        grain = np.random.default_rng(noise).integers(-40, 40, image.shape, dtype=np.int16)
        image = np.clip(image.astype(np.int16) + grain, 0, 255).astype(np.uint8)
    if text:
        cv2.putText(image, text, (10, height // 2), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return encoded.tobytes()


def python_m(module: str, blocked: tuple[str, ...] = ()) -> list[str]:
    """The command `python -m MODULE`, run so that the `blocked` modules cannot be imported,
    as on a machine where they are not installed."""
    code = (
        f"import runpy, sys; sys.modules.update(dict.fromkeys({blocked!r})); "
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
    )
    return [sys.executable, "-c", code]


@dataclasses.dataclass
class RunningBroker:
    """A broker started by `start_broker`."""

    server: BrokerServer
    port: int = 0  # kept after stop(), so a test can restart on the same port

    def __post_init__(self) -> None:
        self.port = self.server.port

    @property
    def token(self) -> str:
        return self.server.settings.publish_token

    @property
    def app(self) -> Any:
        return self.server.app

    @property
    def settings(self) -> Settings:
        return self.server.settings

    def url(self, path: str) -> str:
        return f"{self.server.scheme}://127.0.0.1:{self.port}{path}"

    def ws_url(self, path: str) -> str:
        scheme = "wss" if self.server.scheme == "https" else "ws"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def stop(self) -> None:
        await self.server.stop()


StartBroker = Callable[..., Awaitable[RunningBroker]]


@pytest.fixture
async def start_broker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[StartBroker]:
    """Factory: `await start_broker(port=0, **settings)` runs a real broker; all are stopped after."""
    running: list[RunningBroker] = []
    state_dir = tmp_path_factory.mktemp("state")

    async def start(**overrides: Any) -> RunningBroker:
        settings = Settings(**{**TEST_SETTINGS, "state_dir": state_dir, **overrides})
        server = BrokerServer(settings)
        await server.start()
        broker = RunningBroker(server)
        running.append(broker)
        return broker

    yield start
    for broker in running:
        await broker.stop()


@pytest.fixture
async def broker(start_broker: StartBroker) -> RunningBroker:
    """A broker with the test settings."""
    return await start_broker()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session without the default 100-connection pool limit."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


async def publisher(
    http: aiohttp.ClientSession, broker: RunningBroker, camera: str, **kwargs: Any
) -> aiohttp.ClientWebSocketResponse:
    """A publisher WebSocket for `camera`, with the broker's token, past its first viewers message."""
    ws = await http.ws_connect(broker.ws_url(f"/cameras/{camera}/publish"), headers=broker.auth, **kwargs)
    first = await asyncio.wait_for(ws.receive_json(), 5)
    assert first["type"] == "viewers"
    return ws


class PartReader:
    """Reads a multipart/x-mixed-replace body strictly, by Content-Length."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        content_type = resp.headers["Content-Type"]
        assert content_type.startswith("multipart/x-mixed-replace; boundary=")
        self.boundary = content_type.split("boundary=", 1)[1].encode()
        self.content: aiohttp.StreamReader | asyncio.StreamReader = resp.content
        self.started = False

    @classmethod
    def of_stream(cls, content: asyncio.StreamReader, boundary: bytes) -> PartReader:
        """A reader for a body read off a plain socket, past the response's headers."""
        reader = cls.__new__(cls)
        reader.boundary, reader.content, reader.started = boundary, content, False
        return reader

    async def next_part(self, timeout: float = 5.0) -> bytes:
        return await asyncio.wait_for(self._next_part(), timeout)

    async def _next_part(self) -> bytes:
        if not self.started:
            assert await self.content.readuntil(b"\r\n") == b"--" + self.boundary + b"\r\n"
            self.started = True
        head = await self.content.readuntil(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().strip().split("\r\n"))
        assert headers["Content-Type"] == "image/jpeg"
        body = await self.content.readexactly(int(headers["Content-Length"]))
        # The next boundary follows the frame at once (browsers show a part only then).
        assert await self.content.readexactly(len(self.boundary) + 6) == b"\r\n--" + self.boundary + b"\r\n"
        return body


async def next_binary(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> bytes:
    """The next binary message, skipping JSON state messages."""
    while True:
        msg = await asyncio.wait_for(ws.receive(), timeout)
        if msg.type == aiohttp.WSMsgType.BINARY:
            return msg.data
        assert msg.type == aiohttp.WSMsgType.TEXT, f"unexpected {msg.type}: {msg.data!r}"


async def next_json(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> dict[str, Any]:
    """The next JSON text message, skipping binary frames."""
    while True:
        msg = await asyncio.wait_for(ws.receive(), timeout)
        if msg.type == aiohttp.WSMsgType.TEXT:
            return msg.json()
        assert msg.type == aiohttp.WSMsgType.BINARY, f"unexpected {msg.type}: {msg.data!r}"


def jpeg_claiming(jpeg: bytes, width: int, height: int) -> bytes:
    """`jpeg` with its start-of-frame header rewritten to claim `width` x `height` pixels (a lie)."""
    liar = bytearray(jpeg)
    sof = liar.index(b"\xff\xc0")
    liar[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(liar)


def peak_rss(pid: int) -> int:
    """The highest resident memory process `pid` has had, in bytes (VmHWM)."""
    with open(f"/proc/{pid}/status") as file:
        return next(int(line.split()[1]) * 1024 for line in file if line.startswith("VmHWM"))


class BrokerProcess:
    """`python -m broker ...` in a subprocess, with its log captured."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.log = ""
        self.scheme = "http"
        self.port = 0

    async def wait_serving(self) -> None:
        assert self.proc.stderr is not None
        while not self.port:
            line = await asyncio.wait_for(self.proc.stderr.readline(), 15)
            assert line, f"broker exited early:\n{self.log}"
            self.log += line.decode()
            if match := re.search(r"serving on (https?)://127\.0\.0\.1:(\d+)/", line.decode()):
                self.scheme, self.port = match.group(1), int(match.group(2))

    async def rest_of_log(self) -> str:
        assert self.proc.stderr is not None
        self.log += (await self.proc.stderr.read()).decode()
        return self.log

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"


@contextlib.asynccontextmanager
async def broker_with_few_descriptors(
    tmp_path: Any, reserve: int, held: list[socket.socket], *flags: str
) -> AsyncIterator[BrokerProcess]:
    """`python -m broker` allowed 160 open files (publish token TOKEN); at the end the `held`
    sockets are closed, the broker stopped, and its log has no ERROR."""

    def few_descriptors() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (160, 160))

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker", "--port", "0", "--descriptor-reserve", str(reserve), *flags,
        stderr=subprocess.PIPE,
        env={**os.environ, "FRAMEBROKER_STATE_DIR": str(tmp_path), "FRAMEBROKER_PUBLISH_TOKEN": TOKEN},
        preexec_fn=few_descriptors,
    )  # fmt: skip
    broker = BrokerProcess(proc)
    try:
        await broker.wait_serving()
        yield broker
    finally:
        for sock in held:
            sock.close()
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 10)
    log = await broker.rest_of_log()
    assert " ERROR " not in log and "Traceback" not in log, log[-3000:]


@pytest.fixture
async def run_broker(tmp_path: Any) -> AsyncIterator[Callable[..., Awaitable[BrokerProcess]]]:
    """Factory: `await run_broker(*flags, env={...})` runs `python -m broker` until it serves."""
    procs: list[BrokerProcess] = []

    async def run(
        *args: str, env: dict[str, str] | None = None, blocked: tuple[str, ...] = ()
    ) -> BrokerProcess:
        """The `blocked` modules cannot be imported in the broker (see python_m)."""
        proc = await asyncio.create_subprocess_exec(
            *python_m("broker", blocked), "--port", "0", *args,
            stderr=subprocess.PIPE,
            env={**os.environ, "FRAMEBROKER_STATE_DIR": str(tmp_path / "state"), **(env or {})},
        )  # fmt: skip
        broker = BrokerProcess(proc)
        procs.append(broker)
        await broker.wait_serving()
        return broker

    yield run
    for broker in procs:
        if broker.proc.returncode is None:
            broker.proc.kill()
            await broker.proc.wait()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, driven by Playwright (never a downloaded browser)."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not found: the browser tests need Debian's chromium package")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


@pytest.fixture
async def viewer(browser: Browser, start_broker: StartBroker) -> AsyncIterator[Viewer]:
    """A page in a fresh browser context; the test fails if it logged unexpected errors."""
    # Depending on start_broker makes the page close before any broker stops, so that
    # teardown cannot put connection errors on the console.
    context = await browser.new_context(viewport={"width": 1100, "height": 700})
    viewer = Viewer(await context.new_page())
    yield viewer
    await context.close()
    assert viewer.unexpected_errors() == []


@pytest.fixture(autouse=True)
def _no_task_leaks(caplog: pytest.LogCaptureFixture) -> Any:
    """Fail a test whose broker logged an unretrieved task exception or an unexpected error."""
    caplog.set_level(logging.INFO)
    yield
    bad = [
        r
        for r in caplog.records
        if "Task exception was never retrieved" in r.getMessage()
        or "Task was destroyed but it is pending" in r.getMessage()
        or (r.levelno >= logging.ERROR and r.name.startswith("aiohttp"))
    ]
    assert not bad, [r.getMessage() for r in bad]


class _SkipsFailInCI:
    """Under CI=true a skip means a missing tool that CI should have installed: fail the run."""

    def __init__(self) -> None:
        self.skipped: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped:
            self.skipped.append(report.nodeid)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.skipped and session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.skipped:
            terminalreporter.write_line(
                f"CI=true: {len(self.skipped)} skipped tests count as failures: " + ", ".join(self.skipped),
                red=True,
            )


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        config.pluginmanager.register(_SkipsFailInCI(), "skips-fail-in-ci")


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], Any]]:
    """Run every async test on uvloop, the loop the broker uses in production."""
    import uvloop

    return {"uvloop": uvloop.new_event_loop}
