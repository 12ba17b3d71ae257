"""The MJPEG stream: parts that a strict parser reads back, keep-alives, no-signal, fps cap."""

from __future__ import annotations

import asyncio
import time

import cv2
import numpy as np
import pytest

from .conftest import PartReader, jpeg_claiming, make_jpeg, publisher


async def test_mjpeg_streams_cached_then_new_frames_byte_identical(broker, http):
    pub = await publisher(http, broker, "garden")
    first = make_jpeg((1, 2, 3))
    await pub.send_bytes(first)
    await asyncio.sleep(0.05)
    async with http.get(broker.url("/cameras/garden/mjpeg")) as resp:
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "no-store"
        assert resp.headers["X-Accel-Buffering"] == "no"
        parts = PartReader(resp)
        assert await parts.next_part() == first
        for i in range(5):
            frame = make_jpeg((i, i, 200), text=str(i), noise=i + 1)
            await pub.send_bytes(frame)
            while (part := await parts.next_part()) == first:
                pass  # a keep-alive repeat may come first
            assert part == frame
            first = frame


async def test_payload_containing_the_boundary_is_framed_by_length(broker, http):
    """A JPEG whose bytes include the boundary still parses exactly (Content-Length, not scanning)."""
    async with http.get(broker.url("/cameras/garden/mjpeg")) as resp:
        assert resp.status == 404
    await publisher(http, broker, "garden")
    async with http.get(broker.url("/cameras/garden/mjpeg")) as resp:
        parts = PartReader(resp)
        tricky = make_jpeg()[:-2] + b"\r\n--" + parts.boundary + b"\r\n" + b"\xff\xd9"
        async with http.post(broker.url("/cameras/garden/publish"), data=tricky, headers=broker.auth) as r:
            assert r.status == 204
        assert await parts.next_part() == tricky


async def test_quiet_camera_frame_is_repeated_as_keepalive(broker, http):
    """With no new frame, the last one is sent again every mjpeg_keepalive seconds (0.5 s here)."""
    pub = await publisher(http, broker, "garden")
    frame = make_jpeg()
    await pub.send_bytes(frame)
    async with http.get(broker.url("/cameras/garden/mjpeg")) as resp:
        parts = PartReader(resp)
        assert await parts.next_part() == frame
        started = time.monotonic()
        assert await parts.next_part() == frame
        assert 0.2 < time.monotonic() - started < 2.0


async def test_offline_camera_shows_no_signal_picture(broker, http):
    """MJPEG viewers cannot read state messages, so they get a generated "no signal" frame."""
    pub = await publisher(http, broker, "garden")
    frame = make_jpeg((0, 255, 0), size=(320, 240))
    await pub.send_bytes(frame)
    async with http.get(broker.url("/cameras/garden/mjpeg")) as resp:
        parts = PartReader(resp)
        assert await parts.next_part() == frame
        await pub.close()
        deadline = time.monotonic() + 5
        part = frame
        while part == frame and time.monotonic() < deadline:
            part = await parts.next_part()
        image = cv2.imdecode(np.frombuffer(part, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (240, 320, 3)  # the camera's own size
        assert image[:, :, 1].mean() < 100  # dark grey, not the green camera picture
        # The no-signal picture is repeated as the keep-alive while offline.
        assert await parts.next_part() == part
        # When the camera comes back, so does its picture.
        pub = await publisher(http, broker, "garden")
        back = make_jpeg((255, 0, 0))
        await pub.send_bytes(back)
        while (part := await parts.next_part()) != back:
            pass


async def test_no_signal_picture_is_bounded_whatever_size_a_frame_claims(broker, http):
    """A tiny JPEG whose header claims 8000x8000: the no-signal picture is drawn at most
    1920x1080, scaled down with the camera's shape (square here), never at 8000x8000."""
    liar = jpeg_claiming(make_jpeg(size=(32, 32)), 8000, 8000)
    pub = await publisher(http, broker, "huge")
    await pub.send_bytes(bytes(liar))
    async with http.get(broker.url("/api/cameras")) as resp:
        (camera,) = (await resp.json())["cameras"]
    assert (camera["width"], camera["height"]) == (8000, 8000)
    async with http.get(broker.url("/cameras/huge/mjpeg")) as resp:
        parts = PartReader(resp)
        assert await parts.next_part() == liar
        await pub.close()
        part = liar
        while part == liar:
            part = await parts.next_part()
    image = cv2.imdecode(np.frombuffer(part, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (1080, 1080, 3)


async def test_fps_cap_limits_frames_to_one_viewer(broker, http):
    """`?fps=2` on a 30 fps camera: about 2 frames a second, always recent ones."""
    pub = await publisher(http, broker, "garden")
    frames = [make_jpeg((i, 0, 0), text=str(i)) for i in range(3)]
    stop = asyncio.Event()

    async def publish() -> None:
        i = 0
        while not stop.is_set():
            await pub.send_bytes(frames[i % 3])
            i += 1
            await asyncio.sleep(1 / 30)

    task = asyncio.ensure_future(publish())
    try:
        async with http.get(broker.url("/cameras/garden/mjpeg?fps=2")) as resp:
            parts = PartReader(resp)
            await parts.next_part()
            started = time.monotonic()
            for _ in range(4):
                await parts.next_part()
            elapsed = time.monotonic() - started
    finally:
        stop.set()
        await task
    assert 1.4 < elapsed < 3.0, elapsed  # 4 intervals of 0.5 s


@pytest.mark.parametrize("fps", ["0", "-1", "abc", "1000"])
async def test_bad_fps_is_400(broker, http, fps):
    await publisher(http, broker, "garden")
    async with http.get(broker.url(f"/cameras/garden/mjpeg?fps={fps}")) as resp:
        assert resp.status == 400
        assert "fps=" in await resp.text()


async def test_http_10_clients_get_an_unchunked_stream(broker, http):
    """Old players speak HTTP/1.0: no chunked encoding, the body simply runs until close."""
    pub = await publisher(http, broker, "garden")
    frame = make_jpeg()
    await pub.send_bytes(frame)
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    writer.write(b"GET /cameras/garden/mjpeg HTTP/1.0\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.0 200")
    assert b"chunked" not in head.lower()
    data = b""
    while frame not in data:
        data += await asyncio.wait_for(reader.read(65536), 5)
    assert data.startswith(b"--")
    assert b"Content-Length: %d\r\n\r\n" % len(frame) + frame + b"\r\n--" in data
    writer.close()
    await writer.wait_closed()


async def test_mjpeg_viewer_leaving_a_quiet_camera_is_cleaned_up(broker, http):
    pub = await publisher(http, broker, "garden")
    await pub.send_bytes(make_jpeg())
    resp = await http.get(broker.url("/cameras/garden/mjpeg"))
    await PartReader(resp).next_part()
    resp.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        async with http.get(broker.url("/api/cameras")) as api:
            if (await api.json())["cameras"][0]["viewers"]["mjpeg"] == 0:
                return
        await asyncio.sleep(0.1)
    raise AssertionError("the MJPEG viewer was never removed")
