"""Who may watch and publish what: accounts, per-camera tokens, sessions, share links, Origin and Host."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import aiohttp
import pytest
from yarl import URL

from broker.config import Settings
from broker.share import ShareLinks
from broker.state import load_signing_key

from .access_support import GARDEN_TOKEN, PASSWORDS, basic, family_config
from .conftest import make_jpeg

CHALLENGE = 'Basic realm="framebroker"'
VIEW_ROUTES = {
    "snapshot": "/cameras/{}/snapshot.jpg",
    "mjpeg": "/cameras/{}/mjpeg",
    "ws": "/cameras/{}/ws",
}


@pytest.fixture
async def family(start_broker, http, tmp_path):
    """The family's broker with a frame on each of garden, door and yard; throttling out of the way."""
    broker = await start_broker(config=family_config(tmp_path), auth_failures_per_minute=1000)
    for camera, token in (("garden", GARDEN_TOKEN), ("door", broker.token), ("yard", broker.token)):
        async with http.post(
            broker.url(f"/cameras/{camera}/publish"),
            data=make_jpeg(),
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            assert resp.status == 204, await resp.text()
    return broker


async def status_of(http, broker, route: str, camera: str, headers: dict[str, str]) -> tuple[int, dict]:
    """The status a viewer route answers (101 for an accepted WebSocket), and its headers."""
    url = broker.url(VIEW_ROUTES[route].format(camera))
    if route == "ws":
        try:
            ws = await http.ws_connect(url, headers=headers)
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status, dict(exc.headers or {})
        await ws.close()
        return 101, {}
    async with http.get(url, headers=headers) as resp:
        return resp.status, dict(resp.headers)


@pytest.mark.parametrize("route", list(VIEW_ROUTES))
async def test_every_viewer_route_wants_the_right_user(family, http, route):
    """No credentials or a wrong password: 401 with a Basic challenge; another user's camera: 403."""
    status, headers = await status_of(http, family, route, "garden", {})
    assert (status, headers.get("WWW-Authenticate")) == (401, CHALLENGE)
    status, headers = await status_of(http, family, route, "garden", basic("alice", "not-her-password"))
    assert (status, headers.get("WWW-Authenticate")) == (401, CHALLENGE)
    status, _ = await status_of(http, family, route, "garden", basic("nobody-here", "x"))
    assert status == 401
    ok = 101 if route == "ws" else 200
    assert (await status_of(http, family, route, "garden", basic("alice")))[0] == ok
    assert (await status_of(http, family, route, "garden", basic("carol")))[0] == ok  # @family
    assert (await status_of(http, family, route, "garden", basic("bob")))[0] == 403
    assert (await status_of(http, family, route, "door", basic("alice")))[0] == 403
    assert (await status_of(http, family, route, "door", basic("bob")))[0] == ok
    assert (await status_of(http, family, route, "yard", basic("carol")))[0] == ok  # unlisted: any user


async def test_the_camera_list_shows_only_what_the_user_may_watch(family, http):
    """/api/cameras: 401 without credentials; each user sees their cameras, with titles."""
    async with http.get(family.url("/api/cameras")) as resp:
        assert (resp.status, resp.headers["WWW-Authenticate"]) == (401, CHALLENGE)
    async with http.get(family.url("/api/cameras"), headers=basic("bob", "wrong")) as resp:
        assert resp.status == 401
    async with http.get(family.url("/api/cameras"), headers=basic("alice")) as resp:
        listing = (await resp.json())["cameras"]
    assert [(c["id"], c["title"]) for c in listing] == [("garden", "Garden"), ("yard", "yard")]
    async with http.get(family.url("/api/cameras"), headers=basic("bob")) as resp:
        assert [c["id"] for c in (await resp.json())["cameras"]] == ["door", "yard"]


async def test_the_page_and_health_check_are_open_but_name_no_camera(family, http):
    """The page is a shell that asks for sign-in; /healthz says only that the broker is up."""
    for path in ("/", "/healthz"):
        async with http.get(family.url(path)) as resp:
            assert resp.status == 200
            body = await resp.text()
        for name in ("garden", "Garden", "door", "yard"):
            assert name not in body


@pytest.mark.parametrize("transport", ["ws", "post"])
async def test_each_camera_accepts_only_its_own_publish_token(family, http, transport):
    """garden takes only its own token; door takes the broker's; user passwords never publish."""

    async def publish(camera: str, headers: dict[str, str]) -> int:
        url = family.url(f"/cameras/{camera}/publish")
        if transport == "post":
            async with http.post(url, data=make_jpeg(), headers=headers) as resp:
                return resp.status
        try:
            ws = await http.ws_connect(url, headers=headers)
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status
        await ws.close()
        return 101

    ok = 101 if transport == "ws" else 204
    bearer = lambda token: {"Authorization": f"Bearer {token}"}  # noqa: E731
    assert await publish("garden", {}) == 401
    assert await publish("garden", bearer("wrong")) == 403
    assert await publish("garden", bearer(family.token)) == 403  # the broker's token: not for garden
    assert await publish("door", bearer(GARDEN_TOKEN)) == 403  # garden's token cannot publish door
    assert await publish("garden", basic("alice")) == 401  # a viewer's credentials never publish
    assert await publish("garden", bearer(GARDEN_TOKEN)) == ok
    assert await publish("door", bearer(family.token)) == ok


async def test_a_publish_token_never_views(family, http):
    """Neither as a Bearer header nor as ?token= does a publish token open a viewer route."""
    status, headers = await status_of(http, family, "ws", "yard", {"Authorization": f"Bearer {family.token}"})
    assert (status, headers.get("WWW-Authenticate")) == (401, CHALLENGE)
    async with http.get(family.url(f"/cameras/garden/snapshot.jpg?token={GARDEN_TOKEN}")) as resp:
        assert resp.status == 401


async def raw_request(port: int, head: bytes) -> bytes:
    """Send raw request bytes; the status line and headers of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    return answer


@pytest.mark.parametrize(
    "header",
    [
        b"Bearer \xff\xfe",
        b"Basic \xff\xfe",
        b"Basic !!!notbase64",
        b"Basic " + b"bm9jb2xvbg==",
        b"Basic",
        b"Bearer some-token\x7f",  # control characters: aiohttp's parser refuses the request itself
        b"Basic YWxpY2U6cHc=\x0b",
    ],
)
async def test_a_malformed_authorization_header_is_a_clear_client_error(family, caplog, header):
    """Garbage in Authorization gets 400 or 401, never a 500 or a traceback."""
    answer = await raw_request(
        family.port,
        b"GET /cameras/garden/snapshot.jpg HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: "
        + header
        + b"\r\n\r\n",
    )
    assert answer.split(b" ", 2)[1] in (b"400", b"401"), answer
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert not [r for r in caplog.records if r.exc_info]


# -- sessions -----------------------------------------------------------------------


def browser_like_session() -> aiohttp.ClientSession:
    """A client that keeps cookies set by an address (127.0.0.1), as browsers do."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def sign_in(http, broker, name: str, password: str | None = None) -> aiohttp.ClientResponse:
    form = {"username": name, "password": PASSWORDS[name] if password is None else password}
    async with http.post(broker.url("/login"), data=form) as resp:
        await resp.read()
        return resp


async def test_signing_in_sets_a_strict_http_only_session_cookie(family):
    """The cookie is HttpOnly, SameSite=Strict, with the session lifetime; it opens the user's cameras."""
    async with browser_like_session() as http:
        resp = await sign_in(http, family, "alice", "wrong")
        assert resp.status == 401
        assert "WWW-Authenticate" not in resp.headers or "Basic" not in resp.headers["WWW-Authenticate"]
        resp = await sign_in(http, family, "alice")
        assert resp.status == 200
        cookie = resp.cookies["framebroker_session"]
        assert cookie["httponly"] and cookie["samesite"] == "Strict"
        assert int(cookie["max-age"]) == int(Settings().session_lifetime)
        assert not cookie["secure"]  # plain HTTP here; Secure under TLS
        ws = await http.ws_connect(family.ws_url("/cameras/garden/ws"))
        await ws.close()
        async with http.get(family.url("/api/session")) as r:
            assert await r.json() == {"user": "alice", "via": "session", "camera": None, "sign_in": True}
        async with http.get(family.url("/cameras/door/snapshot.jpg")) as r:
            assert r.status == 403


async def test_signing_out_ends_the_session_on_the_server(family):
    """A copy of the cookie taken before sign-out no longer works after it."""
    async with browser_like_session() as http:
        await sign_in(http, family, "alice")
        cookie = http.cookie_jar.filter_cookies(URL(family.url("/")))["framebroker_session"].value
        async with http.post(family.url("/logout")) as resp:
            assert resp.status == 200
    async with (
        aiohttp.ClientSession(cookies={"framebroker_session": cookie}) as replay,
        replay.get(family.url("/cameras/garden/snapshot.jpg")) as resp,
    ):
        assert resp.status == 401


async def test_a_tampered_session_cookie_is_nobody(family):
    """Changing the user name inside a cookie breaks its signature: the request is anonymous."""
    async with browser_like_session() as http:
        await sign_in(http, family, "alice")
        cookie = http.cookie_jar.filter_cookies(URL(family.url("/")))["framebroker_session"].value
    body, mac = cookie.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["u"] = "bob"
    forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode() + "." + mac
    async with (
        aiohttp.ClientSession(cookies={"framebroker_session": forged}) as http,
        http.get(family.url("/cameras/door/snapshot.jpg")) as resp,
    ):
        assert resp.status == 401


async def test_cookie_is_secure_when_a_trusted_proxy_says_https(start_broker, tmp_path):
    """Behind a TLS-terminating proxy that the broker trusts, the cookie gets Secure."""
    broker = await start_broker(config=family_config(tmp_path), trusted_proxies=("127.0.0.1",))
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            broker.url("/login"),
            data={"username": "alice", "password": PASSWORDS["alice"]},
            headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"},
        ) as resp,
    ):
        assert resp.status == 200
        assert resp.cookies["framebroker_session"]["secure"]


# -- throttling -----------------------------------------------------------------------


async def test_wrong_passwords_are_throttled_per_address(start_broker, http, tmp_path):
    """Past the limit an address gets 429 with Retry-After, even for the right password; others do not."""
    broker = await start_broker(
        config=family_config(tmp_path), auth_failures_per_minute=3, trusted_proxies=("127.0.0.1/32",)
    )
    attacker = {"X-Forwarded-For": "198.51.100.7"}
    url = broker.url("/cameras/garden/snapshot.jpg")
    for _ in range(3):
        async with http.get(url, headers={**attacker, **basic("alice", "guess")}) as resp:
            assert resp.status == 401
    async with http.get(url, headers={**attacker, **basic("alice", "guess")}) as resp:
        assert resp.status == 429
        assert 1 <= int(resp.headers["Retry-After"]) <= 60
    async with http.get(url, headers={**attacker, **basic("alice")}) as resp:
        assert resp.status == 429
    async with http.get(url, headers={"X-Forwarded-For": "198.51.100.8", **basic("alice")}) as resp:
        assert resp.status in (200, 404)  # another address is not locked out (no frame: 404)
    # A forwarded address from a proxy the broker does not trust is ignored: that is 127.0.0.1.
    async with http.get(url, headers=basic("alice")) as resp:
        assert resp.status in (200, 404)


async def test_wrong_publish_tokens_and_share_links_count_too(start_broker, http, tmp_path):
    """Guessing tokens or forging share links from one address also ends in 429."""
    broker = await start_broker(config=family_config(tmp_path), auth_failures_per_minute=2)
    for _ in range(2):
        async with http.post(broker.url("/cameras/door/publish?token=guess"), data=make_jpeg()) as resp:
            assert resp.status == 403
    async with http.get(broker.url("/cameras/door/snapshot.jpg?share=forged.link")) as resp:
        assert resp.status == 429
        assert "Retry-After" in resp.headers


# -- share links -----------------------------------------------------------------------


async def test_share_links_work_without_an_account_for_one_camera(family, http):
    """A share link opens its camera's snapshot, MJPEG, WebSocket and page, and nothing else."""
    links = ShareLinks(load_signing_key(family.settings))
    token = links.token("garden", time.time() + 3600)
    async with http.get(family.url(f"/cameras/garden/snapshot.jpg?share={token}")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "image/jpeg"
    async with http.get(family.url(f"/cameras/garden/mjpeg?share={token}")) as resp:
        assert resp.status == 200
    ws = await http.ws_connect(family.ws_url(f"/cameras/garden/ws?share={token}"))
    await ws.close()
    async with http.get(family.url(f"/?share={token}")) as resp:
        assert resp.status == 200
    async with http.get(family.url(f"/api/cameras?share={token}")) as resp:
        assert [c["id"] for c in (await resp.json())["cameras"]] == ["garden"]
    async with http.get(family.url(f"/cameras/door/snapshot.jpg?share={token}")) as resp:
        assert resp.status == 403
        assert "for camera 'garden' only" in await resp.text()
    async with http.post(family.url(f"/cameras/garden/publish?share={token}"), data=make_jpeg()) as resp:
        assert resp.status == 401  # read-only


async def test_expired_and_tampered_share_links_say_which(family, http):
    """403 either way, with a message that tells an expired link from a forged one."""
    links = ShareLinks(load_signing_key(family.settings))
    expired = links.token("garden", time.time() - 1)
    tampered = links.token("garden", time.time() + 3600)
    tampered = tampered[:-3] + ("AAA" if not tampered.endswith("AAA") else "BBB")
    for path in ("/cameras/garden/snapshot.jpg?share={}", "/?share={}"):
        async with http.get(family.url(path.format(expired))) as resp:
            assert resp.status == 403
            assert "expired" in await resp.text()
        async with http.get(family.url(path.format(tampered))) as resp:
            assert resp.status == 403
            assert "not valid" in await resp.text()


# -- origin and host -------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "null",
        "http://127.0.0.1.evil.example",
        "http://127.0.0.1:1",
        "http://localhost",
    ],
)
async def test_viewer_websockets_from_other_origins_are_refused(broker, http, origin):
    """Cross-site WebSocket hijacking: an upgrade from another page's origin gets 403, before 101."""
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(broker.ws_url("/cameras/cam/ws"), origin=origin)
    assert refused.value.status == 403


async def test_the_brokers_own_origin_and_allowed_origins_are_accepted(start_broker, http):
    """The page's own origin, and any --allowed-origins, may open viewer WebSockets."""
    broker = await start_broker(allowed_origins=("https://home.example.org",))
    for origin in (f"http://127.0.0.1:{broker.port}", "https://home.example.org"):
        ws = await http.ws_connect(broker.ws_url("/cameras/cam/ws"), origin=origin)
        await ws.close()


async def test_foreign_host_names_are_refused_on_a_loopback_broker(broker, http):
    """DNS rebinding: a request addressed to another name gets 421 before anything else."""
    for host in ("evil.example", "127.0.0.1.nip.io"):
        async with http.get(broker.url("/api/cameras"), headers={"Host": host}) as resp:
            assert resp.status == 421
        async with http.get(broker.url("/healthz"), headers={"Host": f"{host}:{broker.port}"}) as resp:
            assert resp.status == 421
    for host in ("localhost", f"127.0.0.1:{broker.port}", f"localhost:{broker.port}", "[::1]:8080"):
        async with http.get(broker.url("/healthz"), headers={"Host": host}) as resp:
            assert resp.status == 200, host


async def test_allowed_hosts_name_the_broker(start_broker, http):
    """With --allowed-hosts, those names (and '.domain' subdomains) are answered; others get 421."""
    broker = await start_broker(allowed_hosts=("cams.example.org", ".home.example"))
    for host, status in (
        ("cams.example.org", 200),
        ("garage.home.example", 200),
        ("home.example", 200),
        ("evil.example", 421),
        ("localhost", 421),
    ):
        async with http.get(broker.url("/healthz"), headers={"Host": host}) as resp:
            assert resp.status == status, host


async def test_an_open_broker_behind_an_untrusted_proxy_is_not_open(broker, http):
    """Without accounts the broker is open to this machine only: a proxied request is not local."""
    async with http.get(broker.url("/api/cameras")) as resp:
        assert resp.status == 200
    async with http.get(broker.url("/api/cameras"), headers={"X-Forwarded-For": "203.0.113.5"}) as resp:
        assert resp.status == 401


async def test_the_session_cookie_is_scoped_to_the_pages_path(family):
    """Behind a proxy prefix the page sends its path; the cookie then goes to the broker only."""
    async with browser_like_session() as http:
        for sent, expected in (("/cams/", "/cams/"), ("/x;Domain=evil", "/"), (None, "/")):
            form = {"username": "alice", "password": PASSWORDS["alice"], **({"path": sent} if sent else {})}
            async with http.post(family.url("/login"), data=form) as resp:
                assert resp.cookies["framebroker_session"]["path"] == expected


async def test_public_and_every_signed_in_user_cameras(start_broker, http, tmp_path):
    """public = true: anyone, no sign-in; viewers = ["*"]: every signed-in user, nobody else."""
    extra = '\n[[camera]]\nid = "beach"\npublic = true\n\n[[camera]]\nid = "hall"\nviewers = ["*"]\n'
    broker = await start_broker(config=family_config(tmp_path, extra), auth_failures_per_minute=1000)
    for camera in ("beach", "hall"):
        async with http.post(
            broker.url(f"/cameras/{camera}/publish"), data=make_jpeg(), headers=broker.auth
        ) as resp:
            assert resp.status == 204
    for route in VIEW_ROUTES:
        ok = 101 if route == "ws" else 200
        assert (await status_of(http, broker, route, "beach", {}))[0] == ok
        assert (await status_of(http, broker, route, "hall", {}))[0] == 401
        for name in PASSWORDS:
            assert (await status_of(http, broker, route, "hall", basic(name)))[0] == ok
    async with http.get(broker.url("/api/cameras")) as resp:
        assert [c["id"] for c in (await resp.json())["cameras"]] == ["beach"]


async def test_one_cameras_detail_is_for_its_viewers_only(family, http):
    """/api/cameras/{id}: 401 without credentials, 403 for a user who may not watch it."""
    async with http.get(family.url("/api/cameras/door")) as resp:
        assert resp.status == 401
    async with http.get(family.url("/api/cameras/door"), headers=basic("alice")) as resp:
        assert resp.status == 403
    async with http.get(family.url("/api/cameras/door"), headers=basic("bob")) as resp:
        assert resp.status == 200
        assert (await resp.json())["id"] == "door"


async def test_a_signed_in_request_from_another_sites_page_is_refused(family):
    """A cookie-authenticated request that carries a foreign Origin gets 403, not the user's data."""
    async with browser_like_session() as http:
        assert (await sign_in(http, family, "alice")).status == 200
        async with http.get(family.url("/api/cameras")) as resp:
            assert resp.status == 200
        async with http.get(family.url("/api/cameras"), headers={"Origin": "https://evil.example"}) as resp:
            assert resp.status == 403
        async with http.get(
            family.url("/cameras/garden/snapshot.jpg"), headers={"Origin": "https://evil.example"}
        ) as resp:
            assert resp.status == 403


@pytest.mark.parametrize(
    "path", ["/?action=snapshot&camera={}", "/?action=stream&camera={}", "/snapshot", "/stream"]
)
async def test_the_urls_of_other_camera_servers_keep_the_access_rules(start_broker, http, tmp_path, path):
    """mjpg-streamer's and µStreamer's URLs are the camera's own routes: same 401 and 403."""
    broker = await start_broker(
        config=family_config(tmp_path), auth_failures_per_minute=1000, default_camera="door"
    )
    async with http.post(broker.url("/cameras/door/publish"), data=make_jpeg(), headers=broker.auth) as r:
        assert r.status == 204
    url = broker.url(path.format("door"))
    for headers, status in ((None, 401), (basic("alice"), 403), (basic("bob"), 200)):
        async with http.get(url, headers=headers) as resp:
            assert resp.status == status, (headers, resp.status)


async def test_a_broker_off_loopback_answers_any_host_by_default(start_broker, http):
    """Listening for other machines without --allowed-hosts: their names for it are not known, so any goes."""
    broker = await start_broker(host="0.0.0.0", public=True)
    async with http.get(broker.url("/healthz"), headers={"Host": "cams.example.org"}) as resp:
        assert resp.status == 200
