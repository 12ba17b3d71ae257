"""README's gunicorn recipe, run for real: TLS from gunicorn's --certfile, frames byte-identical, the
publish token redacted in gunicorn's access log, nothing logged at ERROR."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import gunicorn.config
import pytest
import trustme

from .conftest import TOKEN, next_binary, next_json
from .test_mjpeg import PartReader
from .tls_support import camera_frames, client_context, issue, next_new_part

ROOT = Path(__file__).resolve().parent.parent


class Gunicorn:
    """gunicorn serving `broker.app:create_app()` with the broker's worker; its whole log kept."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.log = ""
        self.port = 0

    async def wait_listening(self) -> None:
        assert self.proc.stdout is not None
        while not self.port:
            line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
            assert line, f"gunicorn exited early:\n{self.log}"
            self.log += line.decode()
            if match := re.search(r"Listening at: https://127\.0\.0\.1:(\d+)", line.decode()):
                self.port = int(match.group(1))

    async def stop(self) -> str:
        """SIGTERM, wait for the exit, and return the whole log."""
        assert self.proc.stdout is not None
        self.proc.send_signal(signal.SIGTERM)
        self.log += (await asyncio.wait_for(self.proc.stdout.read(), 60)).decode()
        assert await asyncio.wait_for(self.proc.wait(), 30) == 0, self.log
        return self.log

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def gunicorn_broker(ca, tmp_path) -> AsyncIterator[Gunicorn]:
    """README's recipe on a free loopback port, with gunicorn's own TLS from trustme's certificate."""
    certs = issue(ca, tmp_path / "tls")
    command = [
        sys.executable, "-m", "gunicorn", "broker.app:create_app()",
        "-k", "broker.gunicorn.Worker", "-w", "1", "--bind", "127.0.0.1:0",
        "--certfile", str(certs.cert), "--keyfile", str(certs.key), "--access-logfile", "-",
        "--graceful-timeout", "10",
    ]  # fmt: skip
    if hasattr(gunicorn.config, "ControlSocketDisable"):
        command.append("--no-control-socket")  # gunicorn 25+ would open one in $HOME
    env = {
        **os.environ,
        "FRAMEBROKER_PUBLISH_TOKEN": TOKEN,
        "FRAMEBROKER_STATE_DIR": str(tmp_path / "state"),
        "FRAMEBROKER_LOG_LEVEL": "info",
    }
    proc = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    server = Gunicorn(proc)
    try:
        await server.wait_listening()
        yield server
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def wait_healthy(https: aiohttp.ClientSession, server: Gunicorn) -> None:
    """The worker boots after gunicorn listens: ask /healthz until it answers."""
    for _ in range(300):
        try:
            async with https.get(server.url("/healthz")) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"the gunicorn worker did not answer:\n{server.log}")


async def test_gunicorn_recipe_serves_tls_frames_and_redacts_the_token(gunicorn_broker, ca):
    """Under gunicorn with --certfile: a wss publisher with ?token=, wss and https MJPEG viewers get
    byte-identical JPEGs, a POST with ?token= becomes the snapshot; the access log shows ?token=***
    and never the token; no ERROR."""
    frames = camera_frames(4)
    connector = aiohttp.TCPConnector(ssl=client_context(ca), limit=0)
    async with aiohttp.ClientSession(connector=connector) as https:
        await wait_healthy(https, gunicorn_broker)
        pub = await https.ws_connect(gunicorn_broker.url(f"/cameras/garden/publish?token={TOKEN}"))
        assert (await pub.receive_json())["type"] == "viewers"
        await pub.send_bytes(frames[0])
        viewer = await https.ws_connect(gunicorn_broker.url("/cameras/garden/ws"))
        assert (await next_json(viewer))["type"] == "status"
        assert await next_binary(viewer) == frames[0]
        async with https.get(gunicorn_broker.url("/cameras/garden/mjpeg")) as mjpeg:
            assert mjpeg.status == 200
            parts = PartReader(mjpeg)
            assert await parts.next_part() == frames[0]
            for previous, frame in itertools.pairwise(frames):
                await pub.send_bytes(frame)
                assert await next_binary(viewer) == frame
                assert await next_new_part(parts, previous) == frame
        await viewer.close()
        await pub.close()
        url = gunicorn_broker.url(f"/cameras/door/publish?token={TOKEN}")
        async with https.post(url, data=frames[0]) as resp:
            assert resp.status == 204
        async with https.get(gunicorn_broker.url("/cameras/door/snapshot.jpg")) as resp:
            assert await resp.read() == frames[0]
    # A request aiohttp cannot parse: its error log would quote the line, token and all.
    host, port = gunicorn_broker.url("").split("//")[1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port), ssl=client_context(ca))
    writer.write(b"GET /cameras/door/snapshot.jpg?token=%s&x=\x01 HTTP/1.1\r\n\r\n" % TOKEN.encode())
    assert (await asyncio.wait_for(reader.readline(), 10)).split(b" ")[1] == b"400"
    writer.close()
    log = await gunicorn_broker.stop()

    assert TOKEN not in log
    assert '"POST /cameras/door/publish?token=*** HTTP/1.1" 204' in log
    assert '"GET /cameras/garden/publish?token=*** HTTP/1.1" 101' in log
    assert "[ERROR]" not in log and "Traceback" not in log, log
    assert "camera garden: publisher 127.0.0.1 connected" in log  # the broker's own lines are kept


async def run_gunicorn_on_all_addresses(tmp_path, **env: str) -> tuple[asyncio.subprocess.Process, str]:
    """gunicorn bound to 0.0.0.0 (no TLS); the process and its log up to "Booting worker" or its exit."""
    command = [
        sys.executable, "-m", "gunicorn", "broker.app:create_app()",
        "-k", "broker.gunicorn.Worker", "-w", "1", "--bind", "0.0.0.0:0",
    ]  # fmt: skip
    if hasattr(gunicorn.config, "ControlSocketDisable"):
        command.append("--no-control-socket")
    env = {**os.environ, "FRAMEBROKER_STATE_DIR": str(tmp_path / "state"), **env}
    env.pop("FRAMEBROKER_HOST", None)
    proc = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    assert proc.stdout is not None
    log = ""
    while line := (await asyncio.wait_for(proc.stdout.readline(), 30)).decode():
        log += line
        if "Booting worker" in line:
            break
    return proc, log


async def test_gunicorn_bound_to_every_address_refuses_to_serve_everyone_without_accounts(tmp_path):
    """The broker judges gunicorn's --bind, not its own default host: no accounts, no --public, no start."""
    proc, log = await run_gunicorn_on_all_addresses(tmp_path)
    assert proc.stdout is not None
    log += (await asyncio.wait_for(proc.stdout.read(), 30)).decode()
    assert await asyncio.wait_for(proc.wait(), 30) != 0
    assert "host='0.0.0.0' is reachable from other machines, but no viewer access is configured" in log


async def test_gunicorn_bound_to_every_address_answers_any_host(tmp_path):
    """Off loopback the broker accepts any Host by default, under gunicorn too."""
    proc, log = await run_gunicorn_on_all_addresses(tmp_path, FRAMEBROKER_PUBLIC="1")
    port = int(re.search(r"Listening at: http://0\.0\.0\.0:(\d+)", log).group(1))
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):  # the worker boots after gunicorn listens
                try:
                    async with http.get(
                        f"http://127.0.0.1:{port}/healthz", headers={"Host": "cams.example.org"}
                    ) as resp:
                        status = resp.status
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
        assert status == 200
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
