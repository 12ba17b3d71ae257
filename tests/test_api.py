"""The camera list, the health check and the static page."""

from __future__ import annotations

import asyncio

from .conftest import make_jpeg, publisher


async def test_camera_list_reports_state_size_rates_and_viewers(broker, http):
    pub = await publisher(http, broker, "garden")
    await pub.send_json({"type": "hello", "agent": "test"})
    viewer = await http.ws_connect(broker.ws_url("/cameras/garden/ws"))
    frame = make_jpeg(size=(320, 240), noise=1)
    for _ in range(20):
        await pub.send_bytes(frame)
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.6)  # let the rate meter take a reading over the frames
    async with http.get(broker.url("/api/cameras")) as resp:
        assert resp.status == 200
        (camera,) = (await resp.json())["cameras"]
    assert camera["id"] == "garden"
    assert camera["online"] is True
    assert camera["publisher"] is True
    assert camera["frames"] == 20
    assert (camera["width"], camera["height"]) == (320, 240)
    assert 0 <= camera["last_frame_age"] < 2
    assert camera["viewers"] == {"ws": 1, "mjpeg": 0}
    assert camera["agent"] == {"agent": "test"}
    assert camera["fps"] >= 0 and camera["bytes_per_second"] >= 0
    await viewer.close()


async def test_camera_list_is_sorted_and_excludes_viewer_only_ids(broker, http):
    for camera in ("zeta", "alpha"):
        async with http.post(broker.url(f"/cameras/{camera}/publish"), data=make_jpeg(), headers=broker.auth):
            pass
    viewer = await http.ws_connect(broker.ws_url("/cameras/typo/ws"))
    async with http.get(broker.url("/api/cameras")) as resp:
        assert [c["id"] for c in (await resp.json())["cameras"]] == ["alpha", "zeta"]
    await viewer.close()


async def test_healthz(broker, http):
    async with http.get(broker.url("/healthz")) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["status"] == "ok"


async def test_root_serves_the_viewer_page(broker, http):
    async with http.get(broker.url("/")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/html")
        assert "<canvas" in await resp.text() or "canvas" in await resp.text()


async def test_static_files_cannot_escape_their_folder(broker, http, tmp_path):
    for path in ("/static/../setup.cfg", "/static/%2e%2e/setup.cfg", "/static/..%2fsetup.cfg"):
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        response = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert response.split(b" ", 2)[1] in (b"403", b"404"), (path, response[:80])
        assert b"[metadata]" not in response
