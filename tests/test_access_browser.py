"""Accounts, share links and Origin checks as a person meets them: the page in Debian's Chromium."""

from __future__ import annotations

import re
import time

import pytest
from aiohttp import web
from playwright.async_api import expect

from broker.share import ShareLinks
from broker.state import load_signing_key

from .access_support import GARDEN_TOKEN, PASSWORDS, family_config
from .browser_support import BLUE, GREEN, STATIC_DIR, Camera, Viewer


@pytest.fixture
async def family(start_broker, tmp_path):
    return await start_broker(config=family_config(tmp_path), static_dir=STATIC_DIR)


@pytest.fixture
async def new_viewer(browser, start_broker):
    """Fresh browser contexts (no cookies) with a Viewer each; closed before the brokers stop."""
    contexts = []

    async def open_viewer() -> Viewer:
        context = await browser.new_context(viewport={"width": 1100, "height": 700})
        contexts.append(context)
        return Viewer(await context.new_page())

    yield open_viewer
    for context in contexts:
        await context.close()


async def test_sign_in_watch_and_sign_out(family, http, new_viewer):
    """The page asks with its own form, shows alice her cameras by title, and signs her out for good."""
    viewer = await new_viewer()
    page = viewer.page
    async with (
        Camera(http, family, "garden", GREEN, token=GARDEN_TOKEN),
        Camera(http, family, "door", BLUE),
    ):
        await page.goto(family.url("/"))
        form = page.locator("form.sign-in-form")
        await expect(form).to_be_visible()
        await expect(page.locator(".tile")).to_have_count(0)
        await viewer.screenshot("sign-in.png")

        await page.fill('input[name="username"]', "alice")
        await page.fill('input[name="password"]', "not-her-password")
        await page.click('form.sign-in-form button[type="submit"]')
        await expect(page.locator(".sign-in-form .error")).to_have_text("Wrong user name or password.")

        await page.fill('input[name="password"]', PASSWORDS["alice"])
        await page.click('form.sign-in-form button[type="submit"]')
        await viewer.wait_tile("garden", state="live", frames="1")
        await viewer.wait_canvas_colour("garden", GREEN)
        await expect(page.locator("#camera-nav a")).to_have_text([re.compile(r"^Garden")])  # door is bob's
        await expect(page.locator("#account .user")).to_have_text("Signed in as alice")
        await viewer.screenshot("signed-in.png")

        await page.click("#account .sign-out")
        await expect(form).to_be_visible()
        await expect(page.locator(".tile")).to_have_count(0)
        await page.reload()
        await expect(page.locator("form.sign-in-form")).to_be_visible()
        await expect(page.locator("#account")).to_be_hidden()
    # The broker's 401s (signed out, wrong password) are how the page learns to ask.
    assert [e for e in viewer.unexpected_errors() if "status of 401" not in e] == []


async def test_a_share_link_opens_its_camera_in_a_fresh_browser(family, http, new_viewer):
    """No account, no sign-in form: the page from `framebroker share` shows that one camera live."""
    links = ShareLinks(load_signing_key(family.settings)).urls(family.url("/"), "garden", time.time() + 600)
    viewer = await new_viewer()
    async with Camera(http, family, "garden", GREEN, token=GARDEN_TOKEN), Camera(http, family, "door", BLUE):
        await viewer.page.goto(links["page"])
        await viewer.wait_tile("garden", state="live", frames="1")
        await viewer.wait_canvas_colour("garden", GREEN)
        await expect(viewer.page.locator("form.sign-in-form")).to_have_count(0)
        await viewer.page.goto(links["page"].replace("#/cameras/garden", "#/"))
        await expect(viewer.page.locator(".tile")).to_have_count(1)
        await viewer.screenshot("share-link.png")
    assert viewer.unexpected_errors() == []


async def test_another_sites_page_cannot_open_a_viewer_websocket(broker_for_page, http, new_viewer):
    """A page served from another origin tries the broker's viewer WebSocket: refused, no viewer counted."""
    broker, hostile_url = broker_for_page
    viewer = await new_viewer()
    viewer.allow_network_errors = True
    async with Camera(http, broker, "yard", GREEN):
        await viewer.page.goto(hostile_url)
        outcome = await viewer.page.wait_for_function("window.outcome", timeout=10_000)
        assert await outcome.json_value() == "refused"
        async with http.get(broker.url("/api/cameras")) as resp:
            (yard,) = (await resp.json())["cameras"]
        assert yard["viewers"] == {"ws": 0, "mjpeg": 0}


@pytest.fixture
async def broker_for_page(start_broker):
    """An open broker on 127.0.0.1 and, on another port (another origin), a page that attacks it."""
    broker = await start_broker(static_dir=STATIC_DIR)
    target = broker.ws_url("/cameras/yard/ws")
    html = f"""<!doctype html><script>
      const socket = new WebSocket({target!r});
      socket.binaryType = 'arraybuffer';
      socket.onmessage = () => {{ window.outcome = 'hijacked'; }};
      socket.onclose = () => {{ window.outcome = window.outcome || 'refused'; }};
    </script>"""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield broker, f"http://localhost:{port}/"
    await runner.cleanup()
