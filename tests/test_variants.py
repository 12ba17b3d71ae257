"""Smaller sizes made by the broker: snapped widths, sizes read from the JPEGs, made once, bounded."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from broker.app_keys import HUB
from broker.frame import Frame
from broker.jpeg import jpeg_dimensions
from broker.variants import Variant

from .conftest import TOKEN, PartReader, jpeg_claiming, make_jpeg, next_binary, peak_rss, publisher
from .mux_support import MuxClient

HD = (1280, 720)


@pytest.mark.parametrize(
    ("asked", "quality", "width", "snapped_quality"),
    [(1, None, 160, 70), (300, None, 160, 70), (320, 90, 320, 85), (700, 55, 640, 50), (50000, 1, 1280, 30)],
)
def test_widths_snap_down_to_the_fixed_set(asked, quality, width, snapped_quality):
    """A client cannot make the broker encode arbitrary sizes: widths and qualities snap down."""
    assert Variant.snapped(asked, quality) == Variant(width, snapped_quality)


@pytest.mark.parametrize("width", [0, -5, 70000])
def test_widths_out_of_range_are_refused(width):
    with pytest.raises(ValueError, match="width"):
        Variant.snapped(width)


async def test_a_subscription_gets_its_snapped_width_read_from_the_jpeg(broker, http):
    """width 700 gives 640 (never more than asked), 300 gives 160; the height keeps the shape;
    a width at least the camera's own gives full size: never upscaled."""
    pub = await publisher(http, broker, "hd")
    await pub.send_bytes(make_jpeg(size=HD, noise=1))
    client = await MuxClient.connect(http, broker.ws_url("/ws"))
    for asked, expected in ((700, (640, 360)), (300, (160, 90)), (1280, HD), (5000, HD)):
        subscribed = await client.subscribe("hd", width=asked)
        frame = await client.frame(subscribed["stream"])
        assert jpeg_dimensions(frame.jpeg) == expected
        assert subscribed["width"] == (expected[0] if expected != HD else None)


async def test_a_size_asked_before_the_camera_is_known_never_claims_a_size_it_is_not(broker, http):
    """A subscription made before the first frame asks for 960 at quality 30; the camera turns
    out 640 wide: its frames come as published, and their header says full size (0, 0).
    When the camera later sends wider frames, they are made at 960, and the header says so."""
    client = await MuxClient.connect(http, broker.ws_url("/ws"))
    subscribed = await client.subscribe("later", width=960, quality=30)
    assert (subscribed["width"], subscribed["quality"]) == (960, 30)
    pub = await publisher(http, broker, "later")
    small = make_jpeg(size=(640, 480), noise=1)
    await pub.send_bytes(small)
    frame = await client.frame(subscribed["stream"])
    assert (frame.width, frame.quality, frame.jpeg) == (0, 0, small)
    await pub.send_bytes(make_jpeg(size=HD, noise=2))
    frame = await client.frame(subscribed["stream"])
    assert (frame.width, frame.quality, jpeg_dimensions(frame.jpeg)) == (960, 30, (960, 540))
    await pub.send_bytes(small)  # the camera narrows again
    frame = await client.frame(subscribed["stream"])
    assert (frame.width, frame.quality, frame.jpeg) == (0, 0, small)
    await client.close()


@pytest.mark.parametrize("route", ["ws", "mjpeg"])
async def test_per_camera_routes_take_width(broker, http, route):
    """`?width=320` on the camera's WebSocket and MJPEG stream gives 320-wide JPEGs."""
    pub = await publisher(http, broker, "hd")
    await pub.send_bytes(make_jpeg(size=HD, noise=1))
    if route == "ws":
        viewer = await http.ws_connect(broker.ws_url("/cameras/hd/ws?width=320&quality=50"))
        first = await next_binary(viewer)
        await pub.send_bytes(make_jpeg(size=HD, noise=2))
        second = await next_binary(viewer)
    else:
        response = await http.get(broker.url("/cameras/hd/mjpeg?width=320"))
        parts = PartReader(response)
        first = await parts.next_part()
        await pub.send_bytes(make_jpeg(size=HD, noise=2))
        second = await parts.next_part()
        while second == first:  # a keep-alive repeat
            second = await parts.next_part()
        response.close()
    assert jpeg_dimensions(first) == jpeg_dimensions(second) == (320, 180)
    async with http.get(broker.url("/api/cameras/hd")) as response:
        detail = await response.json()
    (entry,) = detail["viewer_list"]
    assert entry["width"] == 320
    (variant,) = detail["variants"]
    assert (variant["width"], variant["viewers"], variant["frames_failed"]) == (320, 1, 0)
    assert variant["frames_made"] >= 2


@pytest.mark.parametrize("query", ["width=wide", "width=0", "width=320&quality=0", "quality=50"])
async def test_bad_width_or_quality_is_400(broker, http, query):
    pub = await publisher(http, broker, "hd")
    await pub.send_bytes(make_jpeg())
    for route in ("mjpeg", "snapshot.jpg"):
        async with http.get(broker.url(f"/cameras/hd/{route}?{query}")) as response:
            assert response.status == 400
            assert "width" in await response.text() or "quality" in await response.text()


async def test_each_variant_is_made_once_per_frame_whatever_the_number_of_viewers(broker, http):
    """Two /ws subscribers, a WebSocket and an MJPEG viewer of the 320 variant: each source frame
    is shrunk once, and all of them get the same bytes; nobody watching, nothing is made."""
    pub = await publisher(http, broker, "hd")
    await pub.send_bytes(make_jpeg(size=HD, noise=1))
    clients = [await MuxClient.connect(http, broker.ws_url("/ws")) for _ in range(2)]
    streams = [(await client.subscribe("hd", width=320))["stream"] for client in clients]
    for client, stream in zip(clients, streams, strict=True):
        await client.frame(stream)  # the newest frame, at once
    ws = await http.ws_connect(broker.ws_url("/cameras/hd/ws?width=320"))
    mjpeg = await http.get(broker.url("/cameras/hd/mjpeg?width=320"))
    parts = PartReader(mjpeg)
    await next_binary(ws)
    part = await parts.next_part()
    (feed,) = broker.app[HUB].channel("hd").variants.feeds()
    made_before = feed.made
    for i in range(2, 7):
        jpeg = make_jpeg(size=HD, noise=i)
        await pub.send_bytes(jpeg)
        got = [(await client.frame(stream)).jpeg for client, stream in zip(clients, streams, strict=True)]
        got.append(await next_binary(ws))
        previous = part
        while part == previous:  # MJPEG keep-alives repeat the last part
            part = await parts.next_part()
        got.append(part)
        assert len(set(got)) == 1 and jpeg_dimensions(got[0]) == (320, 180)
    assert feed.made - made_before == 5

    for client in clients:
        await client.close()
    await ws.close()
    mjpeg.close()

    async def nobody_watches() -> None:
        while broker.app[HUB].channel("hd").viewer_count:
            await asyncio.sleep(0.02)

    await asyncio.wait_for(nobody_watches(), 5)
    made = feed.made
    await pub.send_bytes(make_jpeg(size=HD, noise=9))
    await pub.send_bytes(make_jpeg(size=HD, noise=10))
    async with http.get(broker.url("/api/cameras")) as response:
        assert (await response.json())["cameras"][0]["frames"] == 8
    # A new viewer gets the variant of the newest frame, the only one made since the others left.
    client = await MuxClient.connect(http, broker.ws_url("/ws"))
    stream = (await client.subscribe("hd", width=320))["stream"]
    assert (await client.frame(stream)).seq == 8
    assert feed.made == made + 1


async def test_a_variant_that_falls_behind_skips_to_the_newest_source_frame(broker, http):
    """Three source frames while one is being shrunk: the middle one is never made."""
    pub = await publisher(http, broker, "hd")
    await pub.send_bytes(make_jpeg(size=HD, noise=1))
    client = await MuxClient.connect(http, broker.ws_url("/ws"))
    stream = (await client.subscribe("hd", width=160))["stream"]
    await client.frame(stream)
    (feed,) = broker.app[HUB].channel("hd").variants.feeds()
    jpegs = {seq: make_jpeg(size=HD, noise=seq) for seq in (11, 12, 13)}
    for seq, jpeg in jpegs.items():  # no await in between: 11 is still being made, 12 waits, 13 replaces it
        feed.source(Frame("hd", seq, jpeg, time.time(), time.monotonic()))
    assert feed.skipped == 1
    assert (await client.frame(stream)).seq == 11
    assert (await client.frame(stream)).seq == 13


async def test_variants_per_camera_are_bounded(start_broker, http):
    """At --max-variants-per-camera, a new width gets the nearest live one while all are watched,
    and takes the room of one nobody watches."""
    broker = await start_broker(max_variants_per_camera=2)
    pub = await publisher(http, broker, "hd")
    await pub.send_bytes(make_jpeg(size=HD, noise=1))
    client = await MuxClient.connect(http, broker.ws_url("/ws"))
    await client.subscribe("hd", width=160)
    other = await MuxClient.connect(http, broker.ws_url("/ws"))
    assert (await other.subscribe("hd", width=320))["width"] == 320
    third = await MuxClient.connect(http, broker.ws_url("/ws"))
    assert (await third.subscribe("hd", width=960))["width"] == 320  # nearest of 160 and 320
    await client.send(type="unsubscribe", camera="hd")
    await client.reply("unsubscribed")
    assert (await third.subscribe("hd", width=960))["width"] == 960
    widths = sorted(feed.variant.width for feed in broker.app[HUB].channel("hd").variants.feeds())
    assert widths == [320, 960]


async def test_a_frame_that_cannot_be_shrunk_is_skipped_with_one_warning(broker, http, caplog):
    """A frame with JPEG markers but no decodable picture: one warning naming the camera, and the
    next good frame is shrunk as usual."""
    pub = await publisher(http, broker, "hd")
    await pub.send_bytes(make_jpeg(size=HD, noise=1))
    client = await MuxClient.connect(http, broker.ws_url("/ws"))
    stream = (await client.subscribe("hd", width=320))["stream"]
    assert (await client.frame(stream)).seq == 1
    broken = b"\xff\xd8\xff\xc0\x00\x11\x08\x02\xd0\x05\x00\x03" + b"\x00" * 200 + b"\xff\xd9"
    feed = broker.app[HUB].channel("hd").variants.feeds()[0]
    for _ in range(2):
        failed = feed.failed
        await pub.send_bytes(broken)
        while feed.failed == failed:
            await asyncio.sleep(0.01)
    await pub.send_bytes(make_jpeg(size=HD, noise=2))
    frame = await client.frame(stream)
    assert frame.seq == 4 and jpeg_dimensions(frame.jpeg) == (320, 180)
    warnings = [r for r in caplog.records if r.name == "broker.variants" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "camera hd" in warnings[0].getMessage()


async def test_a_frame_claiming_a_shape_no_camera_has_is_not_decoded_to_make_a_size(run_broker, http):
    """A 2 kB JPEG whose header claims 1300x51600 pixels (reduced-size decoding cannot help at
    1280 wide): no 1280-wide copy is made of it (one warning naming --max-resize-pixels), the
    broker's memory stays where it was, and a real frame after it is made as usual."""
    broker = await run_broker(env={"FRAMEBROKER_PUBLISH_TOKEN": TOKEN})
    auth = {"Authorization": f"Bearer {TOKEN}"}
    publish, snapshot = (
        broker.url("/cameras/tall/publish"),
        broker.url("/cameras/tall/snapshot.jpg?width=1280"),
    )
    async with http.post(publish, data=make_jpeg(size=(1600, 1200)), headers=auth) as resp:
        assert resp.status == 204
    async with http.get(snapshot) as resp:  # the pool's threads and Pillow are warm now
        assert jpeg_dimensions(await resp.read()) == (1280, 960)
    before = peak_rss(broker.proc.pid)
    async with http.post(
        publish, data=jpeg_claiming(make_jpeg(size=(320, 240)), 1300, 51600), headers=auth
    ) as resp:
        assert resp.status == 204
    async with http.get(snapshot) as resp:
        await resp.read()
    grown = peak_rss(broker.proc.pid) - before
    assert grown < 50 * 1024 * 1024, f"peak RSS grew by {grown / 2**20:.0f} MiB"
    async with http.post(publish, data=make_jpeg(size=(1600, 1200), noise=1), headers=auth) as resp:
        assert resp.status == 204
    async with http.get(snapshot) as resp:
        assert jpeg_dimensions(await resp.read()) == (1280, 960)
    await asyncio.sleep(0.2)
    broker.proc.terminate()
    log = await broker.rest_of_log()
    assert log.count("max_resize_pixels=") == 1, log[-2000:]
    assert " ERROR " not in log and "Traceback" not in log


async def test_an_mjpeg_viewer_of_a_variant_sees_no_signal_at_its_size(start_broker, http):
    """While the camera is offline an MJPEG viewer at width 320 gets a 320-wide no-signal picture."""
    broker = await start_broker(offline_after=0.5)
    pub = await publisher(http, broker, "hd")
    jpeg = make_jpeg(size=HD, noise=1)
    await pub.send_bytes(jpeg)
    response = await http.get(broker.url("/cameras/hd/mjpeg?width=320"))
    parts = PartReader(response)
    first = await parts.next_part()
    await pub.close()
    part = first
    while part == first:  # keep-alive repeats until the no-signal picture is made
        part = await parts.next_part()
    assert jpeg_dimensions(part) == (320, 180)
    response.close()


async def test_without_pillow_a_width_is_answered_clearly(run_broker, http):
    """A broker where Pillow cannot be imported: `?width=` gets 501 saying so, a /ws subscription
    with a width gets an error, and full size works as before."""
    broker = await run_broker("--publish-token", "t0ken-for-this-test", blocked=("PIL",))
    headers = {"Authorization": "Bearer t0ken-for-this-test"}
    async with http.post(broker.url("/cameras/hd/publish"), data=make_jpeg(), headers=headers) as response:
        assert response.status == 204
    for route in ("mjpeg", "snapshot.jpg"):
        async with http.get(broker.url(f"/cameras/hd/{route}?width=320")) as response:
            assert response.status == 501
            assert "Pillow" in await response.text()
    client = await MuxClient.connect(http, broker.url("/ws"))
    await client.send(type="subscribe", camera="hd", width=320)
    assert "Pillow" in (await client.reply("error", "hd"))["error"]
    stream = (await client.subscribe("hd"))["stream"]
    assert (await client.frame(stream)).seq == 1
    await client.close()


async def test_a_snapshot_of_a_size_is_made_once_and_has_its_own_etag(broker, http):
    """`snapshot.jpg?width=320`: the 320-wide picture, with an ETag of its own (the width is
    part of it) that gives 304 until the next frame; five requests at once make it once."""
    pub = await publisher(http, broker, "hd")
    await pub.send_bytes(make_jpeg(size=HD, noise=1))
    url = broker.url("/cameras/hd/snapshot.jpg")
    async with http.get(url) as response:
        full_etag = response.headers["ETag"]
    answers = await asyncio.gather(*(http.get(url, params={"width": "320"}) for _ in range(5)))
    bodies = [await answer.read() for answer in answers]
    etags = {answer.headers["ETag"] for answer in answers}
    assert len(set(bodies)) == 1 and jpeg_dimensions(bodies[0]) == (320, 180)
    assert len(etags) == 1 and etags != {full_etag}
    (etag,) = etags
    assert "w320q70" in etag and answers[0].headers["X-Frame-Seq"] == "1"
    (feed,) = broker.app[HUB].channel("hd").variants.feeds()
    assert feed.made == 1

    async with http.get(url, params={"width": "320"}, headers={"If-None-Match": etag}) as response:
        assert response.status == 304
        assert response.headers["ETag"] == etag
    async with http.get(url, params={"width": "640"}, headers={"If-None-Match": etag}) as response:
        assert response.status == 200  # another size, another picture
        assert jpeg_dimensions(await response.read()) == (640, 360)
    await pub.send_bytes(make_jpeg(size=HD, noise=2))

    async def next_frame() -> None:
        while broker.app[HUB].channel("hd").latest.seq < 2:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(next_frame(), 5)
    async with http.get(url, params={"width": "320"}, headers={"If-None-Match": etag}) as response:
        assert response.status == 200
        assert response.headers["X-Frame-Seq"] == "2" and response.headers["ETag"] != etag
