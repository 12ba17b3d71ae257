"""Many cameras on one screen, in Debian's Chromium: one socket for the grid, thumbnails from the broker."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Page, WebSocket

from bench.frames import synthesize
from broker.app_keys import HUB

from .browser_support import OUTPUT_DIR, RED, STATIC_DIR, Camera, Viewer, eventually

CAMERAS = [f"cam{index:02}" for index in range(16)]
GRID_SOCKET = re.compile(r"^wss?://[^/]+/ws(\?|$)")  # not /cameras/ID/ws


@pytest.fixture(scope="module")
def hd_frames() -> list[bytes]:
    """Camera-like 1280x720 JPEGs of about 120 kB."""
    return synthesize(1280, 720, 4)


@pytest.fixture
async def broker(start_broker):
    return await start_broker(static_dir=STATIC_DIR)


@contextlib.asynccontextmanager
async def cameras(http, broker, frames: list[bytes], fps: float, ids=CAMERAS) -> AsyncIterator[list[Camera]]:
    """Publishers of `frames`, one per camera id, `fps` each."""
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(Camera(http, broker, camera, RED, fps=fps, frames=frames))
            for camera in ids
        ]


class Sockets:
    """The page's WebSockets as Playwright sees them: which opened, which are open, bytes received."""

    def __init__(self, page: Page) -> None:
        self.opened: list[str] = []
        self.open: set[WebSocket] = set()
        self.grid_messages: list[bytes] = []
        page.on("websocket", self._opened)

    def _opened(self, ws: WebSocket) -> None:
        self.opened.append(ws.url)
        self.open.add(ws)
        ws.on("close", lambda _: self.open.discard(ws))
        if GRID_SOCKET.search(ws.url):
            ws.on("framereceived", self._received)

    def _received(self, payload: str | bytes) -> None:
        if isinstance(payload, bytes):
            self.grid_messages.append(payload)

    def grid(self) -> list[str]:
        return [url for url in self.opened if GRID_SOCKET.search(url)]


async def canvas_sizes(page: Page) -> dict[str, list[int]]:
    """Each live tile's canvas size, by camera."""
    return await page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('.tile[data-state="live"] canvas')]
            .map(c => [c.closest('.tile').dataset.camera, [c.width, c.height]]))"""
    )


async def test_sixteen_cameras_on_one_socket_as_thumbnails(broker, viewer, http, hd_frames):
    """16 cameras of 1280x720 on one screen: every tile is live over the one WebSocket the page
    opens, each drawing the broker's 320-wide thumbnail that fits its ~320 px tile."""
    page = viewer.page
    await page.set_viewport_size({"width": 1700, "height": 1100})
    sockets = Sockets(page)
    async with cameras(http, broker, hd_frames, fps=5):
        await page.goto(broker.url("/"))
        for camera in CAMERAS:
            await viewer.wait_tile(camera, state="live", mode="ws", frames="2", timeout=30)
        assert await page.evaluate("document.documentElement.scrollHeight <= innerHeight")  # all on screen
        assert set(map(tuple, (await canvas_sizes(page)).values())) == {(320, 180)}
        assert len(sockets.opened) == 1 and sockets.grid() == sockets.opened
        assert len(sockets.open) == 1
        hub = broker.app[HUB]
        assert [hub.channel(camera).viewer_count for camera in CAMERAS] == [1] * 16
        await viewer.screenshot("grid-16.png")


async def test_scrolling_a_tile_out_of_view_unsubscribes_it(broker, viewer, http, hd_frames):
    """Tiles scrolled out of view stop streaming (the broker counts no viewer for them) and
    start again when scrolled back, all on the same one socket."""
    page = viewer.page
    sockets = Sockets(page)
    hub = broker.app[HUB]
    async with cameras(http, broker, hd_frames, fps=3):
        await page.goto(broker.url("/"))
        await viewer.wait_tile("cam00", state="live", frames="1", timeout=20)
        await viewer.wait_tile("cam15", state="offscreen")
        assert hub.channel("cam15").viewer_count == 0

        await page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")
        await viewer.wait_tile("cam15", state="live", frames="1", timeout=20)
        await viewer.wait_tile("cam00", state="offscreen")

        async def top_row_unsubscribed():
            """the broker no longer feeds cam00"""
            return hub.channel("cam00").viewer_count == 0

        await eventually(top_row_unsubscribed)
        await viewer.screenshot("grid-scrolled.png")

        await page.evaluate("window.scrollTo(0, 0)")
        frames = await viewer.frames("cam00")
        await viewer.wait_tile("cam00", state="live", frames=str(frames + 1), timeout=20)
        await viewer.wait_tile("cam15", state="offscreen")
        assert len(sockets.grid()) == 1 and len(sockets.opened) == 1


async def test_the_single_camera_view_is_full_size_on_its_own_socket(broker, viewer, http, hd_frames):
    """Opening a camera from the grid shows it at 1280x720 over its own socket; the grid's
    socket closes, and opens again back on the grid."""
    page = viewer.page
    sockets = Sockets(page)
    async with cameras(http, broker, hd_frames, fps=5, ids=["garden", "yard"]):
        await page.goto(broker.url("/"))
        await viewer.wait_tile("garden", state="live", frames="1")
        assert (await canvas_sizes(page))["garden"] == [320, 180]
        await page.click(f"{viewer.tile('garden')} a.open")
        await viewer.wait_tile("garden", state="live", frames="2")

        async def full_size():
            """the large view draws 1280x720"""
            return (await canvas_sizes(page)).get("garden") == [1280, 720]

        await eventually(full_size)
        assert [url for url in sockets.opened if "/cameras/garden/ws" in url]
        assert len(sockets.open) == 1 and not GRID_SOCKET.search(next(iter(sockets.open)).url)
        await page.go_back()
        await viewer.wait_tile("yard", state="live", frames="1")
        assert len(sockets.grid()) == 2 and len(sockets.open) == 1


async def test_mjpeg_fallback_keeps_within_the_connection_limit(broker, viewer, http, hd_frames):
    """With the grid socket refused, tiles fall back per tile: at most 4 MJPEG streams of
    320-wide pictures (browsers allow about 6 connections), the other tiles poll snapshots;
    the overlays keep the streams' size when the camera list says the cameras' own."""
    page = viewer.page
    viewer.allow_network_errors = True

    async def refuse(route):
        await route.close()

    await page.route_web_socket(GRID_SOCKET, refuse)
    await page.clock.install()  # a clock that still runs, to skip to the next camera list
    ids = CAMERAS[:6]
    async with cameras(http, broker, hd_frames, fps=5, ids=ids):
        await page.goto(broker.url("/"))
        for camera in ids:
            await viewer.wait_tile(camera, state="live", timeout=30)

        async def settled():
            """every tile is live in MJPEG or snapshot mode"""
            states = await page.eval_on_selector_all(
                ".tile", "ts => ts.map(t => [t.dataset.mode, t.dataset.state])"
            )
            return all(mode in ("mjpeg", "snapshot") and state == "live" for mode, state in states)

        await eventually(settled, timeout=30)
        modes = await page.eval_on_selector_all(".tile", "ts => ts.map(t => t.dataset.mode)")
        assert modes.count("mjpeg") == 4 and modes.count("snapshot") == 2, modes
        widths = await page.eval_on_selector_all(".tile .media img", "imgs => imgs.map(i => i.naturalWidth)")
        assert widths == [320] * 4

        async def snapshots_drawn():
            """both snapshot tiles drew a 320x180 picture (snapshot.jpg?width=)"""
            polled = await page.eval_on_selector_all(
                '.tile[data-mode="snapshot"] canvas', "canvases => canvases.map(c => [c.width, c.height])"
            )
            return polled == [[320, 180]] * 2

        await eventually(snapshots_drawn)
        streams = sum(broker.app[HUB].channel(camera).viewer_counts()["mjpeg"] for camera in ids)
        assert streams == 4
        async with page.expect_response(lambda response: response.url.endswith("/api/cameras")):
            await page.clock.fast_forward(5000)
        await page.clock.run_for(1000)  # the overlays' next refresh
        sizes = await page.eval_on_selector_all(
            '.tile[data-mode="mjpeg"] [data-field="size"]', "spans => spans.map(s => s.textContent)"
        )
        assert sizes == ["320\N{MULTIPLICATION SIGN}180"] * 4
        await viewer.screenshot("grid-mjpeg.png")


# Notes, in the page, the arrival time, stream and size of each frame on the grid socket.
COUNT_GRID_FRAMES = """
window.gridFrames = [];
const Original = window.WebSocket;
window.WebSocket = class extends Original {
    constructor(...args) {
        super(...args);
        if (new URL(this.url).pathname.endsWith('/ws') && !this.url.includes('/cameras/')) {
            this.addEventListener('message', ({ data }) => {
                if (typeof data !== 'string') {
                    gridFrames.push([performance.now(), new DataView(data).getUint32(0), data.byteLength]);
                }
            });
        }
    }
};
"""


async def test_a_phone_sized_grid_of_sixteen_cameras_stays_under_3_mb_per_second(
    browser, start_broker, http, hd_frames
):
    """390x844 CSS pixels at device pixel ratio 3, 16 cameras of 1280x720 at 15 fps: the tiles
    on screen draw 640-wide pictures, and the grid socket carries well under 3 MB/s (as
    received, and as computed for 15 fps from the sizes of the frames received)."""
    broker = await start_broker(static_dir=STATIC_DIR)
    context = await browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=3)
    try:
        viewer = Viewer(await context.new_page())
        page = viewer.page
        await page.add_init_script(COUNT_GRID_FRAMES)
        sockets = Sockets(page)
        async with cameras(http, broker, hd_frames, fps=15) as publishers:
            await page.goto(broker.url("/"))
            await viewer.wait_tile("cam00", state="live", frames="3", timeout=30)
            live = await canvas_sizes(page)
            assert set(map(tuple, live.values())) == {(640, 360)}
            sent_before = sum(camera.sent for camera in publishers)
            started = await page.evaluate("performance.now()")
            await page.wait_for_timeout(4000)
            ended = await page.evaluate("performance.now()")
            sent = sum(camera.sent for camera in publishers) - sent_before
            frames = await page.evaluate("([from, to]) => gridFrames.filter(([t]) => t >= from && t < to)",
                                         [started, ended])  # fmt: skip
            await viewer.screenshot("grid-phone-16.png")
        seconds = (ended - started) / 1000
        sizes: dict[int, list[int]] = {}
        for _, stream, size in frames:
            sizes.setdefault(stream, []).append(size)
        received = sum(size for _, _, size in frames) / seconds
        at_15_fps = sum(15 * sum(each) / len(each) for each in sizes.values())
        OUTPUT_DIR.mkdir(exist_ok=True)
        (OUTPUT_DIR / "grid-phone.txt").write_text(
            f"16 cameras 1280x720 (~{sum(map(len, hd_frames)) // len(hd_frames) // 1000} kB a frame), "
            f"published at {sent / 16 / seconds:.1f} fps each; a phone's 390x844 at ratio 3 shows "
            f"{len(live)} tiles live at {sorted(set(map(tuple, live.values())))}; the grid socket carried "
            f"{len(sizes)} streams, {len(frames) / len(sizes) / seconds:.1f} fps each, "
            f"{received / 1e6:.2f} MB/s received in {seconds:.1f} s, "
            f"{at_15_fps / 1e6:.2f} MB/s at 15 fps from the frame sizes\n"
        )
        assert frames
        assert received < 3e6 and at_15_fps < 3e6
        assert len(sockets.grid()) == 1
    finally:
        await context.close()
    assert viewer.unexpected_errors() == []
