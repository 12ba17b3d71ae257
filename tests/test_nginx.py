"""framebroker behind Debian's nginx with the shipped deploy/nginx/framebroker.conf, at the
site's root and under a path prefix: the page, WebSocket viewers and publishers, MJPEG
without buffering, snapshots."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from .browser_support import BLUE, GREEN, RED, STATIC_DIR, Camera, eventually
from .conftest import PartReader, RunningBroker, make_jpeg

SHIPPED = Path(__file__).resolve().parent.parent / "deploy" / "nginx" / "framebroker.conf"
PREFIXES = ["/", "/cams/"]

MAIN_CONF = """\
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/framebroker.conf;
}}
"""


def site_config(broker_port: int, nginx_port: int, prefix: str) -> str:
    """The shipped file with what a user changes too: the listen address, the broker's
    address and, for a prefix, its sub-path variant in place of `location /`."""
    text = SHIPPED.read_text()
    listen = "    listen 80 sndbuf=128k;\n    listen [::]:80 sndbuf=128k;\n"
    upstream = "    server 127.0.0.1:8080;\n"
    root_location = "    location / {\n        proxy_pass http://framebroker;\n    }\n"
    for line in (listen, upstream, root_location):
        assert text.count(line) == 1, line
    text = text.replace(listen, f"    listen 127.0.0.1:{nginx_port} sndbuf=128k;\n")
    text = text.replace(upstream, f"    server 127.0.0.1:{broker_port};\n")
    if prefix != "/":
        lines = text.splitlines(keepends=True)
        first = lines.index("    # location = /cams {\n")
        last = max(i for i, line in enumerate(lines) if line == "    # }\n")
        variant = "".join(
            line.replace("    # ", "    ", 1).replace("    #\n", "\n") for line in lines[first : last + 1]
        )
        text = text.replace(root_location, variant.replace("/cams", prefix.rstrip("/")))
    return text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Nginx:
    """nginx in a folder of its own, as a child process that is not root."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def ws_url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def start(self, executable: str, site: str) -> None:
        (self.folder / "framebroker.conf").write_text(site)
        (self.folder / "nginx.conf").write_text(MAIN_CONF.format(prefix=self.folder))
        user = {}
        if os.geteuid() == 0:
            # Never root: the same unprivileged account the distribution's workers use.
            nobody = pwd.getpwnam("nobody")
            os.chown(self.folder, nobody.pw_uid, nobody.pw_gid)
            user = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
        command = [executable, "-p", str(self.folder), "-c", str(self.folder / "nginx.conf"), "-e", "stderr"]
        self.proc = subprocess.Popen(command, stderr=subprocess.PIPE, **user)
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited: {self.stop()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                assert time.monotonic() < deadline, "nginx did not start listening within 15 s"
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return

    def stop(self) -> str:
        """Stop nginx; returns what it logged."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, log = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, log = self.proc.communicate()
        return log.decode()


StartNginx = Callable[[RunningBroker, str], Awaitable[Nginx]]


@pytest.fixture
async def start_nginx(start_broker) -> AsyncIterator[StartNginx]:
    """Factory: nginx with the shipped site in front of `broker`, under `prefix`."""
    executable = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(executable, os.X_OK):
        pytest.skip("nginx not found: the proxy tests need Debian's nginx package")
    started: list[tuple[Nginx, tempfile.TemporaryDirectory[str]]] = []

    async def start(broker: RunningBroker, prefix: str) -> Nginx:
        # Not under pytest's tmp_path: its parent is private to the user running the tests.
        folder = tempfile.TemporaryDirectory(prefix="framebroker-nginx-")
        nginx = Nginx(Path(folder.name), free_port())
        started.append((nginx, folder))
        await nginx.start(executable, site_config(broker.port, nginx.port, prefix))
        return nginx

    yield start
    for nginx, folder in started:
        log = nginx.stop()
        folder.cleanup()
        assert "[emerg]" not in log and "[alert]" not in log, log


@pytest.fixture
async def broker(start_broker) -> RunningBroker:
    """A broker as README sets it up behind nginx (trusting it, open to anyone: the tests have no
    accounts) serving this checkout's page; with a quiet camera it sends nothing for a minute."""
    return await start_broker(
        static_dir=STATIC_DIR,
        trusted_proxies=("127.0.0.1",),
        public=True,
        mjpeg_keepalive=60.0,
        offline_after=60.0,
    )


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_page_is_live_over_websocket_through_nginx(broker, start_nginx, viewer, http, prefix):
    """The page loads through nginx, fetches everything under its own prefix and shows
    each camera live over WebSocket."""
    nginx = await start_nginx(broker, prefix)
    page = viewer.page
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.on("websocket", lambda ws: requested.append(ws.url))
    async with Camera(http, broker, "garden", RED) as garden, Camera(http, broker, "yard", BLUE):
        await page.goto(nginx.url(prefix))
        await viewer.wait_tile("garden", state="live", mode="ws", online="true", frames="1")
        await viewer.wait_tile("yard", state="live", mode="ws", frames="1")
        await viewer.wait_canvas_colour("garden", RED)
        garden.colour = GREEN
        await viewer.wait_canvas_colour("garden", GREEN)
        await viewer.wait_canvas_colour("yard", BLUE)
        await page.click('#camera-nav a[data-camera="yard"]')
        await viewer.wait_tile("yard", state="live", mode="ws", frames="1")
        await viewer.screenshot(f"nginx-{prefix.strip('/') or 'root'}.png")
    origin = nginx.url("")
    assert requested
    outside = [url for url in requested if not url.replace("ws://", "http://", 1).startswith(origin + prefix)]
    assert outside == []
    # The grid's one socket for every camera, then the single view's own.
    assert nginx.ws_url(f"{prefix}ws") in requested
    assert any(url.startswith(nginx.ws_url(f"{prefix}cameras/yard/ws")) for url in requested)


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_mjpeg_through_nginx_is_unbuffered(broker, start_nginx, http, prefix):
    """The first MJPEG frame arrives within 1 s, though the broker sends nothing after it
    for a minute: nginx holds nothing back."""
    nginx = await start_nginx(broker, prefix)
    frame = make_jpeg((30, 60, 90), size=(160, 120))  # a few kB: less than one of nginx's buffers
    async with http.ws_connect(nginx.ws_url(f"{prefix}cameras/garden/publish"), headers=broker.auth) as pub:
        await pub.send_bytes(frame)
        for path in ("cameras/garden/mjpeg", "?action=stream&camera=garden"):
            async with http.get(nginx.url(prefix + path)) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("multipart/x-mixed-replace")
                assert await PartReader(resp).next_part(timeout=1.0) == frame


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_snapshot_and_http_publishing_through_nginx(broker, start_nginx, http, prefix):
    """An agent POSTs a frame through nginx; the snapshot through nginx is that frame,
    and asking again with its ETag is a 304."""
    nginx = await start_nginx(broker, prefix)
    frame = make_jpeg((200, 100, 0), size=(640, 480), noise=3)
    async with http.post(
        nginx.url(f"{prefix}cameras/garden/publish"), data=frame, headers=broker.auth
    ) as resp:
        assert resp.status == 204
    async with http.get(nginx.url(f"{prefix}cameras/garden/snapshot.jpg")) as resp:
        assert (resp.status, resp.headers["Content-Type"]) == (200, "image/jpeg")
        assert await resp.read() == frame
        etag = resp.headers["ETag"]
    async with http.get(
        nginx.url(f"{prefix}cameras/garden/snapshot.jpg"), headers={"If-None-Match": etag}
    ) as resp:
        assert resp.status == 304
    async with http.get(nginx.url(f"{prefix}?action=snapshot")) as resp:
        assert await resp.read() == frame


async def test_prefix_without_its_slash_redirects_to_the_page(broker, start_nginx, http):
    """`/cams` redirects to `/cams/`, where the page's relative URLs resolve under the prefix."""
    nginx = await start_nginx(broker, "/cams/")
    async with http.get(nginx.url("/cams"), allow_redirects=False) as resp:
        assert resp.status == 301
        assert resp.headers["Location"] == nginx.url("/cams/")
    async with http.get(nginx.url("/cams")) as resp:
        assert (resp.status, resp.content_type) == (200, "text/html")
    async with http.get(nginx.url("/api/cameras")) as resp:
        assert resp.status == 404  # nothing of the broker's outside its prefix


async def test_a_viewer_that_stops_reading_gets_the_newest_frames_through_nginx(broker, start_nginx, http):
    """nginx queues no MJPEG frames for a viewer that stops reading: when it reads again,
    the newest frame follows after a few (14 without a proxy), not the whole backlog."""
    nginx = await start_nginx(broker, "/")
    frames = [make_jpeg((i, 80, 160), size=(320, 240), noise=i + 1) for i in range(101)]  # 33 kB each
    index = {frame: i for i, frame in enumerate(frames)}

    async def all_published() -> bool:
        async with http.get(broker.url("/api/cameras")) as resp:
            return (await resp.json())["cameras"][0]["frames"] == len(frames)

    async with http.ws_connect(broker.ws_url("/cameras/garden/publish"), headers=broker.auth) as pub:
        await pub.send_bytes(frames[0])
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)  # a slow phone's small window
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", nginx.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        try:
            request = f"GET /cameras/garden/mjpeg HTTP/1.0\r\nHost: 127.0.0.1:{nginx.port}\r\n\r\n"
            writer.write(request.encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            boundary = head.split(b"boundary=", 1)[1].split(b"\r\n", 1)[0]
            parts = PartReader.of_stream(reader, boundary)
            assert await parts.next_part() == frames[0]
            # The viewer reads nothing while the camera sends 100 frames (3.3 MB).
            for frame in frames[1:]:
                await pub.send_bytes(frame)
                await asyncio.sleep(0.01)
            await eventually(all_published)
            received = [index[await parts.next_part()]]
            while received[-1] != len(frames) - 1:
                received.append(index[await parts.next_part()])
        finally:
            writer.close()
    assert received == sorted(received)
    assert len(received) < len(frames) // 2, received  # 26 here; 100 if nginx queued them
