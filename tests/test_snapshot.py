"""The snapshot URL: newest JPEG, validators, and the answers for unknown or frameless cameras."""

from __future__ import annotations

import asyncio
import email.utils
import time

from .conftest import make_jpeg, publisher


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
