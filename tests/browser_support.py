"""Helpers for the viewer-page tests: a camera that publishes colours, and a page driver."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import cv2
import numpy as np
from playwright.async_api import ConsoleMessage, Error, Page

__all__ = [
    "BLUE",
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "GREEN",
    "OUTPUT_DIR",
    "RED",
    "STATIC_DIR",
    "Camera",
    "Viewer",
    "colour_close",
    "eventually",
    "solid_jpeg",
]

ROOT = Path(__file__).resolve().parent.parent
STATIC_DIR = ROOT / "static"
OUTPUT_DIR = ROOT / "test-output"

CHROMIUM = "/usr/bin/chromium"
# Headless, and quiet on a network without internet: no background requests.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Colours as OpenCV takes them (BGR).
RED = (0, 0, 255)
GREEN = (0, 255, 0)
BLUE = (255, 0, 0)
# How far a solid colour may drift through JPEG and back, per channel.
TOLERANCE = 40

# Console errors that only report what a test did on purpose to the network
# (a stopped broker, a refused upgrade, an aborted request).
NETWORK_NOISE = re.compile(r"Failed to load resource: net::|WebSocket connection to .* failed")


def solid_jpeg(bgr: tuple[int, int, int], width: int = 320, height: int = 240) -> bytes:
    """A JPEG of one colour."""
    ok, data = cv2.imencode(".jpg", np.full((height, width, 3), bgr, np.uint8))
    assert ok
    return data.tobytes()


def colour_close(rgb: tuple[int, ...], bgr: tuple[int, int, int]) -> bool:
    """Whether an RGB pixel read back from the page shows the BGR colour that was sent."""
    return all(abs(a - b) <= TOLERANCE for a, b in zip(rgb, bgr[::-1], strict=True))


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Wait until `check()` is true (for state outside the page, e.g. the broker's counters)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout} s: {check.__doc__ or check}")
        await asyncio.sleep(0.05)


class Camera:
    """A publisher that keeps sending its current colour, like a camera agent.

    Frames keep flowing so that the broker keeps the camera online; set `colour` to
    change the picture. Given `frames` (JPEGs), it sends those in turn instead.
    """

    def __init__(
        self, session: aiohttp.ClientSession, broker, camera_id: str, colour, fps=10, token=None, frames=None
    ):
        self.session = session
        self.broker = broker
        self.camera_id = camera_id
        self.colour = colour
        self.fps = fps
        self.token = token or broker.token
        self.frames = frames
        self.sent = 0
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> Camera:
        self._ws = await self.session.ws_connect(
            self.broker.url(f"/cameras/{self.camera_id}/publish"),
            headers={"Authorization": f"Bearer {self.token}"},
        )
        await self._send()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop publishing and disconnect (the broker then marks the camera offline)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._ws is not None:
            await self._ws.close()
            self._ws = None

    async def _run(self) -> None:
        next_at = time.monotonic()
        while not self._ws.closed:
            # Paced by the clock, without bursts to catch up after a stall.
            next_at = max(next_at + 1 / self.fps, time.monotonic())
            await asyncio.sleep(next_at - time.monotonic())
            await self._send()

    async def _send(self) -> None:
        jpeg = self.frames[self.sent % len(self.frames)] if self.frames else solid_jpeg(self.colour)
        await self._ws.send_bytes(jpeg)
        self.sent += 1


class Viewer:
    """The page under test, with waits on the tiles' test hooks (data-* attributes)."""

    def __init__(self, page: Page):
        self.page = page
        self.errors: list[str] = []
        # Set by tests that break the network on purpose.
        self.allow_network_errors = False
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def tile(self, camera_id: str) -> str:
        """CSS selector of a camera's tile."""
        return f'.tile[data-camera="{camera_id}"]'

    async def wait_tile(self, camera_id: str, timeout: float = 10.0, **data: str) -> None:
        """Wait until the tile's data attributes have these values (frames: at least)."""
        await self.page.wait_for_function(
            """([selector, data]) => {
                const tile = document.querySelector(selector);
                return tile !== null && Object.entries(data).every(([key, value]) =>
                    key === 'frames' ? Number(tile.dataset.frames) >= Number(value)
                                     : tile.dataset[key] === value);
            }""",
            arg=[self.tile(camera_id), data],
            timeout=timeout * 1000,
        )

    async def frames(self, camera_id: str) -> int:
        return int(await self.page.get_attribute(self.tile(camera_id), "data-frames"))

    async def wait_canvas_colour(self, camera_id: str, bgr, timeout: float = 10.0) -> None:
        """Wait until the middle of the tile's canvas shows the colour."""
        try:
            await self.page.wait_for_function(
                """([selector, rgb, tolerance]) => {
                    const canvas = document.querySelector(selector);
                    if (!canvas || canvas.hidden || canvas.width < 2) return false;
                    const pixel = canvas.getContext('2d')
                        .getImageData(canvas.width >> 1, canvas.height >> 1, 1, 1).data;
                    return rgb.every((value, i) => Math.abs(pixel[i] - value) <= tolerance);
                }""",
                arg=[f"{self.tile(camera_id)} canvas", list(bgr[::-1]), TOLERANCE],
                polling=100,
                timeout=timeout * 1000,
            )
        except Error as error:
            raise AssertionError(
                f"canvas of {camera_id} is {await self.canvas_colour(camera_id)}, not RGB {bgr[::-1]}"
            ) from error

    async def canvas_colour(self, camera_id: str) -> tuple[int, ...]:
        return tuple(
            await self.page.evaluate(
                """(selector) => {
                    const canvas = document.querySelector(selector);
                    return [...canvas.getContext('2d')
                        .getImageData(canvas.width >> 1, canvas.height >> 1, 1, 1).data];
                }""",
                f"{self.tile(camera_id)} canvas",
            )
        )[:3]

    async def element_colour(self, selector: str) -> tuple[int, int, int]:
        """RGB in the middle of an element as it appears on screen (a screenshot)."""
        png = await self.page.locator(selector).screenshot()
        image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        b, g, r = image[image.shape[0] // 2, image.shape[1] // 2]
        return int(r), int(g), int(b)

    async def wait_element_colour(self, selector: str, bgr, timeout: float = 10.0) -> None:
        """Wait until the middle of an element shows the colour on screen."""
        shown = None

        async def check():
            nonlocal shown
            shown = await self.element_colour(selector)
            return colour_close(shown, bgr)

        try:
            await eventually(check, timeout)
        except AssertionError:
            raise AssertionError(f"{selector} shows {shown}, not RGB {bgr[::-1]}") from None

    async def set_hidden(self, hidden: bool) -> None:
        """Make the page believe its tab was hidden or shown again."""
        await self.page.evaluate(
            """(hidden) => {
                Object.defineProperty(document, 'hidden', {configurable: true, get: () => hidden});
                Object.defineProperty(document, 'visibilityState', {
                    configurable: true, get: () => (hidden ? 'hidden' : 'visible')});
                document.dispatchEvent(new Event('visibilitychange'));
            }""",
            hidden,
        )

    async def screenshot(self, name: str) -> Path:
        OUTPUT_DIR.mkdir(exist_ok=True)
        path = OUTPUT_DIR / name
        await self.page.screenshot(path=path)
        return path

    def unexpected_errors(self) -> list[str]:
        if not self.allow_network_errors:
            return self.errors
        return [error for error in self.errors if not NETWORK_NOISE.search(error)]

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")
