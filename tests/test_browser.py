"""The viewer page (static/) in a real browser: Debian's Chromium driven by Playwright."""

import asyncio
import re
import time

import cv2
import numpy as np
import pytest
from playwright.async_api import expect

from tests.browser_support import (
    BLUE,
    GREEN,
    OUTPUT_DIR,
    RED,
    STATIC_DIR,
    Camera,
    eventually,
)

VIEWER_SOCKET = re.compile(r"/cameras/[^/]+/ws")


@pytest.fixture
async def broker(start_broker):
    """A broker serving this checkout's static/ (whatever the default would find)."""
    return await start_broker(static_dir=STATIC_DIR)


def camera_page(broker, camera_id: str) -> str:
    return broker.url("/") + f"#/cameras/{camera_id}"


async def viewer_count(http, broker, camera_id: str) -> dict:
    async with http.get(broker.url("/api/cameras")) as response:
        cameras = (await response.json())["cameras"]
    return next(camera["viewers"] for camera in cameras if camera["id"] == camera_id)


async def test_grid_lists_cameras_and_follows_their_pictures(broker, viewer, http):
    """Each camera gets a tile whose canvas shows that camera's newest picture."""
    page = viewer.page
    async with (
        Camera(http, broker, "garden", RED) as garden,
        Camera(http, broker, "yard", BLUE),
    ):
        await page.goto(broker.url("/"))
        await viewer.wait_tile("garden", state="live", mode="ws", online="true", frames="1")
        await viewer.wait_tile("yard", state="live", frames="1")
        tiles = await page.eval_on_selector_all(".grid .tile", "ts => ts.map(t => t.dataset.camera)")
        assert tiles == ["garden", "yard"]
        await viewer.wait_canvas_colour("garden", RED)
        await viewer.wait_canvas_colour("yard", BLUE)

        garden.colour = GREEN
        await viewer.wait_canvas_colour("garden", GREEN)
        await viewer.wait_canvas_colour("yard", BLUE)

        stats = page.locator(f"{viewer.tile('garden')} .stats")
        await expect(stats).to_contain_text("WebSocket")
        await expect(stats).to_contain_text("320\N{MULTIPLICATION SIGN}240")
        await expect(stats).to_contain_text(re.compile(r"\d+\.\d fps\s+\S+\s+\d+ kB/s\s+\d+ ms old"))
        await viewer.screenshot("grid.png")

        await page.set_viewport_size({"width": 390, "height": 844})
        assert await page.evaluate("document.documentElement.scrollWidth <= innerWidth")
        await viewer.screenshot("grid-phone.png")


async def test_large_view_switches_cameras_by_link_keyboard_and_back_button(broker, viewer, http):
    """The hash names the camera shown large; links, Enter and history all move between views."""
    page = viewer.page
    async with Camera(http, broker, "garden", RED), Camera(http, broker, "yard", BLUE):
        await page.goto(broker.url("/"))
        await viewer.wait_tile("yard", frames="1")
        await page.focus(f"{viewer.tile('yard')} a.open")
        await page.keyboard.press("Enter")
        await page.wait_for_url(re.compile(r"#/cameras/yard$"))
        # The URL changes before the page hears of it (hashchange comes as a task of its own).
        await expect(page.locator(".tile")).to_have_count(1)
        await expect(page).to_have_title("yard · framebroker")
        await viewer.wait_canvas_colour("yard", BLUE)
        await viewer.screenshot("camera.png")

        await page.click('#camera-nav a[data-camera="garden"]')
        await page.wait_for_url(re.compile(r"#/cameras/garden$"))
        await expect(page.locator(".tile")).to_have_count(1)
        await viewer.wait_canvas_colour("garden", RED)

        await page.go_back()
        await viewer.wait_canvas_colour("yard", BLUE)
        await page.keyboard.press("Escape")
        await page.wait_for_url(re.compile(r"#/$"))
        await viewer.wait_tile("garden", frames="1")
        await viewer.wait_tile("yard", frames="1")
        # Focus returns to the tile the user came from.
        focused = await page.evaluate("document.activeElement.closest('.tile')?.dataset.camera")
        assert focused == "yard"

        # A click anywhere on a tile's picture opens it too.
        box = await page.locator(f"{viewer.tile('garden')} .media").bounding_box()
        await page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        await page.wait_for_url(re.compile(r"#/cameras/garden$"))


async def test_controls_download_fullscreen_and_pause(broker, viewer, http):
    """The controls are labelled buttons (and a link) that do what they say."""
    page = viewer.page
    tile = viewer.tile("garden")
    async with Camera(http, broker, "garden", RED):
        await page.goto(camera_page(broker, "garden"))
        await viewer.wait_tile("garden", state="live", frames="1")
        labels = await page.eval_on_selector_all(
            f"{tile} .control", "cs => cs.map(c => c.getAttribute('aria-label'))"
        )
        assert labels == [
            "Download a snapshot of garden",
            "Show garden full screen",
            "Pause garden",
        ]

        async with page.expect_download() as download_info:
            await page.click(f"{tile} [data-action=snapshot]")
        download = await download_info.value
        assert re.fullmatch(r"garden-[\dT-]+\.jpg", download.suggested_filename)
        assert (await download.path()).read_bytes()[:2] == b"\xff\xd8"

        await page.click(f"{tile} [data-action=fullscreen]")
        await page.wait_for_function(f"document.fullscreenElement?.matches('{tile}')")
        await expect(page.locator(f"{tile} [data-action=fullscreen]")).to_have_attribute(
            "aria-pressed", "true"
        )
        await page.click(f"{tile} [data-action=fullscreen]")
        await page.wait_for_function("document.fullscreenElement === null")

        assert (await viewer_count(http, broker, "garden"))["ws"] == 1
        await page.click(f"{tile} [data-action=pause]")
        await viewer.wait_tile("garden", state="paused")
        await expect(page.locator(f"{tile} [data-action=pause]")).to_have_attribute("aria-pressed", "true")

        async def closed():
            """the paused page's WebSocket is closed"""
            return (await viewer_count(http, broker, "garden"))["ws"] == 0

        await eventually(closed)
        frames = await viewer.frames("garden")
        await page.click(f"{tile} [data-action=pause]")
        await viewer.wait_tile("garden", state="live", frames=str(frames + 1))


async def test_hidden_tab_stops_streaming(broker, viewer, http):
    """A hidden tab closes its WebSocket and opens it again when shown."""
    async with Camera(http, broker, "garden", RED):
        await viewer.page.goto(broker.url("/"))
        await viewer.wait_tile("garden", state="live", frames="1")

        await viewer.set_hidden(True)
        await viewer.wait_tile("garden", state="hidden")

        async def closed():
            """the hidden page's WebSocket is closed"""
            return (await viewer_count(http, broker, "garden"))["ws"] == 0

        await eventually(closed)
        frames = await viewer.frames("garden")

        await viewer.set_hidden(False)
        await viewer.wait_tile("garden", state="live", frames=str(frames + 1))
        assert (await viewer_count(http, broker, "garden"))["ws"] == 1


async def test_offline_camera_is_shown_offline(start_broker, viewer, http):
    """A camera whose publisher left gets an 'offline' badge and a dimmed picture."""
    broker = await start_broker(static_dir=STATIC_DIR, offline_after=0.5)
    page = viewer.page
    tile = viewer.tile("garden")
    async with Camera(http, broker, "garden", RED):
        await page.goto(broker.url("/"))
        await viewer.wait_tile("garden", online="true", frames="1")
        assert await page.is_hidden(f"{tile} .badge")

    await viewer.wait_tile("garden", online="false")
    assert await page.is_visible(f"{tile} .badge")
    assert await page.get_attribute('#camera-nav a[data-camera="garden"]', "class") == "offline"
    assert await page.eval_on_selector(f"{tile} canvas", "c => getComputedStyle(c).filter") != "none"
    await viewer.screenshot("offline.png")

    async with Camera(http, broker, "garden", GREEN):
        await viewer.wait_tile("garden", online="true")
        await viewer.wait_canvas_colour("garden", GREEN)
        assert await page.is_hidden(f"{tile} .badge")


async def test_offline_badge_stays_clear_of_the_stats_on_a_400_px_tile(start_broker, viewer, http):
    """On a 400 px tile the OFFLINE badge and the stats box do not overlap, and the
    connection dot of an offline camera is red, not green; back online it is green again."""
    broker = await start_broker(static_dir=STATIC_DIR, offline_after=0.5)
    page = viewer.page
    await page.set_viewport_size({"width": 432, "height": 700})  # 400 px of tile, 16 px padding each side
    tile = viewer.tile("garden")
    dot = f"{tile} [data-field='connection']"
    dot_colour = "el => getComputedStyle(el, '::before').backgroundColor"
    async with Camera(http, broker, "garden", RED):
        await page.goto(broker.url("/"))
        await viewer.wait_tile("garden", state="live", online="true", frames="1")
        assert (await page.locator(tile).bounding_box())["width"] == 400
        assert await page.eval_on_selector(dot, dot_colour) == "rgb(76, 195, 138)"  # --online

    await viewer.wait_tile("garden", state="live", online="false")
    await expect(page.locator(f"{tile} .stats")).to_contain_text("old")
    badge = await page.locator(f"{tile} .badge").bounding_box()
    stats = await page.locator(f"{tile} .stats").bounding_box()
    media = await page.locator(f"{tile} .media").bounding_box()
    assert badge["x"] + badge["width"] <= stats["x"], (badge, stats)
    assert stats["x"] + stats["width"] <= media["x"] + media["width"] + 0.5
    assert await page.eval_on_selector(dot, dot_colour) == "rgb(198, 40, 40)"  # --offline
    await viewer.screenshot("offline-400px.png")


async def test_link_to_a_missing_camera_says_so_and_lists_the_cameras(broker, viewer, http):
    """`#/cameras/nope` says that no such camera exists and links to the ones that do,
    opening no stream; once a camera of that name publishes, it is shown."""
    page = viewer.page
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    async with Camera(http, broker, "garden", RED), Camera(http, broker, "yard", BLUE):
        await page.goto(camera_page(broker, "nope"))
        heading = page.locator("main h1")
        await expect(heading).to_have_text("No camera “nope”")
        await expect(page.locator("main .missing")).to_contain_text("This broker has no camera called")
        links = page.locator("main .camera-list a")
        await expect(links).to_have_text(["garden", "yard"])
        assert await page.title() == "No such camera · framebroker"
        assert await page.locator(".tile").count() == 0
        await viewer.screenshot("no-such-camera.png")

        await links.nth(1).click()
        await page.wait_for_url(re.compile(r"#/cameras/yard$"))
        await viewer.wait_canvas_colour("yard", BLUE)
        await page.go_back()
        await expect(heading).to_have_text(re.compile("^No camera"))
        assert not any("/cameras/nope/" in url for url in sockets), sockets
        async with Camera(http, broker, "nope", GREEN):
            await viewer.wait_canvas_colour("nope", GREEN)  # within a refresh of the camera list


async def test_recovers_after_broker_restart(start_broker, viewer, http):
    """When the broker restarts on the same port, the page reconnects by itself."""
    broker = await start_broker(static_dir=STATIC_DIR)
    viewer.allow_network_errors = True
    async with Camera(http, broker, "garden", RED):
        await viewer.page.goto(camera_page(broker, "garden"))
        await viewer.wait_canvas_colour("garden", RED)

    port = broker.port  # a stopped broker no longer knows its port
    await broker.stop()
    await viewer.wait_tile("garden", state="reconnecting")
    broker = await start_broker(port=port, static_dir=STATIC_DIR)
    async with Camera(http, broker, "garden", BLUE):
        await viewer.wait_canvas_colour("garden", BLUE, timeout=20)
        await viewer.wait_tile("garden", state="live", mode="ws")


async def test_falls_back_to_mjpeg_when_upgrades_fail_and_climbs_back(broker, viewer, http):
    """With WebSocket upgrades refused the picture comes over MJPEG, until WebSockets work again."""
    page = viewer.page
    tile = viewer.tile("garden")
    viewer.allow_network_errors = True
    blocked = True

    async def proxy(route):
        if blocked:
            await route.close()
        else:
            route.connect_to_server()

    await page.route_web_socket(VIEWER_SOCKET, proxy)
    # A fake clock (that still runs) lets the test skip ahead to the periodic retry.
    await page.clock.install()
    async with Camera(http, broker, "garden", RED) as garden:
        await page.goto(camera_page(broker, "garden"))
        await viewer.wait_tile("garden", mode="mjpeg", state="live")
        await expect(page.locator(f"{tile} .stats")).to_contain_text("MJPEG")
        await viewer.wait_element_colour(f"{tile} .media img", RED)
        garden.colour = GREEN
        await viewer.wait_element_colour(f"{tile} .media img", GREEN)
        await viewer.screenshot("mjpeg.png")

        blocked = False
        await page.clock.fast_forward(31_000)
        await viewer.wait_tile("garden", mode="ws", state="live")
        await viewer.wait_canvas_colour("garden", GREEN)
        assert await page.locator(f"{tile} .media img").count() == 0


async def test_falls_back_to_snapshots_when_mjpeg_fails_too(broker, viewer, http):
    """With WebSockets and MJPEG both blocked, the page polls snapshot.jpg."""
    page = viewer.page
    viewer.allow_network_errors = True

    async def refuse(route):
        await route.close()

    async def abort(route):
        await route.abort()

    await page.route_web_socket(VIEWER_SOCKET, refuse)
    await page.route(re.compile(r"/cameras/[^/]+/mjpeg"), abort)
    async with Camera(http, broker, "garden", RED) as garden:
        await page.goto(camera_page(broker, "garden"))
        await viewer.wait_tile("garden", mode="snapshot", state="live")
        await expect(page.locator(f"{viewer.tile('garden')} .stats")).to_contain_text("snapshot")
        await viewer.wait_canvas_colour("garden", RED)
        garden.colour = BLUE
        await viewer.wait_canvas_colour("garden", BLUE)


# Counts, in the page, decodes in flight and bitmaps closed.
COUNT_DECODES = """
window.decodes = { inFlight: 0, maxInFlight: 0, done: 0, closed: 0 };
const createImageBitmap = window.createImageBitmap;
window.createImageBitmap = async (...args) => {
    decodes.maxInFlight = Math.max(decodes.maxInFlight, ++decodes.inFlight);
    try {
        const bitmap = await createImageBitmap(...args);
        decodes.done += 1;
        const close = bitmap.close.bind(bitmap);
        bitmap.close = () => { decodes.closed += 1; close(); };
        return bitmap;
    } finally {
        decodes.inFlight -= 1;
    }
};
"""


async def test_draw_rate_for_a_30_fps_camera(broker, viewer, http):
    """Measures the draw rate for a 30 fps camera; one decode at a time, every bitmap closed."""
    frames = []
    for i in range(30):
        picture = np.full((480, 640, 3), (40, 90, 140), np.uint8)
        cv2.rectangle(picture, (i * 20, 0), (i * 20 + 40, 479), (255, 255, 255), -1)
        cv2.putText(picture, f"frame {i}", (20, 240), cv2.FONT_HERSHEY_SIMPLEX, 2, (0, 0, 0), 3)
        frames.append(cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes())

    async with http.ws_connect(
        broker.url("/cameras/demo/publish"),
        headers={"Authorization": f"Bearer {broker.token}"},
    ) as publisher:
        await publisher.send_bytes(frames[0])
        await viewer.page.add_init_script(COUNT_DECODES)
        await viewer.page.goto(camera_page(broker, "demo"))
        await viewer.wait_tile("demo", state="live", frames="1")

        seconds, fps = 5, 30
        drawn_before = await viewer.frames("demo")
        start = time.monotonic()
        for i in range(seconds * fps):
            # Paced against the start time, so that a slow send does not slow the rate.
            await asyncio.sleep(max(0.0, start + i / fps - time.monotonic()))
            await publisher.send_bytes(frames[i % len(frames)])
        elapsed = time.monotonic() - start
        drawn = await viewer.frames("demo") - drawn_before

    rate = drawn / elapsed
    OUTPUT_DIR.mkdir(exist_ok=True)
    (OUTPUT_DIR / "draw-rate.txt").write_text(
        f"{drawn} frames drawn in {elapsed:.2f} s from a {fps} fps 640x480 camera: {rate:.1f} fps\n"
    )
    print(f"drawn: {rate:.1f} fps")
    assert rate >= 5

    decodes = await viewer.page.evaluate("decodes")
    assert decodes["maxInFlight"] == 1
    await viewer.page.wait_for_function("decodes.inFlight === 0")
    assert await viewer.page.evaluate("decodes.closed === decodes.done")
