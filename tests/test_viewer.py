"""Watching over WebSocket: newest frame first, state messages, and isolation from slow viewers."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import time

import aiohttp
import pytest

from broker.app_keys import HUB

from .conftest import make_jpeg, next_binary, next_json, publisher


async def test_viewer_gets_state_then_cached_frame_then_new_frames(broker, http):
    """On connect: a status message, the cached frame at once; then each new frame, byte-identical."""
    pub = await publisher(http, broker, "garden")
    first = make_jpeg((1, 1, 1))
    await pub.send_bytes(first)
    await asyncio.sleep(0.05)
    viewer = await http.ws_connect(broker.ws_url("/cameras/garden/ws"))
    status = await next_json(viewer)
    assert status["type"] == "status"
    assert status["camera"] == "garden"
    assert status["online"] is True
    assert abs(status["since"] - time.time()) < 60
    assert await next_binary(viewer) == first
    frames = [make_jpeg((i * 20, 0, 0), text=str(i)) for i in range(5)]
    for frame in frames:
        await pub.send_bytes(frame)
        assert await next_binary(viewer) == frame


async def test_header_option_prefixes_sequence_and_receive_time(broker, http):
    """`?header=1`: 8-byte big-endian seq, 8-byte big-endian double ms since the epoch, then JPEG."""
    pub = await publisher(http, broker, "garden")
    viewer = await http.ws_connect(broker.ws_url("/cameras/garden/ws?header=1"))
    frames = [make_jpeg((0, 0, i * 40)) for i in range(3)]
    for expected_seq, frame in enumerate(frames, start=1):
        before = time.time() * 1000
        await pub.send_bytes(frame)
        data = await next_binary(viewer)
        seq, received_ms = struct.unpack("!Qd", data[:16])
        assert seq == expected_seq
        assert before - 50 <= received_ms <= time.time() * 1000 + 50
        assert data[16:] == frame


async def test_a_burst_faster_than_the_fan_out_sends_only_its_newest_frame(broker, http):
    """Frames that arrive within one pass of the event loop (an overloaded core) are
    replaced by the newest before any viewer gets them: latency stays bounded."""
    pub = await publisher(http, broker, "burst")
    first = make_jpeg((9, 9, 9))
    await pub.send_bytes(first)
    viewer = await http.ws_connect(broker.ws_url("/cameras/burst/ws?header=1"))
    await next_json(viewer)
    assert (await next_binary(viewer))[16:] == first
    channel = broker.app[HUB].channel("burst")
    burst = [make_jpeg((0, i * 60, 0)) for i in range(1, 4)]
    for frame in burst:  # no await in between: the loop never runs a fan-out
        channel.publish(frame)
    data = await next_binary(viewer)
    assert struct.unpack("!Q", data[:8])[0] == 4
    assert data[16:] == burst[-1]
    assert channel.frames_dropped == 2
    cameras = await (await http.get(broker.url("/api/cameras"))).json()
    assert cameras["cameras"][0]["frames_dropped"] == 2
    # The next frame on its own goes out as usual.
    await pub.send_bytes(first)
    assert (await next_binary(viewer))[16:] == first
    with pytest.raises(asyncio.TimeoutError):
        await viewer.receive(timeout=0.2)


async def test_viewer_may_connect_before_the_camera_exists(broker, http):
    viewer = await http.ws_connect(broker.ws_url("/cameras/later/ws"))
    assert (await next_json(viewer))["online"] is False
    pub = await publisher(http, broker, "later")
    frame = make_jpeg((5, 5, 5))
    await pub.send_bytes(frame)
    assert (await next_json(viewer))["online"] is True
    assert await next_binary(viewer) == frame


async def test_viewers_are_told_when_the_camera_goes_offline_and_back(broker, http):
    """No frame for offline_after seconds (1 s here): status offline; the next frame: online."""
    pub = await publisher(http, broker, "garden")
    viewer = await http.ws_connect(broker.ws_url("/cameras/garden/ws"))
    await next_json(viewer)
    await pub.send_bytes(make_jpeg())
    await next_binary(viewer)
    started = time.monotonic()
    await pub.close()
    status = await next_json(viewer, timeout=5)
    assert status["online"] is False
    assert 0.5 < time.monotonic() - started < 4
    pub = await publisher(http, broker, "garden")
    await pub.send_bytes(make_jpeg())
    assert (await next_json(viewer))["online"] is True


async def test_a_camera_without_viewers_is_not_offline_for_lack_of_frames(broker, http):
    """An agent may pause capture while nobody watches; it stays online while connected."""
    pub = await publisher(http, broker, "idle")
    await pub.send_bytes(make_jpeg())
    await asyncio.sleep(broker.settings.offline_after * 2)
    async with http.get(broker.url("/api/cameras")) as resp:
        (camera,) = (await resp.json())["cameras"]
    assert camera["online"] is True
    viewer = await http.ws_connect(broker.ws_url("/cameras/idle/ws"))
    assert (await next_json(viewer))["online"] is True
    # The viewer asked for frames; none come, so after offline_after the camera is offline.
    assert (await next_json(viewer, timeout=5))["online"] is False


async def test_viewer_messages_are_ignored_and_large_ones_refused(broker, http):
    viewer = await http.ws_connect(broker.ws_url("/cameras/garden/ws"))
    await next_json(viewer)
    await viewer.send_str("hello")
    pub = await publisher(http, broker, "garden")
    frame = make_jpeg()
    await pub.send_bytes(frame)
    assert await next_binary(viewer) == frame
    await viewer.send_bytes(b"x" * 10_000)
    msg = await asyncio.wait_for(viewer.receive(), 5)
    while msg.type == aiohttp.WSMsgType.TEXT:
        msg = await asyncio.wait_for(viewer.receive(), 5)
    assert msg.type == aiohttp.WSMsgType.CLOSE
    assert msg.data == 1009


async def test_viewer_websocket_offers_no_compression(broker, http):
    """permessage-deflate is never negotiated: JPEG does not shrink, and it would cost CPU."""
    async with http.get(
        broker.url("/cameras/garden/ws"),
        headers={
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
            "Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits",
        },
    ) as resp:
        assert resp.status == 101
        assert "Sec-WebSocket-Extensions" not in resp.headers


def stalled_viewer(port: int, path: str) -> socket.socket:
    """A viewer that completes the handshake and then never reads (tiny receive buffer)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)  # byte by byte: leave any frame bytes unread in the kernel
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


async def test_stalled_viewers_do_not_slow_a_fast_viewer(start_broker, http):
    """Ten viewers that never read: a reading viewer still gets >= 90 % of a 30 fps camera.

    The stalled ones keep at most one unsent frame each in user space, skip frames,
    and are disconnected once their socket has accepted nothing for viewer_send_timeout.
    """
    broker = await start_broker(viewer_send_timeout=2.0, heartbeat=30.0)
    pub = await publisher(http, broker, "cam")
    stalled = [await asyncio.to_thread(stalled_viewer, broker.port, "/cameras/cam/ws") for _ in range(10)]
    try:
        await check_fast_viewer_is_unaffected(broker, http, pub)
    finally:
        for sock in stalled:
            sock.close()


async def check_fast_viewer_is_unaffected(broker, http, pub) -> None:
    fast = await http.ws_connect(broker.ws_url("/cameras/cam/ws"))
    await next_json(fast)
    frames = [
        make_jpeg((i % 255, 100, 50), size=(1280, 720), text=f"frame {i}", noise=i + 1) for i in range(8)
    ]
    frame_size = max(len(f) for f in frames)
    assert frame_size > 100_000  # big enough to fill the stalled sockets' buffers quickly
    channel = broker.app[HUB].channel("cam")
    published = 0
    received = 0
    worst_backlog = 0

    async def read_fast() -> None:
        nonlocal received
        while True:
            await next_binary(fast)
            received += 1

    reader = asyncio.ensure_future(read_fast())
    interval = 1 / 30
    next_at = time.monotonic()
    for i in range(45):  # 1.5 s at 30 fps, under the 2 s send timeout
        await pub.send_bytes(frames[i % len(frames)])
        published += 1
        for writer in channel._viewers:
            worst_backlog = max(worst_backlog, writer._transport.get_write_buffer_size())
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    await asyncio.sleep(0.3)
    reader.cancel()
    assert received >= 0.9 * published, (received, published)
    # user space holds at most the rest of one frame per viewer: no queue builds up
    assert worst_backlog <= frame_size + 16
    # Kernel memory too: each viewer socket has the bounded send buffer (Linux doubles it).
    for writer in channel._viewers:
        sndbuf = writer._transport.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        assert sndbuf <= 2 * broker.settings.viewer_sndbuf
    skipped = sorted(w.frames_skipped for w in channel._viewers if w.kind == "ws")
    assert skipped[-1] > 0  # the stalled ones skipped frames (newest wins)

    # After the send timeout the stalled viewers are dropped; the fast one stays.
    deadline = time.monotonic() + 10
    while channel.viewer_count > 1 and time.monotonic() < deadline:
        await pub.send_bytes(frames[0])
        await asyncio.sleep(0.1)
    assert channel.viewer_count == 1
    assert not fast.closed


def read_ws_message(sock: socket.socket) -> tuple[int, bytes]:
    """(opcode, payload) of the next unmasked server frame, read from a blocking socket."""

    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(min(n - len(data), 16384))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    first, second = exactly(2)
    length = second & 0x7F
    if length == 126:
        length = struct.unpack("!H", exactly(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", exactly(8))[0]
    return first & 0x0F, exactly(length)


def read_slowly(sock: socket.socket, seconds: float) -> list[int]:
    """Read frames at about 3 frames/s for `seconds`; the sequence numbers seen."""
    seqs = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        opcode, payload = read_ws_message(sock)
        if opcode == 2:
            seqs.append(struct.unpack("!Q", payload[:8])[0])
            time.sleep(0.3)
    return seqs


async def test_slow_reader_skips_to_the_newest_frame(start_broker, http):
    """A viewer reading 3 frames/s of a 30 fps camera gets ever newer frames, then the very last one."""
    broker = await start_broker(heartbeat=30.0)  # this raw-socket reader answers no pings
    pub = await publisher(http, broker, "cam")
    sock = await asyncio.to_thread(stalled_viewer, broker.port, "/cameras/cam/ws?header=1")
    frames = [make_jpeg(size=(640, 480), noise=i + 1) for i in range(4)]
    published = 0
    try:
        reading = asyncio.ensure_future(asyncio.to_thread(read_slowly, sock, 2.5))
        while not reading.done():
            await pub.send_bytes(frames[published % len(frames)])
            published += 1
            await asyncio.sleep(1 / 30)
        seqs = await reading
        assert seqs == sorted(seqs)
        assert len(seqs) < published / 3  # the reader could not take them all...
        assert seqs[-1] - seqs[0] > 2 * len(seqs)  # ...so it skipped, instead of queueing
        # Once the camera stops, what reaches the viewer ends with the newest frame.
        last_seq = None
        while last_seq != published:
            opcode, payload = await asyncio.wait_for(asyncio.to_thread(read_ws_message, sock), 5)
            if opcode == 2:
                last_seq = struct.unpack("!Q", payload[:8])[0]
    finally:
        sock.close()


@pytest.mark.parametrize("kind", ["ws", "mjpeg"])
async def test_viewers_of_many_cameras_are_counted_by_kind(broker, http, kind):
    pub = await publisher(http, broker, "cam")
    await pub.send_bytes(make_jpeg())
    if kind == "ws":
        conn = await http.ws_connect(broker.ws_url("/cameras/cam/ws"))
    else:
        conn = await http.get(broker.url("/cameras/cam/mjpeg"))
    async with http.get(broker.url("/api/cameras")) as resp:
        (camera,) = (await resp.json())["cameras"]
    assert camera["viewers"] == {"ws": 1 if kind == "ws" else 0, "mjpeg": 1 if kind == "mjpeg" else 0}
    conn.close() if kind == "mjpeg" else await conn.close()


@pytest.mark.parametrize("path", ["/cameras/garden/ws", "/cameras/garden/publish"])
async def test_old_websocket_versions_get_426(broker, http, path):
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "8",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        **(broker.auth if path.endswith("/publish") else {}),
    }
    async with http.get(broker.url(path), headers=headers) as resp:
        assert resp.status == 426
        assert resp.headers["Sec-WebSocket-Version"] == "13"
