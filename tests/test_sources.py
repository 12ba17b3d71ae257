"""Frame sources on their own: real OpenCV capture of generated videos, real files,
the test pattern, and the picamera2 adapter against a faithful fake."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from aiohttp import web

from camera_agent.config import CameraConfig, ConfigError
from camera_agent.jpeg import complete_jpeg
from camera_agent.sources import FrameSource, SourceUnavailable, open_source
from camera_agent.sources.files import FilesSource
from camera_agent.sources.handoff import Handoff
from camera_agent.sources.mounts import NETWORK_FILESYSTEMS, filesystem_type
from camera_agent.sources.opencv import OpenCVSource
from camera_agent.sources.picamera import PicameraSource
from camera_agent.sources.synthetic import SyntheticSource

from .fakes import picamera as fake_picamera
from .fakes.sources import HangingSource


class Collected:
    """Frames a source delivered, and the threads it delivered them on."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.threads: set[int] = set()


async def collect(source: FrameSource, count: int, timeout: float = 10.0) -> Collected:
    """Run ``source`` until it delivered ``count`` frames, ended by itself, or timed out."""
    got = Collected()
    enough = asyncio.Event()

    def on_frame(jpeg: bytes) -> None:
        got.frames.append(jpeg)
        got.threads.add(threading.get_ident())
        if len(got.frames) >= count:
            enough.set()

    task = asyncio.create_task(source.run(on_frame))
    waiter = asyncio.create_task(enough.wait())
    try:
        await asyncio.wait({task, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # re-raises what the source raised
    return got


def decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a decodable JPEG"
    return image


def write_video(path: Path, fourcc: str, frames: int = 10, size: tuple[int, int] = (320, 240)) -> Path:
    """A small video whose left half is red and right half blue, with a frame number."""
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, size)
    assert writer.isOpened(), f"this OpenCV cannot write {fourcc}"
    for i in range(frames):
        image = np.zeros((height, width, 3), np.uint8)
        image[:, : width // 2] = (0, 0, 255)
        image[:, width // 2 :] = (255, 0, 0)
        cv2.putText(
            image, str(i), (width // 2 - 20, height // 2), cv2.FONT_HERSHEY_SIMPLEX, 1, (0, 255, 0), 2
        )
        writer.write(image)
    writer.release()
    return path


@pytest.fixture
def mjpg_video(tmp_path: Path) -> Path:
    return write_video(tmp_path / "clip.avi", "MJPG")


# -- test pattern ------------------------------------------------------------------


def test_synthetic_frames_are_deterministic_jpegs_of_the_asked_size():
    """Deterministic mode: the same index gives the same bytes; the picture moves."""
    a = SyntheticSource("garden", 320, 240, deterministic=True)
    b = SyntheticSource("garden", 320, 240, deterministic=True)
    assert a.render(7) == b.render(7)
    assert a.render(7) != a.render(8)
    assert decode(a.render(0)).shape == (240, 320, 3)


def test_synthetic_render_is_cheap_at_640x480():
    """The broker's --demo renders 640x480 at 15 fps on one core: far below 66 ms a frame."""
    source = SyntheticSource()
    source.render(0)
    durations = []
    for i in range(30):
        started = time.perf_counter()
        source.render(i)
        durations.append(time.perf_counter() - started)
    assert statistics.median(durations) < 0.010


async def test_synthetic_source_paces_frames_to_fps():
    """run() delivers on the event-loop thread at about the configured rate."""
    source = SyntheticSource("pace", 64, 48, fps=50.0)
    started = time.monotonic()
    got = await collect(source, 10)
    assert len(got.frames) >= 10
    assert time.monotonic() - started >= 9 / 50 * 0.8
    assert got.threads == {threading.get_ident()}
    assert len(set(got.frames)) == len(got.frames)


# -- OpenCV -------------------------------------------------------------------------


async def test_opencv_mjpeg_file_passes_jpeg_packets_through(mjpg_video: Path):
    """An MJPG AVI is not re-encoded: every frame is a packet of the file, byte for byte;
    without --loop the source ends after the last frame."""
    source = OpenCVSource(str(mjpg_video), fps=200.0)
    got = await collect(source, 100)
    content = mjpg_video.read_bytes()
    assert len(got.frames) == 10
    for jpeg in got.frames:
        assert complete_jpeg(jpeg) == jpeg
        assert jpeg in content
        assert decode(jpeg).shape == (240, 320, 3)


async def test_opencv_loop_restarts_the_file(mjpg_video: Path):
    """--loop plays the 10-frame file again and again."""
    got = await collect(OpenCVSource(str(mjpg_video), fps=200.0, loop=True), 25)
    assert len(got.frames) >= 25


async def test_opencv_non_jpeg_video_is_reencoded_and_resized(tmp_path: Path):
    """XVID packets are not JPEG: frames are decoded, resized to --size and encoded."""
    video = write_video(tmp_path / "clip_xvid.avi", "XVID")
    got = await collect(OpenCVSource(str(video), fps=200.0, size=(160, 120), quality=70), 100)
    assert len(got.frames) == 10
    for jpeg in got.frames:
        assert complete_jpeg(jpeg) == jpeg
        assert decode(jpeg).shape == (120, 160, 3)


async def test_opencv_flip_reencodes_mirrored_frames(mjpg_video: Path):
    """hflip cannot pass JPEG bytes through: the frame is decoded, mirrored and encoded."""
    got = await collect(OpenCVSource(str(mjpg_video), fps=200.0, hflip=True), 1)
    image = decode(got.frames[0])
    assert image[120, 10, 0] > 200 and image[120, 10, 2] < 60  # left is blue now
    assert image[120, 310, 2] > 200 and image[120, 310, 0] < 60  # right is red
    assert got.frames[0] not in mjpg_video.read_bytes()


async def test_opencv_reads_an_http_mjpeg_stream_without_reencoding(aiohttp_server: Any):
    """An http:// MJPEG stream (multipart/x-mixed-replace) is read live and its JPEGs
    pass through byte for byte."""
    served = [write_frame(i) for i in range(5)]

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "multipart/x-mixed-replace; boundary=FRAME"})
        await response.prepare(request)
        for i in itertools.count():
            jpeg = served[i % len(served)]
            head = f"--FRAME\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
            await response.write(head.encode() + jpeg + b"\r\n")
            await asyncio.sleep(0.02)
        return response

    app = web.Application()
    app.router.add_get("/stream.mjpg", stream)
    server = await aiohttp_server(app)
    got = await collect(OpenCVSource(f"http://127.0.0.1:{server.port}/stream.mjpg", fps=30.0), 4)
    assert len(got.frames) >= 4
    assert all(frame in served for frame in got.frames)


def write_frame(index: int) -> bytes:
    image = np.full((120, 160, 3), index * 40, np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


async def test_opencv_missing_device_is_unavailable_not_a_crash():
    """A device that is not there is a retryable SourceUnavailable with a one-line message."""
    with pytest.raises(SourceUnavailable, match="/dev/video63"):
        await collect(OpenCVSource("/dev/video63"), 1)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("/nonexistent/clip.avi", "no such video file"),
        ("ftp://host/stream", "bad URL"),
        ("rtsp:///nohost", "bad URL"),
    ],
)
def test_opencv_rejects_unusable_inputs_at_start(value: str, message: str):
    with pytest.raises(ConfigError, match=message):
        open_source(CameraConfig(id="cam", source="opencv", input=value))


# -- files --------------------------------------------------------------------------


def write_jpeg(path: Path, color: tuple[int, int, int], mtime: float | None = None) -> bytes:
    data = cv2.imencode(".jpg", np.full((48, 64, 3), color, np.uint8))[1].tobytes()
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return data


async def test_files_cycles_the_folder_in_name_order(tmp_path: Path):
    """JPEGs in name order, then again; other files and dotfiles are skipped, and a broken JPEG is
    passed on like a camera's broken frame, for the capture to drop and count."""
    b = write_jpeg(tmp_path / "b.jpg", (0, 255, 0))
    a = write_jpeg(tmp_path / "a.jpg", (255, 0, 0))
    c = write_jpeg(tmp_path / "c.JPEG", (0, 0, 255))
    broken = a[: len(a) // 2]
    (tmp_path / "broken.jpg").write_bytes(broken)
    (tmp_path / "notes.txt").write_text("not a picture")
    write_jpeg(tmp_path / ".hidden.jpg", (9, 9, 9))
    got = await collect(FilesSource(tmp_path, fps=200.0), 8)
    assert got.frames[:8] == [a, b, broken, c, a, b, broken, c]


@pytest.mark.parametrize("method", ["events", "poll"])
async def test_files_watch_publishes_new_complete_files(tmp_path: Path, method: str):
    """--watch: first the newest existing JPEG, then each new file once it is complete."""
    now = time.time()
    write_jpeg(tmp_path / "old.jpg", (1, 1, 1), mtime=now - 20)
    newest = write_jpeg(tmp_path / "newer.jpg", (2, 2, 2), mtime=now - 10)
    source = FilesSource(tmp_path, watch=True, watch_method=method, poll_interval=0.05)
    assert not source.steady
    frames: asyncio.Queue[bytes] = asyncio.Queue()
    task = asyncio.create_task(source.run(frames.put_nowait))
    try:
        assert await asyncio.wait_for(frames.get(), 5) == newest
        fresh = cv2.imencode(".jpg", np.full((48, 64, 3), 200, np.uint8))[1].tobytes()
        partial = tmp_path / "fresh.jpg"
        partial.write_bytes(fresh[: len(fresh) // 2])  # a writer half-way through
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(frames.get(), 0.2)
        partial.write_bytes(fresh)
        assert await asyncio.wait_for(frames.get(), 5) == fresh
        another = write_jpeg(tmp_path / "z.jpg", (3, 3, 3))
        assert await asyncio.wait_for(frames.get(), 5) == another
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("method", ["events", "poll"])
def test_files_watch_keeps_only_the_newest_complete_file(tmp_path: Path, method: str):
    """Twenty files written while nobody reads: reading gives the newest complete one
    (or, if the watcher saw them in two batches, the newest of each), never all twenty."""
    source = FilesSource(tmp_path, watch=True, watch_method=method, poll_interval=0.05)
    source.partial_timeout = 60  # the partial file's writer stays busy throughout (never a bad frame)
    stop = threading.Event()
    reader = source.open_reader(stop)
    watchdog = threading.Timer(20, stop.set)
    watchdog.start()
    try:
        now = time.time()
        written = [write_jpeg(tmp_path / f"{n:02}.jpg", (n, n, n), mtime=now + n) for n in range(20)]
        partial = tmp_path / "99.jpg"  # the newest, but still being written
        partial.write_bytes(written[0][:100])
        os.utime(partial, (now + 30, now + 30))
        reads = [reader.read()]
        while reads[-1] not in (written[-1], None):
            reads.append(reader.read())
        watchdog.cancel()
        order = [written.index(jpeg) for jpeg in reads]  # ValueError for anything not written
        assert order[-1] == 19 and order == sorted(order) and len(order) <= 3, order
        later = threading.Timer(1.0, stop.set)
        later.start()
        assert reader.read() is None  # nothing older waited behind: the read lasted until stopped
        later.join()
    finally:
        watchdog.cancel()
        stop.set()
        reader.close()


def test_filesystem_type_tells_network_folders_apart(tmp_path: Path):
    """/proc/self/mountinfo decides: the deepest mount point holding the folder gives its type."""
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "40 22 0:50 / /mnt/cams rw,relatime shared:2 - nfs4 nas:/export/cams rw,vers=4.2\n"
        "41 22 0:51 / /mnt/my\\040share rw - cifs //nas/share rw\n"
        "42 40 8:2 / /mnt/cams/local rw - ext4 /dev/sdb1 rw\n"
    )
    assert filesystem_type(Path("/mnt/cams/door"), mountinfo) == "nfs4"
    assert filesystem_type(Path("/mnt/my share/x"), mountinfo) == "cifs"
    assert filesystem_type(Path("/mnt/cams/local/x"), mountinfo) == "ext4"
    assert filesystem_type(Path("/mnt/camsx"), mountinfo) == "ext4"
    assert filesystem_type(Path("/x"), tmp_path / "missing") is None
    assert {"nfs4", "cifs"} <= NETWORK_FILESYSTEMS


def test_files_input_must_be_a_readable_folder(tmp_path: Path):
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(ConfigError, match="not a folder"):
        open_source(CameraConfig(id="cam", source="files", input=str(tmp_path / "file.jpg")))
    with pytest.raises(ConfigError, match="needs --input"):
        open_source(CameraConfig(id="cam", source="files"))


# -- threads and hand-off ---------------------------------------------------------


async def test_threaded_source_abandons_a_hung_worker_after_stop_timeout(caplog: pytest.LogCaptureFixture):
    """A read stuck in a driver call cannot hold up cancellation for longer than stop_timeout."""
    source = HangingSource(frames=2)
    try:
        got = await collect(source, 2)
        assert len(got.frames) == 2
        frames_only = await collect(source, 3, timeout=0.5)  # hangs after two frames
        assert len(frames_only.frames) == 2
        abandoned = [r for r in caplog.records if "did not stop" in r.getMessage()]
        assert [r.levelno for r in abandoned] == [logging.WARNING]
    finally:
        source.release()


async def test_handoff_keeps_only_the_newest_frame_while_the_loop_is_busy():
    """A producer thread faster than the loop replaces undelivered frames; one callback at most."""
    delivered: list[bytes] = []
    handoff = Handoff(asyncio.get_running_loop(), delivered.append)

    def produce() -> None:
        for i in range(100):
            handoff.put(b"%d" % i)

    thread = threading.Thread(target=produce)
    thread.start()
    thread.join()  # the loop is blocked here, like a busy loop
    await asyncio.sleep(0)
    assert delivered == [b"99"]
    assert handoff.replaced == 99


def test_complete_jpeg_accepts_padding_and_rejects_truncation():
    jpeg = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes()
    assert complete_jpeg(jpeg) == jpeg
    assert complete_jpeg(jpeg + b"\0" * 100) == jpeg  # UVC drivers pad the buffer
    assert complete_jpeg(jpeg[:-10]) is None
    assert complete_jpeg(b"GIF89a" + jpeg) is None


# -- picamera2 (fake) ---------------------------------------------------------------


@pytest.fixture
def rig(monkeypatch: pytest.MonkeyPatch) -> fake_picamera.Rig:
    return fake_picamera.install(monkeypatch)


async def test_picamera_uses_hardware_mjpeg_with_the_configured_settings(rig: fake_picamera.Rig):
    """VC4: hardware MJPEGEncoder into FileOutput(sink); size, flips, frame rate and controls
    arrive as picamera2 expects them; frames cross from the encoder thread to the loop."""
    source = PicameraSource(
        camera_num=0, size=(640, 480), fps=15.0, quality=80, hflip=True, brightness=0.25, contrast=1.5
    )
    got = await collect(source, 3)

    assert len(got.frames) == 3 and all(complete_jpeg(f) == f for f in got.frames)
    assert got.threads == {threading.get_ident()}
    assert rig.writer_threads == {"fake-picamera2-encoder"}
    assert [c.kwargs["camera_num"] for c in rig.called("Picamera2")] == [0]
    config = rig.called("create_video_configuration")[0].kwargs
    assert config["main"] == {"size": (640, 480), "format": "YUV420"}
    assert (config["transform"].hflip, config["transform"].vflip) == (True, False)
    assert config["controls"] == {
        "FrameDurationLimits": (66667, 66667),
        "Brightness": 0.25,
        "Contrast": 1.5,
    }
    recording = rig.called("start_recording")[0]
    encoder, output = recording.args
    assert type(encoder).__name__ == "HardwareMJPEGEncoder"
    assert recording.kwargs["quality"].name == "VERY_HIGH"
    assert type(output).__name__ == "_FileOutput"
    assert source.encoder_name == "hardware MJPEG"
    # Cancelled: recording stopped and the camera closed, in that order.
    names = [c.name for c in rig.calls]
    assert names.index("stop_recording") < names.index("close")
    assert rig.open_cameras == set()


async def test_picamera_on_pi5_encodes_in_software_with_quality(monkeypatch: pytest.MonkeyPatch):
    """PISP has no hardware encoder: JpegEncoder(q=quality), never the default q=50."""
    rig = fake_picamera.install(monkeypatch, fake_picamera.Rig(platform="pisp"))
    source = PicameraSource(size=(320, 240), quality=72)
    got = await collect(source, 2)
    assert len(got.frames) == 2
    (jpeg_call,) = rig.called("JpegEncoder")
    assert jpeg_call.kwargs["q"] == 72
    assert 1 <= jpeg_call.kwargs["num_threads"] <= 4
    assert source.encoder_name == "software JPEG"


async def test_picamera_falls_back_to_software_when_the_hardware_encoder_fails(
    rig: fake_picamera.Rig, caplog: pytest.LogCaptureFixture
):
    """OSError(22) from the V4L2 encoder: software JpegEncoder, and no retry of hardware later."""
    rig.hardware_error = OSError(22, "Invalid argument")
    source = PicameraSource(size=(320, 240))
    assert len((await collect(source, 2)).frames) == 2
    assert len((await collect(source, 2)).frames) == 2
    assert len(rig.called("MJPEGEncoder")) == 1
    assert len(rig.called("JpegEncoder")) == 2
    assert "hardware MJPEG unavailable" in caplog.text
    assert rig.open_cameras == set()


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ({"cameras": []}, "no camera found"),
        ({"present": False}, "no camera number 0 found"),
        ({"present": False, "old_picamera2": True}, "no camera number 0 found"),
        ({"busy": True}, "camera 0 is busy"),
    ],
)
async def test_picamera_missing_or_busy_camera_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, setup: dict[str, object], message: str
):
    """Missing (old and new picamera2 error shapes) or busy: SourceUnavailable, no traceback text."""
    fake_picamera.install(monkeypatch, fake_picamera.Rig(**setup))
    with pytest.raises(SourceUnavailable, match=message) as raised:
        await collect(PicameraSource(), 1)
    assert "\n" not in str(raised.value)
    assert raised.value.__cause__ is None


async def test_picamera_leaves_out_controls_the_camera_does_not_advertise(
    rig: fake_picamera.Rig, caplog: pytest.LogCaptureFixture
):
    """A USB camera without FrameDurationLimits/Brightness: those are not sent (libcamera would raise)."""
    del rig.controls["FrameDurationLimits"]
    del rig.controls["Brightness"]
    got = await collect(PicameraSource(size=(320, 240), brightness=0.5), 1)
    assert len(got.frames) == 1
    assert rig.called("create_video_configuration")[0].kwargs["controls"] == {}
    assert "no Brightness control" in caplog.text


def test_picamera_missing_module_explains_the_install(monkeypatch: pytest.MonkeyPatch):
    """Without picamera2 the error says how to install it on a Pi."""
    monkeypatch.setitem(sys.modules, "picamera2", None)
    with pytest.raises(ConfigError, match=r"apt install -y python3-picamera2.*system-site-packages"):
        open_source(CameraConfig(id="pi", source="picamera2"))


def test_picamera_rejects_odd_sizes(rig: fake_picamera.Rig):
    with pytest.raises(ConfigError, match="even"):
        open_source(CameraConfig(id="pi", source="picamera2", size=(641, 480)))


def test_options_that_do_not_apply_to_a_source_are_rejected():
    with pytest.raises(ConfigError, match="loop=True does not apply to source 'synthetic'"):
        open_source(CameraConfig(id="cam", source="synthetic", loop=True))
