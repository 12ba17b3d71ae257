"""Publishing: tokens, what a frame must be, one publisher per camera, and the demand signal."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import pytest
from aiohttp import web

from .conftest import TOKEN, make_jpeg, next_binary, next_json, publisher


async def snapshot_bytes(http: aiohttp.ClientSession, broker, camera: str) -> bytes:
    async with http.get(broker.url(f"/cameras/{camera}/snapshot.jpg")) as resp:
        assert resp.status == 200
        return await resp.read()


async def wait_for_snapshot(http, broker, camera: str, expected: bytes) -> None:
    """Poll the snapshot until it equals `expected` (publishing is asynchronous)."""
    for _ in range(100):
        async with http.get(broker.url(f"/cameras/{camera}/snapshot.jpg")) as resp:
            if resp.status == 200 and await resp.read() == expected:
                return
        await asyncio.sleep(0.02)
    raise AssertionError("snapshot never showed the published frame")


async def logged(caplog: pytest.LogCaptureFixture, text: str, timeout: float = 5.0) -> bool:
    """Whether a broker log line contains `text` within `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if any(text in record.getMessage() for record in caplog.records):
            return True
        await asyncio.sleep(0.02)
    return False


async def test_a_published_frame_becomes_the_snapshot(broker, http):
    """A JPEG sent over the publish WebSocket is served byte for byte as the snapshot."""
    ws = await publisher(http, broker, "garden")
    frame = make_jpeg((10, 200, 30))
    await ws.send_bytes(frame)
    await wait_for_snapshot(http, broker, "garden", frame)
    await ws.close()


async def test_http_post_publishes_a_frame(broker, http):
    """`curl --data-binary @f.jpg` with a bearer token: 204, and the snapshot is that JPEG."""
    frame = make_jpeg((1, 2, 3))
    async with http.post(broker.url("/cameras/door/publish"), data=frame, headers=broker.auth) as resp:
        assert resp.status == 204
    assert await snapshot_bytes(http, broker, "door") == frame


async def test_token_in_query_is_accepted(broker, http):
    frame = make_jpeg()
    async with http.post(broker.url(f"/cameras/door/publish?token={TOKEN}"), data=frame) as resp:
        assert resp.status == 204


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 403),
        ({"Authorization": "Bearer " + TOKEN[:-1]}, 403),
        ({"Authorization": "Bearer ✓é"}, 403),
        ({"Authorization": "Basic " + TOKEN}, 401),
    ],
)
async def test_missing_or_wrong_token_is_refused_before_the_upgrade(broker, http, headers, status):
    """No 101 and no body read without the right token; nothing is cached; 401 says how to send it."""
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(broker.ws_url("/cameras/garden/publish"), headers=headers)
    assert info.value.status == status
    async with http.post(broker.url("/cameras/garden/publish"), data=make_jpeg(), headers=headers) as resp:
        assert resp.status == status
        text = await resp.text()
        assert TOKEN not in text
        if status == 401:
            assert "Bearer" in resp.headers["WWW-Authenticate"]
            assert "Authorization: Bearer" in text
    async with http.get(broker.url("/cameras/garden/snapshot.jpg")) as resp:
        assert resp.status == 404


async def camera_entry(http: aiohttp.ClientSession, broker, camera: str) -> dict:
    async with http.get(broker.url("/api/cameras")) as resp:
        return next(c for c in (await resp.json())["cameras"] if c["id"] == camera)


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xff", b"\x89PNG\r\n\x1a\n" + b"\0" * 100, b"random bytes that are not a picture"],
    ids=["empty", "one-byte", "png", "text"],
)
async def test_non_jpeg_is_dropped_and_counted_and_the_cached_frame_survives(broker, http, payload):
    """A non-JPEG is dropped and counted (WebSocket) or gets 415 (POST): the publisher stays
    connected, its next frame reaches the viewer, and nothing bad is ever cached."""
    good, later = make_jpeg((50, 60, 70)), make_jpeg((70, 60, 50))
    ws = await publisher(http, broker, "garden")
    viewer = await http.ws_connect(broker.ws_url("/cameras/garden/ws"))
    await ws.send_bytes(good)
    assert await next_binary(viewer) == good
    await ws.send_bytes(payload)
    assert await snapshot_bytes(http, broker, "garden") == good
    await ws.send_bytes(later)
    assert await next_binary(viewer) == later
    async with http.post(broker.url("/cameras/garden/publish"), data=payload, headers=broker.auth) as resp:
        assert resp.status == 415
        assert "not a complete JPEG" in await resp.text()
    assert await snapshot_bytes(http, broker, "garden") == later
    camera = await camera_entry(http, broker, "garden")
    assert (camera["frames"], camera["frames_bad"], camera["publisher"]) == (2, 2, True)


async def test_max_bad_frames_in_a_row_close_the_publisher_with_1003(start_broker, http, caplog):
    """Only `max_bad_frames` bad frames in a row close the publisher (1003, with the reason);
    a good frame in between starts the count again. The log names the code the broker sent."""
    broker = await start_broker(max_bad_frames=3)
    good = make_jpeg((1, 2, 3))
    ws = await publisher(http, broker, "garden")
    for payload in (b"bad", b"bad", good, b"bad", b"bad", b"bad"):
        await ws.send_bytes(payload)
    msg = await asyncio.wait_for(ws.receive(), 5)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1003)
    assert "3 frames in a row" in msg.extra and "JPEG" in msg.extra
    assert await snapshot_bytes(http, broker, "garden") == good
    assert (await camera_entry(http, broker, "garden"))["frames_bad"] == 5
    await ws.close()
    assert await logged(caplog, "camera garden: publisher 127.0.0.1 disconnected (code 1003)")


async def test_truncated_jpeg_is_rejected(broker, http):
    """A JPEG cut short (no EOI marker) is never cached."""
    good = make_jpeg((0, 0, 255))
    async with http.post(broker.url("/cameras/cut/publish"), data=good, headers=broker.auth) as resp:
        assert resp.status == 204
    cut = make_jpeg((255, 0, 0))[:-100]
    async with http.post(broker.url("/cameras/cut/publish"), data=cut, headers=broker.auth) as resp:
        assert resp.status == 415
    assert await snapshot_bytes(http, broker, "cut") == good


async def test_a_post_broken_off_mid_body_is_one_warning(broker, http, caplog):
    """A publisher that hangs up halfway through its POST body costs one WARNING line:
    no traceback, no 500, and the cached frame stays."""
    good = make_jpeg((5, 5, 5))
    async with http.post(broker.url("/cameras/garden/publish"), data=good, headers=broker.auth) as r:
        assert r.status == 204
    frame = make_jpeg((9, 9, 9))
    _, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    writer.write(
        b"POST /cameras/garden/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
        b"Authorization: Bearer " + broker.token.encode() + b"\r\n"
        b"Content-Length: " + str(len(frame)).encode() + b"\r\n\r\n" + frame[: len(frame) // 2]
    )
    await writer.drain()
    writer.transport.abort()  # like a camera whose network died mid-frame
    for _ in range(250):
        warnings = [r for r in caplog.records if r.name == "broker.ingest" and r.levelno >= logging.WARNING]
        if warnings:
            break
        await asyncio.sleep(0.02)
    assert len(warnings) == 1
    assert "garden" in warnings[0].getMessage() and warnings[0].levelno == logging.WARNING
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not [r for r in caplog.records if r.name == "aiohttp.access" and '" 500 ' in r.getMessage()]
    assert await snapshot_bytes(http, broker, "garden") == good


async def test_oversized_frames_are_refused(start_broker, http, caplog):
    """Over max_frame_bytes: WebSocket close 1009; POST 413 by Content-Length and when chunked.
    The log says which limit and which code, whatever the publisher answers."""
    broker = await start_broker(max_frame_bytes=64 * 1024)
    good = make_jpeg((9, 9, 9))
    big = make_jpeg()[:-2] + b"\0" * (70 * 1024) + b"\xff\xd9"
    ws = await publisher(http, broker, "big")
    await ws.send_bytes(good)
    await wait_for_snapshot(http, broker, "big", good)
    # The snapshots count as a viewer: the publisher hears of it first.
    assert (await asyncio.wait_for(ws.receive_json(), 5))["snapshot_only"] is True
    await ws.send_bytes(big)
    msg = await asyncio.wait_for(ws.receive(), 5)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
    assert ws.close_code == 1009
    assert await logged(
        caplog, f"rejected: a frame larger than max_frame_bytes={64 * 1024} (closed with 1009)"
    )
    assert await logged(caplog, "camera big: publisher 127.0.0.1 disconnected (code 1009)")
    async with http.post(broker.url("/cameras/big/publish"), data=big, headers=broker.auth) as resp:
        assert resp.status == 413

    async def chunks():
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]

    async with http.post(broker.url("/cameras/big/publish"), data=chunks(), headers=broker.auth) as resp:
        assert resp.status == 413
    assert await snapshot_bytes(http, broker, "big") == good


@pytest.mark.parametrize(
    "text", ["not json", "[1, 2]", '{"no": "type"}', '{"type": 5}', "[" * 100_000], ids=str.__len__
)
async def test_bad_control_messages_close_with_1007(broker, http, text):
    """A text message that is not a JSON object with a string "type" closes with 1007."""
    ws = await publisher(http, broker, "garden")
    await ws.send_str(text)
    msg = await asyncio.wait_for(ws.receive(), 5)
    assert msg.type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 1007


async def test_hello_is_shown_and_unknown_types_are_ignored(broker, http):
    ws = await publisher(http, broker, "garden")
    await ws.send_json({"type": "future-feature", "x": 1})
    await ws.send_json({"type": "hello", "agent": "camera-agent/9", "source": "synthetic"})
    await ws.send_bytes(make_jpeg())
    for _ in range(100):
        async with http.get(broker.url("/api/cameras")) as resp:
            cameras = (await resp.json())["cameras"]
        if cameras and cameras[0]["agent"]:
            break
        await asyncio.sleep(0.02)
    assert cameras[0]["agent"] == {"agent": "camera-agent/9", "source": "synthetic"}
    assert not ws.closed


async def test_cameras_are_never_mixed(broker, http):
    """Frames published to two cameras at once each land only on their own camera."""
    a = await publisher(http, broker, "cam-a")
    b = await publisher(http, broker, "cam_b")
    viewer_a = await http.ws_connect(broker.ws_url("/cameras/cam-a/ws"))
    viewer_b = await http.ws_connect(broker.ws_url("/cameras/cam_b/ws"))
    frames_a = [make_jpeg((i, 0, 0), text=f"a{i}") for i in range(10)]
    frames_b = [make_jpeg((0, i, 0), text=f"b{i}") for i in range(10)]
    for fa, fb in zip(frames_a, frames_b, strict=True):
        await a.send_bytes(fa)
        await b.send_bytes(fb)
    got_a, got_b = set(), set()
    while frames_a[-1] not in got_a or frames_b[-1] not in got_b:
        for viewer, got in ((viewer_a, got_a), (viewer_b, got_b)):
            msg = await asyncio.wait_for(viewer.receive(), 5)
            if msg.type == aiohttp.WSMsgType.BINARY:
                got.add(msg.data)
    assert got_a <= set(frames_a)
    assert got_b <= set(frames_b)
    assert await snapshot_bytes(http, broker, "cam-a") == frames_a[-1]
    assert await snapshot_bytes(http, broker, "cam_b") == frames_b[-1]


async def test_a_new_publisher_takes_over(broker, http):
    """The old connection (maybe half-open after a Wi-Fi drop) is closed with 4000 and a reason."""
    old = await publisher(http, broker, "garden")
    new = await publisher(http, broker, "garden")
    msg = await asyncio.wait_for(old.receive(), 5)
    # The close frame carries the code; aiohttp's client may report 1006 afterwards because
    # the broker closes TCP right after its close frame when the receiving task is parked.
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 4000)
    assert "took over" in msg.extra
    frame = make_jpeg((3, 3, 3))
    await new.send_bytes(frame)
    await wait_for_snapshot(http, broker, "garden", frame)


async def test_publisher_hears_when_viewers_come_and_go(broker, http):
    """Demand: 0 on connect, 1 when the first viewer arrives, 0 when the last one leaves."""
    ws = await http.ws_connect(broker.ws_url("/cameras/garden/publish"), headers=broker.auth)
    assert await next_json(ws) == {"type": "viewers", "count": 0}
    viewer = await http.ws_connect(broker.ws_url("/cameras/garden/ws"))
    assert await next_json(ws) == {"type": "viewers", "count": 1}
    second = await http.ws_connect(broker.ws_url("/cameras/garden/ws"))
    await viewer.close()
    await second.close()
    assert await next_json(ws) == {"type": "viewers", "count": 0}
    async with http.get(broker.url("/cameras/garden/mjpeg")) as resp:
        assert resp.status == 200
        assert await next_json(ws) == {"type": "viewers", "count": 1}
    assert await next_json(ws) == {"type": "viewers", "count": 0}


async def test_viewer_connected_first_is_counted_on_connect(broker, http):
    viewer = await http.ws_connect(broker.ws_url("/cameras/garden/ws"))
    ws = await http.ws_connect(broker.ws_url("/cameras/garden/publish"), headers=broker.auth)
    assert await next_json(ws) == {"type": "viewers", "count": 1}
    await viewer.close()


async def test_a_failed_viewer_count_closes_the_publisher_so_it_hears_again(
    broker, http, monkeypatch, caplog
):
    """Sending a viewer count fails: the broker says so once and closes the publisher with
    1011, so that its agent reconnects and hears the count, instead of never hearing again."""
    pub = await publisher(http, broker, "garden")
    original = web.WebSocketResponse.send_json
    failures = []

    async def send_json_once_failing(self: web.WebSocketResponse, data: object, **kwargs: object) -> None:
        if not failures:
            failures.append(data)
            raise RuntimeError("send failed on purpose")
        await original(self, data, **kwargs)

    monkeypatch.setattr(web.WebSocketResponse, "send_json", send_json_once_failing)
    viewer = await http.ws_connect(broker.ws_url("/cameras/garden/ws"))
    msg = await asyncio.wait_for(pub.receive(), 5)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1011)
    assert failures == [{"type": "viewers", "count": 1}]
    warnings = [r.getMessage() for r in caplog.records if r.name == "broker.ingest" and r.levelno >= 30]
    assert len(warnings) == 1 and "garden" in warnings[0] and "send failed on purpose" in warnings[0]
    again = await http.ws_connect(broker.ws_url("/cameras/garden/publish"), headers=broker.auth)
    assert await next_json(again) == {"type": "viewers", "count": 1}
    await viewer.close()


@pytest.mark.parametrize(
    "camera", ["a" * 65, "bad.id", "caf%C3%A9", "%EF%BD%83am1", "a%20b", "x%00"], ids=repr
)
async def test_invalid_camera_ids_get_400(broker, http, camera):
    for method, path in (("GET", "snapshot.jpg"), ("POST", "publish"), ("GET", "ws"), ("GET", "mjpeg")):
        url = broker.url(f"/cameras/{camera}/{path}")
        async with http.request(method, aiohttp.client.URL(url, encoded=True), headers=broker.auth) as resp:
            assert resp.status == 400, (method, path)
            assert "invalid camera id" in await resp.text()


async def test_camera_ids_of_64_characters_work(broker, http):
    camera = "A-z_9" * 12 + "abcd"
    async with http.post(
        broker.url(f"/cameras/{camera}/publish"), data=make_jpeg(), headers=broker.auth
    ) as r:
        assert r.status == 204


async def test_camera_table_is_bounded(start_broker, http):
    """Beyond max_cameras a new camera gets 503; existing ones keep working."""
    broker = await start_broker(max_cameras=2)
    for camera in ("one", "two"):
        async with http.post(
            broker.url(f"/cameras/{camera}/publish"), data=make_jpeg(), headers=broker.auth
        ) as r:
            assert r.status == 204
    async with http.post(broker.url("/cameras/three/publish"), data=make_jpeg(), headers=broker.auth) as r:
        assert r.status == 503
        assert "max_cameras=2" in await r.text()
    async with http.post(broker.url("/cameras/one/publish"), data=make_jpeg(), headers=broker.auth) as r:
        assert r.status == 204


async def test_a_silent_publisher_is_dropped_by_the_heartbeat(start_broker, http):
    """A publisher that stops answering pings (a frozen agent) is disconnected; viewers stay."""
    broker = await start_broker(heartbeat=0.4)
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    writer.write(
        b"GET /cameras/frozen/publish HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Authorization: Bearer " + broker.token.encode() + b"\r\n\r\n"
    )
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    started = time.monotonic()
    # Never answer: read what the broker sends (the viewers message, pings) until it hangs up.
    while await asyncio.wait_for(reader.read(4096), 5):
        pass
    assert time.monotonic() - started < 3
    async with http.get(broker.url("/api/cameras")) as resp:
        (camera,) = (await resp.json())["cameras"]
    assert camera["publisher"] is False
    writer.close()
