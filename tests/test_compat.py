"""URLs of other camera servers: mjpg-streamer's `/?action=...`, µStreamer's `/stream` and
`/snapshot`, and `/health`, answered exactly as the broker's own routes answer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from broker.config import ConfigError, Settings

from .conftest import PartReader, make_jpeg, publisher

GARDEN = make_jpeg((10, 200, 10), text="garden")
YARD = make_jpeg((200, 10, 10), text="yard")


async def cameras(http, broker, *frames: tuple[str, bytes]) -> list:
    """Publishers that have each sent one frame (the broker has it once the snapshot shows it)."""
    publishers = []
    for camera, jpeg in frames:
        ws = await publisher(http, broker, camera)
        await ws.send_bytes(jpeg)
        publishers.append(ws)
        for _ in range(100):
            async with http.get(broker.url(f"/cameras/{camera}/snapshot.jpg")) as resp:
                if resp.status == 200:
                    break
            await asyncio.sleep(0.02)
    return publishers


async def first_part(http, url: str) -> bytes:
    async with http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await PartReader(resp).next_part()


async def snapshot(http, url: str) -> tuple[int, bytes, Any]:
    async with http.get(url) as resp:
        return resp.status, await resp.read(), resp.headers


async def test_mjpg_streamer_urls_name_the_camera_with_a_query(broker, http):
    """`/?action=stream&camera=ID` is that camera's MJPEG and `/?action=snapshot&camera=ID` its JPEG."""
    _publishing = await cameras(http, broker, ("garden", GARDEN), ("yard", YARD))
    assert await first_part(http, broker.url("/?action=stream&camera=yard")) == YARD
    assert await first_part(http, broker.url("/?action=stream&camera=garden")) == GARDEN
    status, body, headers = await snapshot(http, broker.url("/?action=snapshot&camera=yard"))
    assert (status, body, headers["Content-Type"]) == (200, YARD, "image/jpeg")
    canonical = await snapshot(http, broker.url("/cameras/yard/snapshot.jpg"))
    assert headers["ETag"] == canonical[2]["ETag"]


async def test_a_single_camera_is_the_default_for_every_compatible_url(broker, http):
    """With one camera, the URLs that name none (mjpg-streamer's and µStreamer's) show it."""
    _publishing = await cameras(http, broker, ("garden", GARDEN))
    for path in ("/?action=stream", "/stream"):
        assert await first_part(http, broker.url(path)) == GARDEN
    for path in ("/?action=snapshot", "/snapshot"):
        status, body, headers = await snapshot(http, broker.url(path))
        assert (status, body, headers["Content-Type"]) == (200, GARDEN, "image/jpeg")
    # µStreamer's URLs take the same query as mjpg-streamer's.
    assert (await snapshot(http, broker.url("/snapshot?camera=garden")))[1] == GARDEN


async def test_several_cameras_need_a_name_or_the_default_camera_setting(start_broker, http):
    """With several cameras a URL that names none is a 400 that says how to name one
    (without naming any: it comes before the access check), unless --default-camera does."""
    broker = await start_broker()
    _publishing = await cameras(http, broker, ("garden", GARDEN), ("yard", YARD))
    status, body, _ = await snapshot(http, broker.url("/stream"))
    assert status == 400
    assert body.decode() == (
        "the broker has several cameras: add camera=ID to the query "
        "(GET /api/cameras lists those you may watch), or start it with --default-camera ID\n"
    )

    configured = await start_broker(default_camera="yard")
    _publishing_too = await cameras(http, configured, ("garden", GARDEN), ("yard", YARD))
    assert await first_part(http, configured.url("/stream")) == YARD
    assert (await snapshot(http, configured.url("/?action=snapshot")))[1] == YARD
    assert (await snapshot(http, configured.url("/?action=snapshot&camera=garden")))[1] == GARDEN


async def test_compatible_urls_answer_errors_as_the_canonical_routes_do(broker, http):
    """No camera yet is a 404, an unknown camera a 404, a bad id a 400, an unknown action a 400."""
    status, body, _ = await snapshot(http, broker.url("/?action=snapshot"))
    assert (status, body) == (404, b"no camera has published yet\n")
    _publishing = await cameras(http, broker, ("garden", GARDEN))
    for path in ("/?action=stream&camera=nope", "/snapshot?camera=nope"):
        status, body, _ = await snapshot(http, broker.url(path))
        assert (status, body) == (404, b"camera 'nope' has never published\n")
    status, body, _ = await snapshot(http, broker.url("/?action=stream&camera=no%20way"))
    assert status == 400
    assert body.startswith(b"invalid camera id")
    status, body, _ = await snapshot(http, broker.url("/?action=record"))
    assert (status, body) == (400, b"unknown action 'record': expected stream or snapshot\n")
    status, _, headers = await snapshot(http, broker.url("/?action=stream&fps=0"))
    assert status == 400  # the MJPEG route's own checks apply
    status, body, headers = await snapshot(http, broker.url("/"))
    assert (status, headers["Content-Type"]) == (200, "text/html")


async def test_health_answers_like_healthz(broker, http):
    """`/health` (what several tools poll) is the same check as `/healthz`."""
    answers = []
    for path in ("/health", "/healthz"):
        async with http.get(broker.url(path)) as resp:
            answers.append((resp.status, await resp.json()))
    assert answers[0] == answers[1]
    assert answers[0][1]["status"] == "ok"


@pytest.mark.parametrize("value", ["two words", "x" * 65, "a/b"])
def test_default_camera_setting_must_be_a_camera_id(value):
    """A --default-camera that no camera could have stops the broker at start."""
    with pytest.raises(ConfigError, match="default_camera="):
        Settings(default_camera=value)
