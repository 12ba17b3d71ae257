"""The agent against a real broker on 127.0.0.1: every source reaches a real viewer;
reconnects, a throttled link, on-demand capture, the stall watchdog, HTTP transport,
and the broker's refusals."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest

from camera_agent.agent import Agent
from camera_agent.config import AgentConfig, BrokerConfig, CameraConfig
from camera_agent.sources import FrameSource, open_source
from camera_agent.sources.synthetic import SyntheticSource

from .conftest import next_binary
from .fakes import picamera as fake_picamera
from .fakes.sources import HangingSource, StampedSource, TrackedSource, read_stamp
from .test_sources import write_video


def agent_config(broker: Any, *cameras: CameraConfig, **broker_settings: Any) -> AgentConfig:
    settings = {"url": broker.url(""), "token": broker.token, "backoff_initial": 0.05, "backoff_max": 0.3}
    return AgentConfig(BrokerConfig(**{**settings, **broker_settings}), cameras, stats_interval=0)


@contextlib.asynccontextmanager
async def running(config: AgentConfig, sources: dict[str, FrameSource] | None = None) -> AsyncIterator[Agent]:
    """Run an Agent in this loop; cancel it (like SIGTERM) at the end and re-raise its failure."""
    if sources is None:
        sources = {camera.id: open_source(camera) for camera in config.cameras}
    agent = Agent(config, sources)
    task = asyncio.create_task(agent.run())
    try:
        started = asyncio.ensure_future(agent.started.wait())
        await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        yield agent
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def eventually(check: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Wait until ``check()`` holds (state without an event of its own)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def view(http: aiohttp.ClientSession, broker: Any, camera: str) -> aiohttp.ClientWebSocketResponse:
    return await http.ws_connect(broker.ws_url(f"/cameras/{camera}/ws"))


def decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


async def camera_info(http: aiohttp.ClientSession, broker: Any, camera: str) -> dict[str, Any] | None:
    async with http.get(broker.url("/api/cameras")) as response:
        cameras = (await response.json())["cameras"]
    return next((c for c in cameras if c["id"] == camera), None)


async def until_publisher(http: aiohttp.ClientSession, broker: Any, camera: str) -> None:
    while not ((info := await camera_info(http, broker, camera)) and info["publisher"]):
        await asyncio.sleep(0.02)


# -- every source, end to end ------------------------------------------------------


@pytest.mark.parametrize("kind", ["synthetic", "opencv", "files", "picamera2"])
async def test_each_source_reaches_a_viewer_through_the_broker(
    kind: str, broker: Any, http: aiohttp.ClientSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """On demand: the viewer's arrival starts the source; its JPEGs arrive intact and the
    broker lists the agent's hello."""
    contained_in: bytes | set[bytes] | None = None  # where each frame must come from, if known
    if kind == "synthetic":
        camera = CameraConfig(id="cam", source="synthetic", size=(320, 240), fps=30)
    elif kind == "opencv":
        video = write_video(tmp_path / "clip.avi", "MJPG")
        camera = CameraConfig(id="cam", source="opencv", input=str(video), fps=30, loop=True)
        contained_in = video.read_bytes()  # packets pass through untouched
    elif kind == "files":
        pictures = tmp_path / "pictures"
        pictures.mkdir()
        for n in range(3):
            image = np.full((240, 320, 3), n * 80, np.uint8)
            (pictures / f"{n}.jpg").write_bytes(cv2.imencode(".jpg", image)[1].tobytes())
        camera = CameraConfig(id="cam", source="files", input=str(pictures), fps=30)
        contained_in = {p.read_bytes() for p in pictures.iterdir()}
    else:
        rig = fake_picamera.install(monkeypatch)
        camera = CameraConfig(id="cam", source="picamera2", size=(320, 240), fps=30)

    async with running(agent_config(broker, camera)):
        viewer = await view(http, broker, "cam")
        frames = [await next_binary(viewer, timeout=10) for _ in range(3)]
        await viewer.close()
        info = await camera_info(http, broker, "cam")

    for jpeg in frames:
        assert jpeg.startswith(b"\xff\xd8") and jpeg.endswith(b"\xff\xd9")
        assert contained_in is None or jpeg in contained_in
        assert decode(jpeg).shape[:2] in ((240, 320), (120, 160))
    assert info is not None
    assert info["agent"]["source"] == kind
    assert info["agent"]["agent"].startswith("camera-agent/")
    if kind == "picamera2":
        assert rig.open_cameras == set()  # the agent closed the camera on its way out


async def test_one_agent_publishes_several_cameras(broker: Any, http: aiohttp.ClientSession):
    """Two cameras in one agent: each viewer gets its own camera's frames."""
    cameras = (
        CameraConfig(id="left", source="synthetic", size=(160, 120), always_on=True),
        CameraConfig(id="right", source="synthetic", size=(320, 240), always_on=True),
    )
    async with running(agent_config(broker, *cameras)):
        left, right = await view(http, broker, "left"), await view(http, broker, "right")
        assert decode(await next_binary(left)).shape[:2] == (120, 160)
        assert decode(await next_binary(right)).shape[:2] == (240, 320)
        await left.close()
        await right.close()


async def test_stats_are_logged_periodically(broker: Any, caplog: pytest.LogCaptureFixture):
    camera = CameraConfig(id="cam", source="synthetic", size=(160, 120), fps=30, always_on=True)
    config = dataclasses.replace(agent_config(broker, camera), stats_interval=0.3)
    async with running(config):
        await eventually(lambda: "cam: captured" in caplog.text, what="a stats line")
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("cam: captured"))
    assert "fps, sent" in line and "kB/s" in line and "bad 0, reconnects 0, restarts 0" in line


# -- the link ------------------------------------------------------------------------


async def test_agent_reconnects_after_the_broker_restarts(start_broker: Any, http: aiohttp.ClientSession):
    """Broker stopped and started again on the same port: frames flow again, one reconnect counted."""
    broker = await start_broker()
    camera = CameraConfig(id="cam", source="synthetic", size=(160, 120), fps=30, always_on=True)
    async with running(agent_config(broker, camera)) as agent:
        viewer = await view(http, broker, "cam")
        await next_binary(viewer)
        await viewer.close()
        port = broker.port
        await broker.stop()
        restarted = await start_broker(port=port)
        viewer = await view(http, restarted, "cam")
        await next_binary(viewer, timeout=10)
        await viewer.close()
        assert agent.pipelines["cam"].stats.reconnects >= 1


class SlowProxy:
    """A TCP proxy whose client-to-server direction carries ``rate`` bytes per second,
    with small buffers, like an uplink slower than the camera."""

    def __init__(self, target_port: int, rate: float) -> None:
        self.target_port = target_port
        self.rate = rate
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        sock = socket.socket()
        # A small receive window: the backlog stays on the agent's side of the link.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._accept, sock=sock, limit=4096)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._pipes:
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [client_w, server_w]
        for pipe in (self._pipe(client_r, server_w, self.rate), self._pipe(server_r, client_w, None)):
            task = asyncio.create_task(pipe)
            self._pipes.add(task)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rate: float | None) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(4096):
                writer.write(chunk)
                await writer.drain()
                if rate:
                    await asyncio.sleep(len(chunk) / rate)
        writer.close()


async def test_slow_link_gets_the_newest_frames_and_memory_stays_bounded(
    broker: Any, http: aiohttp.ClientSession
):
    """Camera 50 fps x 20 kB, link 200 kB/s: frames are skipped, not queued. What arrives
    is recent, and every captured frame is sent, dropped or the one in flight."""
    proxy = SlowProxy(broker.port, rate=200_000)
    await proxy.start()
    source = StampedSource(fps=50, padding=20_000)
    camera = CameraConfig(id="cam", source="stamped", always_on=True)
    config = agent_config(broker, camera, url=f"http://127.0.0.1:{proxy.port}")
    received: list[tuple[int, float]] = []
    try:
        async with running(config, {"cam": source}) as agent:
            stats = agent.pipelines["cam"].stats
            viewer = await view(http, broker, "cam")
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                index, captured = read_stamp(await next_binary(viewer, timeout=10))
                received.append((index, time.monotonic() - captured))
                # One frame in the slot and one being written, at most: no queue anywhere.
                assert stats.captured - stats.sent - stats.dropped <= 2
            await viewer.close()
    finally:
        await proxy.close()

    indices = [index for index, _ in received]
    assert indices == sorted(indices)
    assert max(b - a for a, b in itertools.pairwise(indices)) > 1, "no frame was skipped"
    assert stats.dropped > stats.sent, (stats.dropped, stats.sent)
    # A queue, in the agent or in aiohttp's 256 KiB transport buffer, would make frames
    # seconds old; newest-wins keeps the age near the link delay (0.1 to 0.6 s here).
    ages = [round(age, 2) for _, age in received]
    assert max(ages) < 1.0, str(ages)


# -- demand and health ----------------------------------------------------------------


async def test_capture_runs_only_while_someone_watches(broker: Any, http: aiohttp.ClientSession):
    """No viewers: the camera stays closed. A viewer opens it; idle_grace after the last
    viewer leaves it closes; the next viewer opens it again."""
    source = TrackedSource(SyntheticSource("cam", 160, 120, fps=30))
    camera = CameraConfig(id="cam", source="synthetic", idle_grace=0.3)
    async with running(agent_config(broker, camera), {"cam": source}):
        await asyncio.wait_for(until_publisher(http, broker, "cam"), 10)
        assert source.runs == 0

        viewer = await view(http, broker, "cam")
        await asyncio.wait_for(source.started.wait(), 10)
        await next_binary(viewer)
        left_at = time.monotonic()
        await viewer.close()
        await asyncio.wait_for(source.stopped.wait(), 10)
        assert time.monotonic() - left_at >= 0.25

        viewer = await view(http, broker, "cam")
        await next_binary(viewer)
        assert source.runs == 2
        await viewer.close()


async def test_stall_watchdog_reopens_a_hung_source(broker: Any, http: aiohttp.ClientSession):
    """A source whose read hangs is abandoned after stall_timeout and opened again."""
    source = HangingSource(frames=3)
    camera = CameraConfig(id="cam", source="hanging", always_on=True, stall_timeout=0.3)
    try:
        async with running(agent_config(broker, camera), {"cam": source}) as agent:
            viewer = await view(http, broker, "cam")
            run_numbers = set()
            while len(run_numbers) < 2:
                run_numbers.add(read_stamp(await next_binary(viewer, timeout=10))[0])
            await viewer.close()
            assert agent.pipelines["cam"].stats.restarts >= 1
    finally:
        source.release()


async def test_a_bad_frame_from_the_camera_is_dropped_and_counted_before_sending(
    broker: Any, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
):
    """One frame cut short among good ones: the agent drops and counts it and says so once;
    the connection and the source stay up and the viewer keeps getting frames."""
    source = StampedSource(fps=50, corrupt=lambda index: index in (5, 9))
    camera = CameraConfig(id="cam", source="stamped", always_on=True)
    async with running(agent_config(broker, camera), {"cam": source}) as agent:
        stats = agent.pipelines["cam"].stats
        viewer = await view(http, broker, "cam")
        numbers = set()
        while len(numbers) < 10 or max(numbers) < 12:
            numbers.add(read_stamp(await next_binary(viewer))[0])
        await viewer.close()
        info = await camera_info(http, broker, "cam")
    assert stats.bad == 2
    assert not {5, 9} & numbers
    assert (stats.reconnects, stats.restarts, source.runs) == (0, 0, 1)
    assert info is not None and info["frames_bad"] == 0
    warnings = [r for r in caplog.records if "not a complete JPEG" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


async def test_broken_jpegs_in_a_files_slideshow_are_dropped_and_counted(
    broker: Any, http: aiohttp.ClientSession, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """A folder of two good and two truncated JPEGs played by --source files: the truncated ones
    are dropped, counted as bad and warned about once; the viewer gets only the good ones."""
    folder = tmp_path / "cyc"
    folder.mkdir()
    good = set()
    for n in range(4):
        jpeg = cv2.imencode(".jpg", np.full((48, 64, 3), n * 60, np.uint8))[1].tobytes()
        (folder / f"{n}.jpg").write_bytes(jpeg if n % 2 == 0 else jpeg[: len(jpeg) // 2])
        if n % 2 == 0:
            good.add(jpeg)
    camera = CameraConfig(id="cyc", source="files", input=str(folder), fps=20, always_on=True)
    async with running(agent_config(broker, camera)) as agent:
        stats = agent.pipelines["cyc"].stats
        viewer = await view(http, broker, "cyc")
        for _ in range(4):
            assert await next_binary(viewer) in good
        await eventually(lambda: stats.bad >= 4, what="two passes of bad frames")
        await viewer.close()
        info = await camera_info(http, broker, "cyc")
    assert info is not None and info["frames_bad"] == 0
    warnings = [r for r in caplog.records if "not a complete JPEG" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert stats.restarts == 0


@pytest.mark.parametrize("method", ["events", "poll"])
async def test_a_watched_file_left_truncated_is_dropped_and_counted(
    broker: Any, http: aiohttp.ClientSession, tmp_path: Path, caplog: pytest.LogCaptureFixture, method: str
):
    """--watch, and two files whose writer gave up half-way: once each has stayed incomplete for the
    partial timeout it is counted as bad, with one warning for both; good files still get through."""
    folder = tmp_path / "watched"
    folder.mkdir()
    camera = CameraConfig(
        id="cam", source="files", input=str(folder), watch=True, watch_method=method,
        watch_poll_interval=0.05, always_on=True,
    )  # fmt: skip
    source = open_source(camera)
    source.partial_timeout = 0.3  # type: ignore[attr-defined]
    jpegs = [cv2.imencode(".jpg", np.full((48, 64, 3), n * 60, np.uint8))[1].tobytes() for n in range(4)]
    async with running(agent_config(broker, camera), {"cam": source}) as agent:
        stats = agent.pipelines["cam"].stats
        viewer = await view(http, broker, "cam")
        for n, jpeg in enumerate(jpegs):
            truncated = n % 2 == 1
            (folder / f"{n}.jpg").write_bytes(jpeg[: len(jpeg) // 2] if truncated else jpeg)
            if truncated:
                await eventually(lambda n=n: stats.bad == (n + 1) // 2, what=f"{n}.jpg counted as bad")
                continue
            # A file can be published twice (its creation and its write may be seen apart).
            while (frame := await next_binary(viewer)) != jpeg:
                assert frame in jpegs[:n:2], "a frame that is neither this file nor an earlier good one"
        await viewer.close()
    warnings = [r for r in caplog.records if "not a complete JPEG" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert (stats.bad, stats.restarts) == (2, 0)


async def test_max_bad_frames_in_a_row_reopen_the_source(broker: Any, caplog: pytest.LogCaptureFixture):
    """A camera that only delivers broken frames is reopened after --max-bad-frames of them."""
    source = StampedSource(fps=100, corrupt=lambda index: True)
    camera = CameraConfig(id="cam", source="stamped", always_on=True, max_bad_frames=5)
    async with running(agent_config(broker, camera), {"cam": source}) as agent:
        stats = agent.pipelines["cam"].stats
        await eventually(lambda: source.runs >= 2, what="the source reopened")
    assert stats.restarts >= 1 and stats.bad >= 5 and stats.sent == 0
    assert "5 frames in a row were not complete JPEGs" in caplog.text


async def test_picamera2_frames_are_checked_for_completeness(
    broker: Any, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
):
    """picamera2's encoder output gets the same check as every other source."""
    fake_picamera.install(monkeypatch, fake_picamera.Rig(corrupt=frozenset({1, 2})))
    camera = CameraConfig(id="pi", source="picamera2", size=(320, 240), fps=30, always_on=True)
    async with running(agent_config(broker, camera)) as agent:
        stats = agent.pipelines["pi"].stats
        viewer = await view(http, broker, "pi")
        for _ in range(3):
            jpeg = await next_binary(viewer)
            assert jpeg.endswith(b"\xff\xd9")
        await viewer.close()
        info = await camera_info(http, broker, "pi")
    assert stats.bad == 2
    assert info is not None and info["frames_bad"] == 0


async def test_missing_camera_is_logged_once_and_retried_until_it_appears(
    broker: Any,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
):
    """picamera2 sees no camera: one clear log line, no traceback, retries; then it works."""
    rig = fake_picamera.install(monkeypatch, fake_picamera.Rig(cameras=[]))
    camera = CameraConfig(id="pi", source="picamera2", size=(320, 240), always_on=True)
    async with running(agent_config(broker, camera)):
        await eventually(lambda: len(rig.called("global_camera_info")) >= 3, what="three probes")
        viewer = await view(http, broker, "pi")
        rig.cameras.append(dict(fake_picamera.IMX708))
        await next_binary(viewer, timeout=10)
        await viewer.close()
    lines = [r for r in caplog.records if "no camera found" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].exc_info is None
    assert "delivering frames again after" in caplog.text


# -- transports and refusals --------------------------------------------------------------


async def test_http_transport_posts_frames(broker: Any, http: aiohttp.ClientSession):
    """--transport http: each frame is a POST; capture is always on."""
    camera = CameraConfig(id="cam", source="synthetic", size=(160, 120), fps=30)
    async with running(agent_config(broker, camera, transport="http")) as agent:
        viewer = await view(http, broker, "cam")
        first = await next_binary(viewer)
        second = await next_binary(viewer)
        await viewer.close()
        assert first != second
        assert agent.pipelines["cam"].stats.sent >= 2


@contextlib.contextmanager
def unanswered_port() -> Iterator[int]:
    """A loopback port whose SYNs go unanswered, like a broker behind a dead route: its
    listen queue is full and nobody accepts, so a connect hangs instead of failing."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        fillers = [socket.socket() for _ in range(3)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", port))
            yield port
        finally:
            for filler in fillers:
                filler.close()


async def test_connect_timeout_governs_the_connect(caplog: pytest.LogCaptureFixture):
    """--connect-timeout longer than the old built-in 10 s: a connect that hangs is given
    up after --connect-timeout, not before."""
    camera = CameraConfig(id="cam", source="synthetic", size=(160, 120), always_on=True)
    with unanswered_port() as port:
        broker = BrokerConfig(url=f"http://127.0.0.1:{port}", token="t", connect_timeout=12.0, backoff_max=30)
        started = time.monotonic()
        async with running(AgentConfig(broker, (camera,), stats_interval=0)) as agent:
            uplink = agent.pipelines["cam"].uplink
            await eventually(lambda: uplink.failed_attempts >= 1, timeout=30, what="the first timeout")
            waited = time.monotonic() - started
    assert waited >= 11.5  # a lower bound only: timers never fire early
    assert "timed out" in caplog.text


async def test_rejected_token_is_logged_once_and_retried_until_fixed(
    start_broker: Any, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
):
    """403 on the handshake: one clear error line however many retries; once the broker
    accepts the token the agent publishes."""
    broker = await start_broker(publish_token="the-right-token")
    camera = CameraConfig(id="cam", source="synthetic", size=(160, 120), always_on=True)
    config = agent_config(broker, camera, token="the-wrong-token", backoff_max=0.1)
    async with running(config) as agent:
        uplink = agent.pipelines["cam"].uplink
        await eventually(lambda: uplink.failed_attempts >= 4, what="several refused attempts")
        port = broker.port
        await broker.stop()
        fixed = await start_broker(port=port, publish_token="the-wrong-token")
        viewer = await view(http, fixed, "cam")
        await next_binary(viewer, timeout=10)
        await viewer.close()
    refusals = [r for r in caplog.records if "rejected the token" in r.getMessage()]
    assert len(refusals) == 1
    assert refusals[0].levelno == logging.ERROR
    assert "HTTP 403" in refusals[0].getMessage()


async def test_oversize_frames_are_dropped_before_sending(
    broker: Any, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
):
    camera = CameraConfig(id="cam", source="synthetic", size=(320, 240), fps=30, always_on=True)
    async with running(agent_config(broker, camera, max_frame_bytes=2000)) as agent:
        stats = agent.pipelines["cam"].stats
        await eventually(lambda: stats.dropped >= 5, what="dropped frames")
        assert stats.sent == 0
    oversize = [r for r in caplog.records if "larger than --max-frame-bytes 2000" in r.getMessage()]
    assert len(oversize) == 1


async def test_frames_the_broker_finds_too_large_are_reported_once(
    start_broker: Any, caplog: pytest.LogCaptureFixture
):
    """The broker's limit is below the agent's: it closes with 1009 on every try; the agent
    says why once, as an error, and keeps retrying."""
    broker = await start_broker(max_frame_bytes=2000)
    camera = CameraConfig(id="cam", source="synthetic", size=(320, 240), fps=30, always_on=True)
    async with running(agent_config(broker, camera, backoff_max=0.1)) as agent:
        uplink = agent.pipelines["cam"].uplink
        await eventually(lambda: uplink.failed_attempts >= 3, what="several 1009 closes")
    too_large = [
        r for r in caplog.records if r.name.startswith("camera_agent") and "code 1009" in r.getMessage()
    ]
    assert len(too_large) == 1
    assert too_large[0].levelno == logging.ERROR
    assert "raise the broker's --max-frame-bytes" in too_large[0].getMessage()


async def test_taken_over_camera_is_reported_and_reclaimed(
    broker: Any, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
):
    """Another publisher takes the camera (4000): the agent says so and reconnects after backoff."""
    camera = CameraConfig(id="cam", source="synthetic", size=(160, 120), always_on=True)
    async with running(agent_config(broker, camera)) as agent:
        stats = agent.pipelines["cam"].stats
        await eventually(lambda: stats.sent > 0, what="first frame sent")
        other = await http.ws_connect(broker.ws_url("/cameras/cam/publish"), headers=broker.auth)
        await eventually(lambda: stats.reconnects >= 1, what="reconnect")
        await other.close()
    assert "another publisher took over this camera (code 4000)" in caplog.text


async def test_a_snapshot_wakes_a_paused_camera_which_pauses_again_after_the_grace(
    start_broker: Any, http: aiohttp.ClientSession
):
    """Nobody watches, so the camera is closed. A snapshot opens it and gets a fresh frame; once
    the broker's snapshot grace has passed, the camera closes without the agent's own idle grace."""
    broker = await start_broker(snapshot_wait=5.0, snapshot_grace=0.5)
    source = TrackedSource(SyntheticSource("cam", 160, 120, fps=30))
    camera = CameraConfig(id="cam", source="synthetic", idle_grace=60)
    async with running(agent_config(broker, camera), {"cam": source}):
        await asyncio.wait_for(until_publisher(http, broker, "cam"), 10)
        assert source.runs == 0
        async with http.get(broker.url("/cameras/cam/snapshot.jpg")) as resp:
            assert resp.status == 200
            assert decode(await resp.read()).shape[:2] == (120, 160)
            assert float(resp.headers["X-Frame-Age"]) < 1.0
        assert source.runs == 1
        asked_at = time.monotonic()
        await asyncio.wait_for(source.stopped.wait(), 10)
        assert time.monotonic() - asked_at < 5  # the grace, not the agent's 60 s
