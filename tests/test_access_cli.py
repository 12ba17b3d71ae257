"""`framebroker hash-password`, `framebroker share`, `--public`, and secrets kept out of every log line."""

from __future__ import annotations

import asyncio
import base64
import os
import pty
import re
import signal
import subprocess
import sys
import time

import aiohttp
import yarl

from broker.passwords import PasswordHash

from .access_support import GARDEN_TOKEN, PASSWORDS, basic, family_config, password_hash
from .conftest import make_jpeg


def test_hash_password_reads_a_piped_password():
    """Not a terminal: the first line of standard input is the password; the hash verifies it."""
    result = subprocess.run(
        [sys.executable, "-m", "broker", "hash-password"],
        input="correct horse battery staple\n",
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    stored = PasswordHash.parse(result.stdout.strip())
    assert stored.verify("correct horse battery staple")
    assert not stored.verify("correct horse battery stapler")
    assert stored.log_n >= 15  # memory-hard: 32 MiB per guess at least


def test_hash_password_asks_twice_without_echo_on_a_terminal():
    """On a terminal the password is typed twice and never shown."""
    parent, child = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "broker", "hash-password"],
        stdin=child,
        stdout=child,
        stderr=child,
        start_new_session=True,
    )
    os.close(child)
    screen = b""

    def read_until(marker: bytes) -> None:
        nonlocal screen
        deadline = time.monotonic() + 20
        while marker not in screen:
            assert time.monotonic() < deadline, screen
            screen += os.read(parent, 1024)

    read_until(b"password: ")
    os.write(parent, b"typed-secret-9\n")
    read_until(b"again: ")
    os.write(parent, b"typed-secret-9\n")
    read_until(b"scrypt$")
    assert process.wait(20) == 0
    try:
        while chunk := os.read(parent, 1024):
            screen += chunk
    except OSError:  # the terminal closed with the process
        pass
    os.close(parent)
    assert b"typed-secret-9" not in screen
    (line,) = [line for line in screen.decode().splitlines() if line.startswith("scrypt$")]
    assert PasswordHash.parse(line).verify("typed-secret-9")


def test_hash_password_refuses_an_empty_password():
    result = subprocess.run(
        [sys.executable, "-m", "broker", "hash-password"],
        input="\n",
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 2
    assert "empty password" in result.stderr


async def test_share_prints_three_links_that_work_without_an_account(start_broker, http, tmp_path):
    """`framebroker share garden --ttl 1h` prints page, mjpeg and snapshot links for garden alone."""
    config = family_config(tmp_path)
    broker = await start_broker(config=config, state_dir=tmp_path / "state")
    async with http.post(
        broker.url("/cameras/garden/publish"),
        data=make_jpeg(),
        headers={"Authorization": f"Bearer {GARDEN_TOKEN}"},
    ) as resp:
        assert resp.status == 204
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "broker", "share", "garden", "--ttl", "1h", "--config", str(config),
         "--base-url", broker.url("/")],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, "FRAMEBROKER_STATE_DIR": str(tmp_path / "state")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    links = dict(line.split(": ", 1) for line in result.stdout.strip().splitlines())
    assert list(links) == ["page", "mjpeg", "snapshot"]
    async with http.get(links["snapshot"]) as resp:
        assert (resp.status, resp.headers["Content-Type"]) == (200, "image/jpeg")
    async with http.get(links["mjpeg"]) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("multipart/x-mixed-replace")
    async with http.get(links["page"]) as resp:
        assert resp.status == 200
    door = links["snapshot"].replace("/garden/", "/door/")
    async with http.get(door) as resp:
        assert resp.status == 403


async def test_share_with_another_state_dir_makes_no_key_and_says_where_it_looked(start_broker, tmp_path):
    """`framebroker share` given a state directory the broker does not use: no links (they would be
    refused) and no new key there, but exit 2 with one line naming where it looked and what to do."""
    await start_broker(config=family_config(tmp_path), state_dir=tmp_path / "state")
    other = tmp_path / "state_new"
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "broker", "share", "garden", "--ttl", "1h", "--config",
         str(tmp_path / "broker.toml"), "--state-dir", str(other)],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert result.returncode == 2
    assert (result.stdout, result.stderr.splitlines()) == ("", [
        f"framebroker: error: no signing key in {other / 'secret.key'}: the broker makes it there at its "
        f"first start. Start the broker once with --state-dir {other}, or give share the broker's own "
        "--state-dir (or the secret_file or FRAMEBROKER_SECRET the broker has)"
    ])  # fmt: skip
    assert not other.exists()


def test_share_refuses_a_bad_camera_or_ttl(tmp_path):
    env = {**os.environ, "FRAMEBROKER_STATE_DIR": str(tmp_path)}
    for args, message in (
        (["no/such"], "camera='no/such' is invalid"),
        (["g", "--ttl", "soon"], "--ttl='soon'"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "broker", "share", *args],
            capture_output=True,
            text=True,
            timeout=20,
            env=env,
        )
        assert result.returncode == 2
        assert message in result.stderr


async def test_public_broker_warns_at_every_start(run_broker):
    broker = await run_broker("--public", env={})
    assert re.search(r"WARNING .*--public: anyone who can reach this broker may watch", broker.log)


async def unparsable(port: int, request: bytes) -> bool:
    """Whether the broker answers 400 to raw `request` bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    status = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    return status.split(b" ", 2)[1] == b"400"


async def test_no_secret_reaches_any_log_line(run_broker, tmp_path):
    """At debug level with the access log on: passwords, tokens, hashes, share links, cookies, the key."""
    config = family_config(tmp_path)
    signing_key = "signing-key-Qz81-never-logged"
    broker_token = "broker-token-Vw63-never-logged"
    broker = await run_broker(
        "--config", str(config), "--log-level", "debug", "--access-log",
        env={"FRAMEBROKER_SECRET": signing_key, "FRAMEBROKER_PUBLISH_TOKEN": broker_token},
    )  # fmt: skip
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        for token in (GARDEN_TOKEN, broker_token, "wrong-" + GARDEN_TOKEN):
            for how in ("query", "header"):
                url = broker.url("/cameras/garden/publish") + (f"?token={token}" if how == "query" else "")
                headers = {} if how == "query" else {"Authorization": f"Bearer {token}"}
                async with http.post(url, data=make_jpeg(), headers=headers) as resp:
                    assert resp.status in (204, 403)
        # Tokens in malformed queries and path parameters: refused, and still not logged.
        for where in (
            "?token%3D{}",
            "?%74oken={}",
            "?TOKEN={}",
            "?x=a%26token%3D{}",
            ";token={}",
            "?share%3d{}",
        ):
            url = broker.url("/cameras/garden/publish") + where.format(broker_token)
            async with http.post(yarl.URL(url, encoded=True), data=make_jpeg()) as resp:
                assert resp.status in (401, 403, 404)
        for name, password in (("alice", PASSWORDS["alice"]), ("alice", "wrong-" + PASSWORDS["alice"])):
            async with http.get(
                broker.url("/cameras/garden/snapshot.jpg"), headers=basic(name, password)
            ) as resp:
                assert resp.status in (200, 401)
        async with http.post(
            broker.url("/login"), data={"username": "bob", "password": PASSWORDS["bob"]}
        ) as resp:
            assert resp.status == 200
            cookie = resp.cookies["framebroker_session"].value
        async with http.get(broker.url("/cameras/door/snapshot.jpg")) as resp:
            assert resp.status in (200, 404)
        async with http.post(broker.url("/logout")) as resp:
            assert resp.status == 200
        share = subprocess.run(
            [sys.executable, "-m", "broker", "share", "garden", "--config", str(config)],
            capture_output=True, text=True, timeout=20,
            env={**os.environ, "FRAMEBROKER_SECRET": signing_key},
        ).stdout  # fmt: skip
        share_token = re.search(r"share=([^&#\s]+)", share).group(1)
        for token in (share_token, share_token[:-2] + "xx"):
            async with http.get(broker.url(f"/cameras/garden/snapshot.jpg?share={token}")) as resp:
                assert resp.status in (200, 403)
    # Requests aiohttp cannot parse, carrying secrets: its error log would quote the bad line.
    alice = base64.b64encode(f"alice:{PASSWORDS['alice']}".encode())
    port = int(broker.url("/").rsplit(":", 1)[1].strip("/"))
    for head in (
        b"Authorization: Bearer %s\x7f" % GARDEN_TOKEN.encode(),
        b"Authorization: Basic %s\x0b" % alice,
    ):
        assert await unparsable(port, b"GET /cameras/garden/snapshot.jpg HTTP/1.1\r\n" + head + b"\r\n\r\n")
    for query in (b"token=%s&x=\x01" % broker_token.encode(), b"share=%s\xff" % share_token.encode()):
        assert await unparsable(port, b"GET /cameras/garden/snapshot.jpg?" + query + b" HTTP/1.1\r\n\r\n")
    broker.proc.send_signal(signal.SIGINT)
    await asyncio.wait_for(broker.proc.wait(), 10)
    log = await broker.rest_of_log()
    assert "DEBUG" in log and '"POST /login' in log
    assert "answered 400 to an unreadable request" in log
    assert "ERROR" not in log and "Traceback" not in log
    stored_hashes = [password_hash(name) for name in PASSWORDS]
    secrets = [
        *PASSWORDS.values(), GARDEN_TOKEN, broker_token, signing_key, cookie, share_token, alice.decode(),
        *stored_hashes, *(part for h in stored_hashes for part in h.split("$")[2:]),
    ]  # fmt: skip
    for secret in secrets:
        for piece in {secret, secret[:8], secret[-8:]}:
            assert piece not in log, f"{piece!r} (part of a secret) is in the log"


def test_share_links_of_a_broker_with_tls_are_https(tmp_path):
    """Without --base-url, the links name the broker's own scheme, host and port."""
    env = {
        **os.environ,
        "FRAMEBROKER_SECRET": "the-key-of-the-broker-with-tls",
        "FRAMEBROKER_PORT": "8443",
        "FRAMEBROKER_TLS_CERT": str(tmp_path / "fullchain.pem"),
        "FRAMEBROKER_TLS_KEY": str(tmp_path / "privkey.pem"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "broker", "share", "garden"],
        capture_output=True,
        text=True,
        timeout=20,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    for line in result.stdout.splitlines():
        assert line.split(": ", 1)[1].startswith("https://127.0.0.1:8443/"), line
