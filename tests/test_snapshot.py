"""The snapshot URL: newest JPEG, validators, and the answers for unknown or frameless cameras."""

from __future__ import annotations

import asyncio
import email.utils
import time

import aiohttp

from .conftest import make_jpeg, publisher

PER_REQUEST = {"Date", "X-Frame-Age"}


async def post(http, broker, camera: str, frame: bytes) -> None:
    async with http.post(broker.url(f"/cameras/{camera}/publish"), data=frame, headers=broker.auth) as resp:
        assert resp.status == 204


async def test_snapshot_is_the_newest_jpeg_with_validators(broker, http):
    frame = make_jpeg((7, 8, 9))
    before = time.time()
    await post(http, broker, "garden", frame)
    async with http.get(broker.url("/cameras/garden/snapshot.jpg")) as resp:
        assert resp.status == 200
        assert await resp.read() == frame
        assert resp.headers["Content-Type"] == "image/jpeg"
        assert resp.headers["Cache-Control"] == "no-cache"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["X-Frame-Seq"] == "1"
        assert 0 <= float(resp.headers["X-Frame-Age"]) < 5
        modified = email.utils.parsedate_to_datetime(resp.headers["Last-Modified"]).timestamp()
        assert int(before) - 1 <= modified <= time.time() + 1
        etag = resp.headers["ETag"]
    newer = make_jpeg((9, 8, 7))
    await post(http, broker, "garden", newer)
    async with http.get(broker.url("/cameras/garden/snapshot.jpg")) as resp:
        assert await resp.read() == newer
        assert resp.headers["ETag"] != etag


async def test_if_none_match_gives_304_until_a_new_frame(broker, http):
    await post(http, broker, "garden", make_jpeg())
    async with http.get(broker.url("/cameras/garden/snapshot.jpg")) as resp:
        etag = resp.headers["ETag"]
    async with http.get(broker.url("/cameras/garden/snapshot.jpg"), headers={"If-None-Match": etag}) as resp:
        assert resp.status == 304
        assert await resp.read() == b""
        assert resp.headers["ETag"] == etag
    async with http.get(
        broker.url("/cameras/garden/snapshot.jpg"), headers={"If-None-Match": f'"other", W/{etag}'}
    ) as resp:
        assert resp.status == 304
    await post(http, broker, "garden", make_jpeg((1, 1, 1)))
    async with http.get(broker.url("/cameras/garden/snapshot.jpg"), headers={"If-None-Match": etag}) as resp:
        assert resp.status == 200


async def test_if_none_match_star_gives_304_only_while_a_frame_exists(broker, http):
    """`If-None-Match: *` asks "is there any frame?": 304 once there is one, 404/503 before."""
    star = {"If-None-Match": "*"}
    async with http.get(broker.url("/cameras/garden/snapshot.jpg"), headers=star) as resp:
        assert resp.status == 404
    pub = await publisher(http, broker, "garden")
    async with http.get(broker.url("/cameras/garden/snapshot.jpg"), headers=star) as resp:
        assert resp.status == 503
    await pub.close()
    await post(http, broker, "garden", make_jpeg())
    async with http.get(broker.url("/cameras/garden/snapshot.jpg"), headers=star) as resp:
        assert resp.status == 304
        assert resp.headers["X-Frame-Seq"] == "1"
        assert resp.headers["ETag"]


async def test_if_modified_since_gives_304_unless_the_frame_is_newer(broker, http):
    """If-Modified-Since is compared with Last-Modified (whole seconds); If-None-Match overrides it."""
    await post(http, broker, "garden", make_jpeg())
    async with http.get(broker.url("/cameras/garden/snapshot.jpg")) as resp:
        modified = resp.headers["Last-Modified"]
        etag = resp.headers["ETag"]
    earlier = email.utils.formatdate(email.utils.parsedate_to_datetime(modified).timestamp() - 1, usegmt=True)
    cases = [
        ({"If-Modified-Since": modified}, 304),
        ({"If-Modified-Since": earlier}, 200),
        ({"If-Modified-Since": "not a date"}, 200),
        ({"If-Modified-Since": modified, "If-None-Match": '"another-frame"'}, 200),
        ({"If-Modified-Since": earlier, "If-None-Match": etag}, 304),
    ]
    for headers, status in cases:
        async with http.get(broker.url("/cameras/garden/snapshot.jpg"), headers=headers) as resp:
            assert resp.status == status, headers
            assert resp.headers["Last-Modified"] == modified
            assert len(await resp.read()) == (0 if status == 304 else int(resp.headers["Content-Length"]))


async def test_every_way_of_asking_gets_the_same_headers(broker, http):
    """Keep-alive GET, HEAD, HTTP/1.0 and `Connection: close` answers carry the same headers."""
    frame = make_jpeg((5, 6, 7))
    await post(http, broker, "garden", frame)
    url = broker.url("/cameras/garden/snapshot.jpg")
    answers = {}
    http10 = aiohttp.ClientSession(version=aiohttp.HttpVersion10)
    for name, session, method, headers in [
        ("get", http, "GET", {}),
        ("head", http, "HEAD", {}),
        ("http/1.0", http10, "GET", {}),
        ("close", http, "GET", {"Connection": "close"}),
    ]:
        async with session.request(method, url, headers=headers) as resp:
            assert resp.status == 200
            assert await resp.read() == (b"" if method == "HEAD" else frame)
            answers[name] = {k: v for k, v in resp.headers.items() if k not in PER_REQUEST | {"Connection"}}
            assert set(resp.headers.getall("Date")) == {resp.headers["Date"]}
    await http10.close()
    assert answers["get"]["Content-Length"] == str(len(frame))
    assert answers["get"]["Server"].startswith("Python/")
    for name, headers in answers.items():
        assert headers == answers["get"], name


async def test_pipelined_keep_alive_requests_get_whole_answers(broker):
    """Two requests sent at once on one connection: two complete answers, in order, then more."""
    frame = make_jpeg((8, 8, 8), size=(640, 480), noise=3)
    async with aiohttp.ClientSession() as http:
        await post(http, broker, "garden", frame)
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    request = b"GET /cameras/garden/snapshot.jpg HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % broker.port
    try:
        for count in (2, 1):
            writer.write(request * count)
            for _ in range(count):
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                lines = head.decode("latin-1").split("\r\n")
                assert lines[0] == "HTTP/1.1 200 OK"
                fields = dict(line.split(": ", 1) for line in lines[1:] if line)
                assert int(fields["Content-Length"]) == len(frame)
                assert await asyncio.wait_for(reader.readexactly(len(frame)), 5) == frame
    finally:
        writer.close()
        await writer.wait_closed()


async def test_etags_differ_between_broker_runs(start_broker, http):
    """Sequence numbers restart with the broker, so ETags carry a per-run part."""
    etags = []
    for _ in range(2):
        broker = await start_broker()
        await post(http, broker, "garden", make_jpeg())
        async with http.get(broker.url("/cameras/garden/snapshot.jpg")) as resp:
            etags.append(resp.headers["ETag"])
        await broker.stop()
    assert etags[0] != etags[1]


async def test_head_has_the_headers_without_the_body(broker, http):
    frame = make_jpeg()
    await post(http, broker, "garden", frame)
    async with http.head(broker.url("/cameras/garden/snapshot.jpg")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(len(frame))
        assert await resp.read() == b""


async def test_unknown_camera_is_404_and_frameless_camera_is_503(broker, http):
    async with http.get(broker.url("/cameras/nobody/snapshot.jpg")) as resp:
        assert resp.status == 404
        assert "never published" in await resp.text()
    pub = await publisher(http, broker, "starting")
    async with http.get(broker.url("/cameras/starting/snapshot.jpg")) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        assert "no frame yet" in await resp.text()
    await pub.close()


async def test_viewer_only_cameras_are_not_snapshots(broker, http):
    """A WebSocket viewer waiting for a camera does not make it "seen"."""
    viewer = await http.ws_connect(broker.ws_url("/cameras/typo/ws"))
    async with http.get(broker.url("/cameras/typo/snapshot.jpg")) as resp:
        assert resp.status == 404
    await viewer.close()


async def test_offline_camera_keeps_serving_its_last_frame_with_its_age(broker, http):
    frame = make_jpeg((4, 4, 4))
    await post(http, broker, "garden", frame)
    await asyncio.sleep(broker.settings.offline_after + 0.5)
    async with http.get(broker.url("/api/cameras")) as resp:
        assert (await resp.json())["cameras"][0]["online"] is False
    async with http.get(broker.url("/cameras/garden/snapshot.jpg")) as resp:
        assert resp.status == 200
        assert await resp.read() == frame
        assert float(resp.headers["X-Frame-Age"]) >= broker.settings.offline_after


# -- snapshots of cameras that capture on demand ----------------------------------------


async def paused_camera(http, broker, camera: str = "cam"):
    """A publisher with one frame, older than offline_after: an agent that paused for lack of viewers."""
    pub = await publisher(http, broker, camera)
    old = make_jpeg((10, 10, 10))
    await pub.send_bytes(old)
    await asyncio.sleep(broker.settings.offline_after + 0.2)
    return pub, old


async def test_a_snapshot_wakes_a_paused_camera_and_waits_for_its_fresh_frame(start_broker, http):
    """The agent hears of a (snapshot-only) viewer; the snapshot answers with the frame it then sends."""
    broker = await start_broker(snapshot_wait=5.0)
    pub, _ = await paused_camera(http, broker)
    asking = asyncio.ensure_future(http.get(broker.url("/cameras/cam/snapshot.jpg")))
    told = await asyncio.wait_for(pub.receive_json(), 5)
    assert told == {"type": "viewers", "count": 1, "snapshot_only": True}
    fresh = make_jpeg((200, 100, 0))
    await pub.send_bytes(fresh)
    async with await asyncio.wait_for(asyncio.shield(asking), 5) as resp:
        assert resp.status == 200
        assert await resp.read() == fresh
        assert float(resp.headers["X-Frame-Age"]) < 1.0
    await pub.close()


async def test_without_a_fresh_frame_in_time_the_last_one_comes_with_its_age(start_broker, http):
    broker = await start_broker(snapshot_wait=0.3)
    pub, old = await paused_camera(http, broker)
    started = time.monotonic()
    async with http.get(broker.url("/cameras/cam/snapshot.jpg")) as resp:
        assert resp.status == 200
        assert await resp.read() == old
        assert float(resp.headers["X-Frame-Age"]) >= broker.settings.offline_after
    assert 0.25 < time.monotonic() - started < 3
    await pub.close()


async def test_max_age_accepts_the_cached_frame_at_once(start_broker, http):
    broker = await start_broker(snapshot_wait=5.0)
    pub, old = await paused_camera(http, broker)
    started = time.monotonic()
    async with http.get(broker.url("/cameras/cam/snapshot.jpg?max_age=60")) as resp:
        assert await resp.read() == old
    assert time.monotonic() - started < 1
    async with http.get(broker.url("/cameras/cam/snapshot.jpg?max_age=soon")) as resp:
        assert resp.status == 400
    await pub.close()


async def test_snapshot_demand_ends_its_grace_after_the_last_snapshot(start_broker, http):
    """A poller slower than --snapshot-grace lets the camera pause between polls."""
    broker = await start_broker(snapshot_wait=0.0, snapshot_grace=0.5)
    pub, _ = await paused_camera(http, broker)
    async with http.get(broker.url("/cameras/cam/snapshot.jpg")) as resp:
        assert resp.status == 200
    assert await asyncio.wait_for(pub.receive_json(), 5) == {
        "type": "viewers",
        "count": 1,
        "snapshot_only": True,
    }
    started = time.monotonic()
    assert await asyncio.wait_for(pub.receive_json(), 5) == {"type": "viewers", "count": 0}
    assert 0.3 < time.monotonic() - started < 2
    await pub.close()


async def test_a_real_viewer_is_not_snapshot_only(start_broker, http):
    """While someone watches, snapshots add nothing the agent must treat differently."""
    broker = await start_broker()
    pub, _ = await paused_camera(http, broker)
    viewer = await http.ws_connect(broker.ws_url("/cameras/cam/ws"))
    assert await asyncio.wait_for(pub.receive_json(), 5) == {"type": "viewers", "count": 1}
    await pub.send_bytes(make_jpeg())
    async with http.get(broker.url("/cameras/cam/snapshot.jpg")) as resp:
        assert resp.status == 200
    assert await asyncio.wait_for(pub.receive_json(), 5) == {"type": "viewers", "count": 2}
    await viewer.close()
    assert await asyncio.wait_for(pub.receive_json(), 5) == {
        "type": "viewers",
        "count": 1,
        "snapshot_only": True,
    }
    await pub.close()


async def test_a_poll_soon_after_the_camera_paused_still_gets_a_fresh_frame(start_broker, http):
    """A camera at 20 fps that paused a second ago: its last frame is younger than --offline-after,
    but twenty frame intervals old, so the snapshot wakes it and waits for a new frame, as for a
    Home Assistant poll every 10 s against a --snapshot-grace of 5 s."""
    broker = await start_broker(snapshot_wait=5.0, offline_after=5.0)
    pub = await publisher(http, broker, "cam")
    for n in range(10):
        await pub.send_bytes(make_jpeg((n * 20, 10, 10)))
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)
    assert broker.settings.offline_after > 1.0
    asking = asyncio.ensure_future(http.get(broker.url("/cameras/cam/snapshot.jpg")))
    assert await asyncio.wait_for(pub.receive_json(), 5) == {
        "type": "viewers",
        "count": 1,
        "snapshot_only": True,
    }
    fresh = make_jpeg((200, 100, 0))
    await pub.send_bytes(fresh)
    async with await asyncio.wait_for(asyncio.shield(asking), 5) as resp:
        assert await resp.read() == fresh
    await pub.close()


async def test_a_camera_still_capturing_answers_at_once(start_broker, http):
    """Frames arriving at their usual pace: the newest is served without waiting for another."""
    broker = await start_broker(snapshot_wait=5.0)
    pub = await publisher(http, broker, "cam")
    for n in range(5):
        last = make_jpeg((n * 40, 10, 10))
        await pub.send_bytes(last)
        await asyncio.sleep(0.2)
    started = time.monotonic()
    async with http.get(broker.url("/cameras/cam/snapshot.jpg")) as resp:
        assert await resp.read() == last
    assert time.monotonic() - started < 1
    await pub.close()
