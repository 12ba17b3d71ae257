"""Prometheus metrics and the per-viewer detail of a camera, as an operator reads them."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .access_support import GARDEN_TOKEN, basic, family_config
from .conftest import make_jpeg, next_binary, publisher
from .test_viewer import stalled_viewer


async def scrape(http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> dict:
    """{(metric sample name, labels as a sorted tuple): value} from /metrics."""
    async with http.get(url, headers=headers or {}) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_count_frames_viewers_and_rejections(broker, http):
    """Per camera: received, bytes, sent, viewers, publisher, age; broker-wide: rejections, process."""
    pub = await publisher(http, broker, "garden")
    viewer = await http.ws_connect(broker.ws_url("/cameras/garden/ws"))
    frames = [make_jpeg((n, 0, 0)) for n in range(5)]
    for frame in frames:
        await pub.send_bytes(frame)
        assert await next_binary(viewer) == frame
    async with http.get(broker.url("/cameras/garden/ws"), headers={"Host": "evil.example"}) as resp:
        assert resp.status == 421
    metrics = await scrape(http, broker.url("/metrics"))
    camera = (("camera", "garden"),)
    assert metrics[("framebroker_frames_received_total", camera)] == 5
    assert metrics[("framebroker_bytes_received_total", camera)] == sum(map(len, frames))
    assert metrics[("framebroker_frames_sent_total", camera)] == 5
    assert metrics[("framebroker_viewers", (("camera", "garden"), ("kind", "ws")))] == 1
    assert metrics[("framebroker_publisher_connected", camera)] == 1
    assert 0 <= metrics[("framebroker_frame_age_seconds", camera)] < 10
    assert metrics[("framebroker_rejected_total", (("reason", "host"),))] == 1
    assert metrics[("framebroker_ingest_to_write_seconds_count", ())] == 5
    assert ("process_resident_memory_bytes", ()) in metrics
    assert metrics[("framebroker_connections", ())] >= 2
    await viewer.close()
    await asyncio.sleep(0.1)
    metrics = await scrape(http, broker.url("/metrics"))
    assert metrics[("framebroker_frames_sent_total", camera)] == 5  # a viewer that left still counts
    await pub.close()


async def test_metrics_show_only_the_cameras_one_may_watch(start_broker, http, tmp_path):
    """/metrics follows the camera list's rules: 401 without credentials, bob sees no garden series."""
    broker = await start_broker(config=family_config(tmp_path))
    for camera, token in (("garden", GARDEN_TOKEN), ("door", broker.token)):
        async with http.post(
            broker.url(f"/cameras/{camera}/publish"),
            data=make_jpeg(),
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            assert resp.status == 204
    async with http.get(broker.url("/metrics")) as resp:
        assert resp.status == 401
    bob = await scrape(http, broker.url("/metrics"), basic("bob"))
    cameras = {dict(labels).get("camera") for _, labels in bob} - {None}
    assert cameras == {"door"}


async def test_camera_detail_lists_each_viewer_and_its_lag(broker, http):
    """/api/cameras/{id}: kind, address, since, frames written and skipped, lag in frames, per viewer."""
    pub = await publisher(http, broker, "garden")
    await pub.send_bytes(make_jpeg())
    ws = await http.ws_connect(broker.ws_url("/cameras/garden/ws"))
    await next_binary(ws)
    mjpeg = await http.get(broker.url("/cameras/garden/mjpeg"))
    await mjpeg.content.read(100)
    async with http.get(broker.url("/api/cameras/garden")) as resp:
        detail = await resp.json()
    assert detail["id"] == "garden" and detail["viewers"] == {"ws": 1, "mjpeg": 1}
    kinds = sorted(v["kind"] for v in detail["viewer_list"])
    assert kinds == ["mjpeg", "ws"]
    for entry in detail["viewer_list"]:
        assert entry["address"] == "127.0.0.1"
        assert entry["frames_written"] >= 1 and entry["frames_skipped"] == 0
        assert entry["lag_frames"] == 0
        assert entry["connected_since"] > 1_700_000_000
    async with http.get(broker.url("/api/cameras/nope")) as resp:
        assert resp.status == 404
    mjpeg.close()
    await ws.close()
    await pub.close()


async def test_a_stalled_viewer_shows_its_skips_and_lag(start_broker, http):
    """A viewer that stops reading: newest wins skips frames for it; the detail says how far behind it is."""
    broker = await start_broker(viewer_send_timeout=30.0, heartbeat=30.0)
    pub = await publisher(http, broker, "garden")
    stalled = await asyncio.to_thread(stalled_viewer, broker.port, "/cameras/garden/ws")
    try:
        for n in range(12):
            await pub.send_bytes(make_jpeg((n * 20, 100, 50), size=(1280, 720), noise=n + 1))
            await asyncio.sleep(0.05)
        async with http.get(broker.url("/api/cameras/garden")) as resp:
            (entry,) = (await resp.json())["viewer_list"]
        assert entry["frames_skipped"] >= 1 and entry["lag_frames"] >= 1
        metrics = await scrape(http, broker.url("/metrics"))
        assert metrics[("framebroker_frames_skipped_total", (("camera", "garden"),))] >= 1
    finally:
        stalled.close()
        await pub.close()


async def test_refusals_are_counted_by_reason(start_broker, http):
    """Caps, a full camera table, bad and oversized frames, bad /ws requests: each has its reason."""
    broker = await start_broker(max_cameras=1, max_viewers_per_camera=1, max_frame_bytes=50_000)
    pub = await publisher(http, broker, "garden")
    await pub.send_bytes(b"not a jpeg")
    viewer = await http.ws_connect(broker.ws_url("/cameras/garden/ws"))
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await http.ws_connect(broker.ws_url("/cameras/garden/ws"))
    async with http.post(broker.url("/cameras/door/publish"), data=make_jpeg(), headers=broker.auth) as r:
        assert r.status == 503  # max_cameras
    big = make_jpeg(size=(1280, 720), noise=1)
    async with http.post(broker.url("/cameras/garden/publish"), data=big, headers=broker.auth) as r:
        assert r.status == 413
    grid = await http.ws_connect(broker.ws_url("/ws"))
    await grid.send_str("{not json")
    assert (await grid.receive_json())["type"] == "error"
    metrics = await scrape(http, broker.url("/metrics"))
    counted = {
        dict(labels)["reason"]: value
        for (name, labels), value in metrics.items()
        if name == "framebroker_rejected_total"
    }
    for reason in ("bad_frame", "viewers_per_camera", "cameras", "frame_too_large", "bad_message"):
        assert counted.get(reason, 0) >= 1, (reason, counted)
    for ws in (grid, viewer, pub):
        await ws.close()


async def test_a_bad_post_to_a_camera_not_known_yet_is_counted_and_makes_no_camera(broker, http):
    """A POST that is not a complete JPEG, to a camera that never published: 415, no camera is
    made for it, and the refusal still counts (bad_frame)."""
    async with http.post(
        broker.url("/cameras/newcam/publish"), data=b"\xff\xd8 cut", headers=broker.auth
    ) as r:
        assert r.status == 415
    async with http.get(broker.url("/api/cameras")) as resp:
        assert (await resp.json())["cameras"] == []
    metrics = await scrape(http, broker.url("/metrics"))
    assert metrics[("framebroker_rejected_total", (("reason", "bad_frame"),))] == 1
