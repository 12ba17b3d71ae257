"""The broker's own TLS: wss and https viewers get byte-identical frames, handshakes are bounded and logged,
bad certificate files stop the start, and SIGHUP swaps the certificate without dropping anyone."""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import signal
import socket
import ssl
import subprocess
import sys
import time

import aiohttp
import pytest
import trustme

from broker.app_keys import HUB
from broker.config import ConfigError, Settings, settings_from_env
from broker.server import BrokerServer

from .access_support import PASSWORDS, family_config
from .conftest import TOKEN, broker_with_few_descriptors, make_jpeg, next_binary, next_json, publisher
from .test_mjpeg import PartReader
from .tls_support import CertFiles, camera_frames, client_context, encrypt_key, issue, next_new_part


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def certs(ca, tmp_path) -> CertFiles:
    """The certificate, where certbot would keep it."""
    return issue(ca, tmp_path / "live" / "cams.example.org")


@pytest.fixture
async def tls_broker(start_broker, certs):
    """A broker serving HTTPS and WSS with the built-in TLS."""
    return await start_broker(tls_cert=certs.cert, tls_key=certs.key)


@pytest.fixture
async def https(ca):
    """A client session that trusts the test CA and checks the broker's certificate."""
    connector = aiohttp.TCPConnector(ssl=client_context(ca), limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def presented_certificate(port: int, ca: trustme.CA) -> bytes:
    """The certificate a new TLS handshake with the broker presents (DER)."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(ca))
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    await writer.wait_closed()
    return der


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# -- frames over TLS ------------------------------------------------------------------


async def test_wss_viewers_receive_complete_byte_identical_jpegs(tls_broker, https, caplog):
    """A wss publisher and three wss viewers: every viewer gets each JPEG whole and unchanged."""
    pub = await publisher(https, tls_broker, "garden")
    viewers = [await https.ws_connect(tls_broker.ws_url("/cameras/garden/ws")) for _ in range(2)]
    viewers.append(await https.ws_connect(tls_broker.ws_url("/cameras/garden/ws?header=1")))
    for viewer in viewers:
        assert (await next_json(viewer))["type"] == "status"
    for frame in camera_frames(6):
        await pub.send_bytes(frame)
        assert await next_binary(viewers[0]) == frame
        assert await next_binary(viewers[1]) == frame
        assert (await next_binary(viewers[2]))[16:] == frame
    writers = tls_broker.app[HUB].channel("garden")._viewers
    assert writers and all(writer._sock is None for writer in writers)  # through the TLS transport
    assert not errors(caplog)


async def test_https_mjpeg_and_snapshots_are_byte_identical(tls_broker, https):
    """Frames published with POST over HTTPS come out of MJPEG and snapshot.jpg over HTTPS unchanged."""
    frames = camera_frames(4)

    async def post(frame: bytes) -> None:
        url = tls_broker.url("/cameras/door/publish")
        async with https.post(url, data=frame, headers=tls_broker.auth) as resp:
            assert resp.status == 204

    await post(frames[0])
    async with https.get(tls_broker.url("/cameras/door/mjpeg")) as resp:
        assert resp.status == 200
        parts = PartReader(resp)
        assert await parts.next_part() == frames[0]
        for previous, frame in itertools.pairwise(frames):
            await post(frame)
            assert await next_new_part(parts, previous) == frame
    async with https.get(tls_broker.url("/cameras/door/snapshot.jpg")) as resp:
        assert resp.status == 200
        assert await resp.read() == frames[-1]


async def test_plain_tcp_viewers_keep_their_own_sending_descriptor(broker, http):
    """Without TLS the writer still sends through its own descriptor of the socket (the fast path)."""
    pub = await publisher(http, broker, "garden")
    viewer = await http.ws_connect(broker.ws_url("/cameras/garden/ws"))
    frame = make_jpeg()
    await pub.send_bytes(frame)
    assert await next_binary(viewer) == frame
    assert all(writer._sock is not None for writer in broker.app[HUB].channel("garden")._viewers)


async def test_sign_in_cookie_is_secure_over_the_built_in_tls(start_broker, certs, ca, tmp_path):
    """Signing in over HTTPS sets the session cookie with Secure."""
    broker = await start_broker(config=family_config(tmp_path), tls_cert=certs.cert, tls_key=certs.key)
    connector = aiohttp.TCPConnector(ssl=client_context(ca))
    async with (
        aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.CookieJar(unsafe=True)) as session,
        session.post(
            broker.url("/login"), data={"username": "alice", "password": PASSWORDS["alice"]}
        ) as resp,
    ):
        assert resp.status == 200
        assert resp.cookies["framebroker_session"]["secure"]


# -- handshakes -------------------------------------------------------------------------


async def test_failed_and_slow_handshakes_are_closed_and_logged_with_the_address(
    start_broker, certs, https, caplog
):
    """Plain HTTP, a client that distrusts the certificate, and a silent client: each is closed, with one
    INFO line naming the client; nothing at ERROR, and the broker keeps serving."""
    broker = await start_broker(tls_cert=certs.cert, tls_key=certs.key, tls_handshake_timeout=0.5)

    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()

    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.to_thread(distrusting_client, broker.port)

    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the broker, not by us
    writer.close()

    async with https.get(broker.url("/healthz")) as resp:
        assert resp.status == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "broker.tls"]
    assert "client 127.0.0.1: TLS handshake failed: it sent plain HTTP (use https:// and wss://)" in lines
    assert "client 127.0.0.1: TLS handshake failed: tlsv1 alert unknown ca" in lines
    assert "client 127.0.0.1: no TLS handshake within 0.5 s, disconnected" in lines
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "broker.tls")
    assert not errors(caplog)


def distrusting_client(port: int) -> None:
    """A client that does not know the test CA: it rejects the certificate with an alert."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        ssl.create_default_context().wrap_socket(sock, server_hostname="127.0.0.1")


async def test_stalled_wss_viewers_skip_frames_and_are_dropped_without_slowing_others(
    start_broker, certs, ca, https
):
    """Viewers that finish TLS and the upgrade, then never read: they skip frames and are disconnected
    after viewer_send_timeout, while a reading wss viewer gets every frame."""
    broker = await start_broker(
        tls_cert=certs.cert, tls_key=certs.key, viewer_send_timeout=2.0, heartbeat=30.0
    )
    pub = await publisher(https, broker, "cam")
    stalled = [await stalled_tls_viewer(broker.port, client_context(ca)) for _ in range(4)]
    fast = await https.ws_connect(broker.ws_url("/cameras/cam/ws"))
    await next_json(fast)
    channel = broker.app[HUB].channel("cam")
    frames = camera_frames(4)
    try:
        for i in range(20):
            frame = frames[i % len(frames)]
            await pub.send_bytes(frame)
            assert await next_binary(fast) == frame
        assert sum(writer.frames_skipped > 0 for writer in channel._viewers) == len(stalled)  # newest wins
        deadline = time.monotonic() + 15
        while channel.viewer_count > 1 and time.monotonic() < deadline:
            await pub.send_bytes(frames[0])
            assert await next_binary(fast) == frames[0]
            await asyncio.sleep(0.1)
        assert channel.viewer_count == 1
    finally:
        for writer in stalled:
            writer.transport.abort()  # a clean TLS close would wait for reads that never come


async def stalled_tls_viewer(port: int, context: ssl.SSLContext) -> asyncio.StreamWriter:
    """A wss viewer that reads the upgrade answer and then nothing more (a small receive buffer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, limit=1024)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(
        b"GET /cameras/cam/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101"), head
    writer.transport.pause_reading()  # from now on nothing is read: the broker's sends back up
    return writer


# -- configuration ----------------------------------------------------------------------


def test_certificate_and_key_go_together():
    """Only one of tls_cert and tls_key is a configuration error that names both."""
    with pytest.raises(ConfigError, match="tls_cert is set but tls_key is not"):
        Settings(tls_cert="/etc/letsencrypt/live/x/fullchain.pem")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="tls_key is set but tls_cert is not"):
        settings_from_env({"FRAMEBROKER_TLS_KEY": "/etc/letsencrypt/live/x/privkey.pem"})


def test_tls_settings_come_from_the_environment(certs):
    """FRAMEBROKER_TLS_CERT, _KEY and _HANDSHAKE_TIMEOUT (a duration) set the TLS settings."""
    settings = settings_from_env(
        {
            "FRAMEBROKER_TLS_CERT": str(certs.cert),
            "FRAMEBROKER_TLS_KEY": str(certs.key),
            "FRAMEBROKER_TLS_HANDSHAKE_TIMEOUT": "15s",
        }
    )
    assert (settings.tls_cert, settings.tls_key, settings.tls_handshake_timeout) == (
        certs.cert,
        certs.key,
        15.0,
    )
    assert Settings().tls_handshake_timeout == 10.0


@pytest.mark.parametrize("problem", ["missing", "not pem", "other key", "encrypted key"])
def test_unusable_certificate_files_stop_the_start(ca, certs, tmp_path, problem):
    """A missing file, a file that is not PEM, a key of another certificate, or a key encrypted with a
    passphrase: ConfigError saying so."""
    if problem == "encrypted key":
        encrypt_key(certs.key)
        expected = r"tls_key=.*privkey.pem': the key is encrypted with a passphrase, and the broker needs it"
    elif problem == "missing":
        certs.key.unlink()
        expected = r"tls_key=.*privkey.pem': cannot read it: No such file or directory"
    elif problem == "not pem":
        certs.cert.write_text("not a certificate\n")
        expected = r"tls_cert=.*fullchain.pem': no PEM certificate in it"
    else:
        other = issue(ca, tmp_path / "other")
        certs.key.write_bytes(other.key.read_bytes())
        expected = r"not a PEM certificate chain and its private key \(key values mismatch\)"
    with pytest.raises(ConfigError, match=expected):
        BrokerServer(Settings(tls_cert=certs.cert, tls_key=certs.key, state_dir=tmp_path / "state"))


def test_the_command_line_reports_a_bad_certificate_in_one_line(tmp_path):
    """framebroker with an unreadable certificate exits 2 with one line on stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "broker", "--port", "0", "--tls-cert", str(tmp_path / "nope.pem"),
         "--tls-key", str(tmp_path / "nope.key"), "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "framebroker: error" in line]
    assert len(lines) == 1 and "tls_cert=" in lines[0] and "cannot read it" in lines[0]
    assert "Traceback" not in result.stderr


def test_an_encrypted_key_stops_the_start_without_asking_for_its_passphrase(certs, tmp_path):
    """framebroker with a passphrase-protected key exits 2 with one line that says so, and never
    prompts for the passphrase."""
    encrypt_key(certs.key)
    result = subprocess.run(
        [sys.executable, "-m", "broker", "--port", "0", *certs.flags, "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"framebroker: error: tls_key={str(certs.key)!r}: the key is encrypted with a passphrase, and the "
        "broker needs it unencrypted, as certbot writes it (openssl pkey -in KEY -out NEW_KEY writes an "
        "unencrypted copy)"
    ]
    assert "pass phrase" not in result.stdout


# -- certificate renewal ----------------------------------------------------------------


async def test_reload_presents_the_new_certificate_and_keeps_open_viewers(tls_broker, https, ca, certs):
    """Renewed files and reload_tls(): a new handshake gets the new certificate; an open wss viewer
    keeps receiving frames."""
    assert await presented_certificate(tls_broker.port, ca) == certs.der
    pub = await publisher(https, tls_broker, "garden")
    viewer = await https.ws_connect(tls_broker.ws_url("/cameras/garden/ws"))
    frames = camera_frames(2)
    await pub.send_bytes(frames[0])
    assert await next_binary(viewer) == frames[0]

    renewed = issue(ca, certs.folder)
    tls_broker.server.reload_tls()

    assert await presented_certificate(tls_broker.port, ca) == renewed.der != certs.der
    await pub.send_bytes(frames[1])
    assert await next_binary(viewer) == frames[1]


async def test_a_failed_reload_keeps_the_old_certificate(tls_broker, ca, certs, caplog):
    """Broken files at reload: one WARNING, and handshakes still get the old certificate."""
    certs.key.write_text("half-written\n")
    tls_broker.server.reload_tls()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "broker.tls"]
    assert len(warnings) == 1
    assert "not reloaded, the old one stays in use" in warnings[0].getMessage()
    assert await presented_certificate(tls_broker.port, ca) == certs.der


async def test_sighup_reloads_the_certificate_of_a_running_broker(run_broker, ca, certs, https):
    """`kill -HUP` (a certbot deploy hook) makes the broker serve the renewed certificate; the open
    viewer keeps receiving frames and the broker keeps running."""
    broker = await run_broker(*certs.flags, env={"FRAMEBROKER_PUBLISH_TOKEN": TOKEN})
    assert broker.scheme == "https"
    assert await presented_certificate(broker.port, ca) == certs.der
    viewer = await https.ws_connect(broker.url("/cameras/garden/ws").replace("https", "wss"))
    frames = camera_frames(2)

    async def post(frame: bytes) -> None:
        url = broker.url("/cameras/garden/publish")
        async with https.post(url, data=frame, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 204

    await post(frames[0])
    assert await next_binary(viewer) == frames[0]

    renewed = issue(ca, certs.folder)
    broker.proc.send_signal(signal.SIGHUP)
    await wait_for_log(broker, "TLS certificate reloaded")

    assert await presented_certificate(broker.port, ca) == renewed.der
    await post(frames[1])
    assert await next_binary(viewer) == frames[1]
    await viewer.close()
    broker.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(broker.proc.wait(), 30) == 0
    assert "Traceback" not in await broker.rest_of_log()


async def test_sighup_with_an_encrypted_key_keeps_the_old_certificate(run_broker, ca, certs):
    """A passphrase-protected key copied over the live one, then `kill -HUP`: one WARNING saying the
    key is encrypted, no prompt and no traceback, and handshakes still get the old certificate."""
    broker = await run_broker(*certs.flags, env={"FRAMEBROKER_PUBLISH_TOKEN": TOKEN})
    encrypt_key(certs.key)
    broker.proc.send_signal(signal.SIGHUP)
    await wait_for_log(broker, "not reloaded")

    assert await presented_certificate(broker.port, ca) == certs.der
    broker.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(broker.proc.wait(), 30) == 0
    log = await broker.rest_of_log()
    warnings = [line for line in log.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "the key is encrypted with a passphrase" in warnings[0], log
    assert "pass phrase" not in log and "Traceback" not in log and "ERROR" not in log


async def test_sighup_without_tls_keeps_the_broker_running(run_broker, http):
    """SIGHUP to a broker without a certificate is one log line, not the end of the process."""
    broker = await run_broker()
    broker.proc.send_signal(signal.SIGHUP)
    await wait_for_log(broker, "nothing to reload")
    async with http.get(broker.url("/healthz")) as resp:
        assert resp.status == 200


async def wait_for_log(broker, text: str) -> None:
    """Read the broker's log until a line contains `text`."""
    assert broker.proc.stderr is not None
    while text not in broker.log:
        line = await asyncio.wait_for(broker.proc.stderr.readline(), 15)
        assert line, f"broker exited:\n{broker.log}"
        broker.log += line.decode()


async def test_stopping_while_stalled_viewers_wait_leaves_no_unretrieved_error(
    start_broker, certs, ca, caplog
):
    """Shutdown cancels writers waiting for stalled TLS sockets; when those peers reset later,
    the drains they waited on fail, and that failure is collected, not reported as an error."""
    broker = await start_broker(
        tls_cert=certs.cert, tls_key=certs.key, heartbeat=30.0, viewer_send_timeout=30.0
    )
    context = client_context(ca)
    async with aiohttp.ClientSession() as http:
        pub = await http.ws_connect(broker.ws_url("/cameras/cam/publish"), headers=broker.auth, ssl=context)
        await pub.receive()
        stalled = [await stalled_tls_viewer(broker.port, context) for _ in range(3)]
        frames = camera_frames(3)
        for n in range(30):
            await pub.send_bytes(frames[n % 3])
            await asyncio.sleep(0.03)
        stopping = asyncio.ensure_future(broker.stop())
        await asyncio.sleep(0.05)
        for writer in stalled:
            writer.transport.abort()
        await stopping
    gc.collect()
    await asyncio.sleep(0.2)
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_connections_stuck_before_their_handshake_count_against_the_descriptors(tmp_path, ca, certs):
    """A flood of TCP connections that never start TLS is refused before the broker runs out of
    descriptors; once it is gone, a wss publisher gets in."""
    flood: list[socket.socket] = []
    tls = ("--tls-cert", str(certs.cert), "--tls-key", str(certs.key), "--tls-handshake-timeout", "30")
    async with broker_with_few_descriptors(tmp_path, 40, flood, *tls) as broker:
        for _ in range(200):
            flood.append(socket.create_connection(("127.0.0.1", broker.port)))
        await asyncio.sleep(1)
        dropped = 0
        for sock in flood:
            sock.setblocking(False)
            try:
                dropped += sock.recv(1) == b""
            except BlockingIOError:
                pass  # still waiting for its handshake
            except ConnectionResetError:
                dropped += 1
        assert dropped > 0
        for sock in flood:
            sock.close()
        await asyncio.sleep(0.5)
        async with aiohttp.ClientSession() as http:
            pub = await http.ws_connect(
                f"wss://127.0.0.1:{broker.port}/cameras/cam/publish",
                headers={"Authorization": f"Bearer {TOKEN}"},
                ssl=client_context(ca),
            )
            assert (await pub.receive_json())["type"] == "viewers"
            await pub.close()
    assert "no descriptor left" not in broker.log, broker.log[-2000:]
