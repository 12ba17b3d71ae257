"""Bounds a stranger cannot exhaust: cameras, waiting viewers, viewers, addresses, descriptors, bodies."""

from __future__ import annotations

import asyncio
import base64
import os
import resource
import socket
import ssl
import subprocess

import aiohttp
import pytest

from broker.app_keys import HUB

from .conftest import TOKEN, broker_with_few_descriptors, make_jpeg, peak_rss, publisher


async def handshake_status(http, url: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """Try a WebSocket; the status (101 if it opened, then closed again) and the answer's headers."""
    try:
        ws = await http.ws_connect(url, headers=headers or {})
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status, dict(exc.headers or {})
    await ws.close()
    return 101, {}


async def test_viewer_requests_never_use_up_room_publishers_need(start_broker, http):
    """Failed viewer requests leave nothing behind, and waiting viewers do not count as cameras."""
    broker = await start_broker(max_cameras=2)
    hub = broker.app[HUB]
    for n in range(5):
        async with http.get(broker.url(f"/cameras/plain{n}/ws")) as resp:
            assert resp.status == 400  # not an upgrade
        headers = {
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "8",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        }
        async with http.get(broker.url(f"/cameras/old{n}/ws"), headers=headers) as resp:
            assert resp.status == 426
        assert hub.channel(f"plain{n}") is None and hub.channel(f"old{n}") is None
    waiting = [await http.ws_connect(broker.ws_url(f"/cameras/random{n}/ws")) for n in range(5)]
    for camera in ("one", "two"):
        async with http.post(
            broker.url(f"/cameras/{camera}/publish"), data=make_jpeg(), headers=broker.auth
        ) as r:
            assert r.status == 204
    async with http.get(broker.url("/api/cameras")) as resp:
        assert [c["id"] for c in (await resp.json())["cameras"]] == ["one", "two"]
    async with http.post(broker.url("/cameras/three/publish"), data=make_jpeg(), headers=broker.auth) as r:
        assert r.status == 503  # a third camera is one too many: max_cameras counts publishers only
        assert "Retry-After" in r.headers
    for ws in waiting:
        await ws.close()
    assert hub.waiting_viewers() == 0
    assert all(hub.channel(f"random{n}") is None for n in range(5))


async def test_waiting_for_unknown_cameras_is_bounded_on_its_own(start_broker, http):
    """Past max_waiting_viewers a viewer of a camera that never published gets 503; others do not."""
    broker = await start_broker(max_waiting_viewers=3)
    async with http.post(broker.url("/cameras/real/publish"), data=make_jpeg(), headers=broker.auth) as r:
        assert r.status == 204
    waiting = [await http.ws_connect(broker.ws_url(f"/cameras/nope{n}/ws")) for n in range(3)]
    status, headers = await handshake_status(http, broker.ws_url("/cameras/nope9/ws"))
    assert status == 503 and headers["Retry-After"]
    assert (await handshake_status(http, broker.ws_url("/cameras/real/ws")))[0] == 101
    await waiting[0].close()
    assert (await handshake_status(http, broker.ws_url("/cameras/nope9/ws")))[0] == 101
    for ws in waiting[1:]:
        await ws.close()


async def test_a_camera_nobody_uses_is_forgotten(start_broker, http):
    """After --forget-after without publisher or viewers, a camera leaves the list."""
    broker = await start_broker(forget_after=0.5)
    async with http.post(broker.url("/cameras/gone/publish"), data=make_jpeg(), headers=broker.auth) as r:
        assert r.status == 204
    pub = await publisher(http, broker, "stays")
    for _ in range(100):
        async with http.get(broker.url("/api/cameras")) as resp:
            ids = [c["id"] for c in (await resp.json())["cameras"]]
        if ids == ["stays"]:
            break
        await asyncio.sleep(0.1)
    assert ids == ["stays"]  # a connected publisher keeps its camera
    await pub.close()


async def test_viewer_caps_answer_before_the_upgrade(start_broker, http):
    """max_viewers and max_viewers_per_camera: 503 with Retry-After; publishers still get in."""
    broker = await start_broker(max_viewers=3, max_viewers_per_camera=2)
    for camera in ("a", "b"):
        async with http.post(
            broker.url(f"/cameras/{camera}/publish"), data=make_jpeg(), headers=broker.auth
        ) as r:
            assert r.status == 204
    first = [await http.ws_connect(broker.ws_url("/cameras/a/ws")) for _ in range(2)]
    status, headers = await handshake_status(http, broker.ws_url("/cameras/a/ws"))
    assert (status, headers["Retry-After"]) == (503, "10")
    mjpeg = await http.get(broker.url("/cameras/b/mjpeg"))
    assert mjpeg.status == 200
    assert (await handshake_status(http, broker.ws_url("/cameras/b/ws")))[0] == 503  # the broker is full
    async with http.get(broker.url("/cameras/b/mjpeg")) as resp:
        assert resp.status == 503
    pub = await publisher(http, broker, "c")  # publishers are not viewers: room is kept for them
    await pub.close()
    mjpeg.close()
    for ws in first:
        await ws.close()


async def test_one_address_cannot_take_every_viewer_slot(start_broker, http):
    """Past max_connections_per_ip, that address gets 429; others and this machine's own do not."""
    broker = await start_broker(max_connections_per_ip=2, trusted_proxies=("127.0.0.1",), public=True)
    async with http.post(broker.url("/cameras/cam/publish"), data=make_jpeg(), headers=broker.auth) as r:
        assert r.status == 204
    url = broker.ws_url("/cameras/cam/ws")
    mine = [await http.ws_connect(url, headers={"X-Forwarded-For": "198.51.100.7"}) for _ in range(2)]
    status, headers = await handshake_status(http, url, {"X-Forwarded-For": "198.51.100.7"})
    assert (status, headers["Retry-After"]) == (429, "10")
    assert (await handshake_status(http, url, {"X-Forwarded-For": "198.51.100.8"}))[0] == 101
    local = [await http.ws_connect(url) for _ in range(4)]  # loopback: nginx or the bench, exempt
    for ws in mine + local:
        await ws.close()


async def test_descriptors_run_low_new_connections_are_refused_but_publishers_get_in(tmp_path):
    """Near its open-file limit: viewers get 503, then idle connections are refused; an agent still joins."""

    idle: list[socket.socket] = []
    async with broker_with_few_descriptors(tmp_path, 40, idle) as broker:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            async with http.post(broker.url("/cameras/cam/publish"), data=make_jpeg(), headers=auth) as r:
                assert r.status == 204
            viewers, refused = [], []
            for _ in range(80):
                status, headers = await handshake_status(http, broker.url("/cameras/cam/ws"))
                if status == 101:
                    viewers.append(await http.ws_connect(broker.url("/cameras/cam/ws")))
                else:
                    refused.append((status, headers.get("Retry-After")))
            assert len(viewers) > 20 and refused and set(refused) == {(503, "10")}, (
                len(viewers),
                refused[:3],
            )
            answers = []
            for _ in range(60):
                idle.append(socket.create_connection(("127.0.0.1", broker.port)))
            await asyncio.sleep(1)  # the broker answers refused connections at once
            for sock in idle:
                sock.setblocking(False)
                try:
                    answers.append(sock.recv(200))
                except BlockingIOError:
                    answers.append(b"")  # accepted, waiting for a request
            assert any(a.startswith(b"HTTP/1.1 503 ") and b"Retry-After" in a for a in answers)
            ws = await http.ws_connect(broker.url("/cameras/door/publish"), headers=auth)
            assert (await ws.receive_json())["type"] == "viewers"
            await ws.close()
            for viewer in viewers:
                await viewer.close()
    assert broker.log.count("refusing viewers") <= 2  # once a minute per reason, not once per request


UPGRADE = (
    "GET /cameras/{camera}/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def held_request(port: int, request: str) -> tuple[socket.socket, bytes]:
    """Send `request` on a new connection and read the head of the answer; the socket stays open."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(request.encode())
    return sock, sock.recv(4096)


def closed_by_broker(sock: socket.socket) -> bool:
    sock.settimeout(3)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


async def test_clients_that_hold_their_connections_never_keep_an_agent_out(tmp_path):
    """Near the open-file limit, refused viewers that never hang up and idle keep-alive connections
    are closed by the broker: the reserve stays the publishers', over WebSocket and POST."""

    held: list[socket.socket] = []
    async with broker_with_few_descriptors(tmp_path, 64, held) as broker:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            async with http.post(broker.url("/cameras/d1/publish"), data=make_jpeg(), headers=auth) as r:
                assert r.status == 204
            statuses = []
            for _ in range(120):  # a flood of viewers that keep every socket, refused or not
                sock, head = await asyncio.to_thread(held_request, broker.port, UPGRADE.format(camera="d1"))
                held.append(sock)
                statuses.append(head.split(b" ", 2)[1])
            refused = [sock for sock, status in zip(held, statuses, strict=True) if status == b"503"]
            assert statuses.count(b"101") > 20 and len(refused) > 20, statuses
            assert all(await asyncio.gather(*(asyncio.to_thread(closed_by_broker, s) for s in refused[:5])))
            for _ in range(30):  # idle keep-alive connections, each after one short request
                sock, head = await asyncio.to_thread(
                    held_request, broker.port, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                )
                held.append(sock)
            await asyncio.sleep(1.1)  # the broker closes lingering connections at most once a second
            async with http.post(broker.url("/cameras/d1/publish"), data=make_jpeg(), headers=auth) as r:
                assert r.status == 204, await r.text()
            ws = await http.ws_connect(broker.url("/cameras/d2/publish"), headers=auth)
            assert (await ws.receive_json())["type"] == "viewers"
            await ws.close()


async def test_a_chunked_body_over_the_limit_costs_at_most_about_twice_the_limit(run_broker, http):
    """Endless chunked POSTs are refused at the limit; the broker's peak memory grows < 2.5x the limit."""
    limit = 8 * 1024 * 1024
    broker = await run_broker(
        "--max-frame-bytes", str(limit), env={"FRAMEBROKER_PUBLISH_TOKEN": "t0ken-for-limits"}
    )
    before = peak_rss(broker.proc.pid)

    async def endless():
        chunk = b"\xff\xd8" + b"\0" * (256 * 1024)
        for _ in range(400):  # 100 MiB if nobody stops it
            yield chunk

    url = broker.url("/cameras/flood/publish")
    for _ in range(3):  # memory must also come back between floods
        async with http.post(
            url, data=endless(), headers={"Authorization": "Bearer t0ken-for-limits"}
        ) as resp:
            assert resp.status == 413
    grown = peak_rss(broker.proc.pid) - before
    assert grown < 2.5 * limit, f"peak RSS grew by {grown / limit:.1f}x the limit"


def test_the_open_file_limit_is_what_the_cli_raised(monkeypatch):
    """The broker reads the soft limit after the CLI raised it (documented in README, How it works)."""
    from broker.limits import open_file_limit

    assert open_file_limit() == resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@pytest.mark.parametrize("transport", ["ws", "post"])
async def test_a_frame_of_exactly_the_limit_is_accepted_on_both_transports(start_broker, http, transport):
    """--max-frame-bytes is inclusive over WebSocket and POST alike; one byte more is refused."""
    limit = 64 * 1024
    broker = await start_broker(max_frame_bytes=limit)
    exact = b"\xff\xd8" + b"\0" * (limit - 4) + b"\xff\xd9"
    over = b"\xff\xd8" + b"\0" * (limit - 3) + b"\xff\xd9"
    if transport == "post":
        for frame, expected in ((exact, 204), (over, 413)):
            async with http.post(broker.url("/cameras/cam/publish"), data=frame, headers=broker.auth) as resp:
                assert resp.status == expected
    else:
        ws = await publisher(http, broker, "cam")
        await ws.send_bytes(exact)
        for _ in range(50):
            async with http.get(broker.url("/cameras/cam/snapshot.jpg")) as resp:
                if resp.status == 200:
                    assert await resp.read() == exact
                    break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the exact-limit frame never became the snapshot")
        # The snapshots counted as a viewer: the publisher hears of it before anything else.
        assert (await asyncio.wait_for(ws.receive_json(), 5))["snapshot_only"] is True
        await ws.send_bytes(over)
        await asyncio.wait_for(ws.receive(), 5)
        assert ws.close_code == 1009


def this_machines_address() -> str:
    """An IPv4 address of this machine that is not loopback: connections from it are not exempt."""
    try:
        out = subprocess.run(
            ["ip", "-o", "-4", "addr", "show", "scope", "global"], capture_output=True, text=True, check=True
        ).stdout
    except FileNotFoundError:
        pytest.skip("needs iproute2's `ip` to find a non-loopback address")
    addresses = [line.split()[3].split("/")[0] for line in out.splitlines()]
    if not addresses:
        pytest.skip("needs a non-loopback network address")
    return addresses[0]


async def raw_request(address: str, port: int, request: bytes, **tls) -> tuple[int, bytes]:
    """Send one request on a new connection; the status and the whole answer (b"" if dropped unanswered)."""
    try:
        reader, writer = await asyncio.open_connection(address, port, **tls)
    except (ConnectionError, ssl.SSLError):
        return 0, b""  # dropped during the TLS handshake
    try:
        writer.write(request)
        answer = await asyncio.wait_for(reader.read(), 10)
    except (ConnectionError, ssl.SSLError):
        answer = b""
    finally:
        await close(writer)
    return (int(answer.split(b" ", 2)[1]) if answer else 0), answer


async def hold_connection(address: str, port: int, **tls) -> asyncio.StreamWriter:
    """A keep-alive connection that has had one answer, so the broker counts it."""
    reader, writer = await asyncio.open_connection(address, port, **tls)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: cams.example.org\r\n\r\n")
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)).startswith(b"HTTP/1.1 200")
    return writer


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await asyncio.gather(writer.wait_closed(), return_exceptions=True)


async def test_past_the_connection_cap_a_request_is_answered_429_and_never_run(start_broker, caplog):
    """An address with max_connections_per_ip open connections: the next one's POST gets 429 and
    publishes nothing; it is refused before its request is read, so no handler runs or logs."""
    address = this_machines_address()
    broker = await start_broker(host="0.0.0.0", public=True, max_connections_per_ip=2)
    held = [await hold_connection(address, broker.port) for _ in range(2)]
    jpeg = make_jpeg()
    post = (
        b"POST /cameras/sneaky/publish HTTP/1.1\r\nHost: cams.example.org\r\n"
        b"Authorization: Bearer %s\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s"
    ) % (broker.token.encode(), len(jpeg), jpeg)
    status, answer = await raw_request(address, broker.port, post)
    assert status == 429 and b"\r\nRetry-After: 10\r\n" in answer
    assert b"max_connections_per_ip=2" in answer
    assert broker.app[HUB].channel("sneaky") is None
    assert not [r for r in caplog.records if "sneaky" in r.getMessage()]
    await close(held.pop())
    for _ in range(100):  # the broker sees the close soon; then the address has room again
        status, _ = await raw_request(address, broker.port, post)
        if status != 429:
            break
        await asyncio.sleep(0.05)
    assert status == 204
    for writer in held:
        await close(writer)


async def test_under_tls_the_connection_cap_counts_each_connection_once(start_broker, tmp_path):
    """A TLS connection is counted from its handshake on, and not again once aiohttp serves it."""
    import trustme

    from .tls_support import client_context, issue

    ca = trustme.CA()
    certs = issue(ca, tmp_path / "certs")
    address = this_machines_address()
    broker = await start_broker(
        host="0.0.0.0", public=True, max_connections_per_ip=2, tls_cert=certs.cert, tls_key=certs.key
    )
    tls = {"ssl": client_context(ca), "server_hostname": "localhost"}
    held = [await hold_connection(address, broker.port, **tls) for _ in range(2)]
    status, _ = await raw_request(address, broker.port, b"GET /healthz HTTP/1.1\r\n\r\n", **tls)
    assert status == 0  # dropped before the handshake: there is no TLS yet to answer in
    await close(held.pop())
    for _ in range(100):
        status, _ = await raw_request(
            address, broker.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", **tls
        )
        if status:
            break
        await asyncio.sleep(0.05)
    assert status == 200
    for writer in held:
        await close(writer)
