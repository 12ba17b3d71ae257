"""The `framebroker` command as a user runs it: flags, environment, demo, logs, and shutdown."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import pytest

from broker.cli import main, parse_settings
from broker.config import ConfigError, Settings, settings_from_env

from .conftest import make_jpeg

SECRET = "s3cret-token-that-must-never-be-logged"


def test_help_documents_every_setting_with_its_variable(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag, env in [
        ("--host", "FRAMEBROKER_HOST"),
        ("--port", "FRAMEBROKER_PORT"),
        ("--publish-token", "FRAMEBROKER_PUBLISH_TOKEN"),
        ("--max-frame-bytes", "FRAMEBROKER_MAX_FRAME_BYTES"),
        ("--heartbeat", "FRAMEBROKER_HEARTBEAT"),
        ("--offline-after", "FRAMEBROKER_OFFLINE_AFTER"),
        ("--viewer-send-timeout", "FRAMEBROKER_VIEWER_SEND_TIMEOUT"),
        ("--viewer-sndbuf", "FRAMEBROKER_VIEWER_SNDBUF"),
        ("--static-dir", "FRAMEBROKER_STATIC_DIR"),
        ("--log-level", "FRAMEBROKER_LOG_LEVEL"),
        ("--log-format", "FRAMEBROKER_LOG_FORMAT"),
        ("--demo", "FRAMEBROKER_DEMO"),
    ]:
        assert flag in out
        assert env in out


def test_flags_win_over_environment_which_wins_over_defaults(monkeypatch):
    monkeypatch.setenv("FRAMEBROKER_PORT", "9001")
    monkeypatch.setenv("FRAMEBROKER_MAX_FRAME_BYTES", "2048")
    monkeypatch.setenv("FRAMEBROKER_DEMO", "yes")
    settings = parse_settings(["--port", "9002"])
    assert settings.port == 9002
    assert settings.max_frame_bytes == 2048
    assert settings.demo is True
    assert settings.heartbeat == Settings().heartbeat
    assert parse_settings(["--no-demo"]).demo is False


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--port", "http"], {}, "--port='http' is invalid"),
        (["--port", "70000"], {}, "port=70000 is invalid"),
        ([], {"FRAMEBROKER_HEARTBEAT": "soon"}, "FRAMEBROKER_HEARTBEAT='soon' is invalid"),
        ([], {"FRAMEBROKER_DEMO": "maybe"}, "FRAMEBROKER_DEMO='maybe' is invalid"),
        (["--log-format", "xml"], {}, "log_format='xml' is invalid: expected text or json"),
        (["--offline-after", "0"], {}, "offline_after=0.0 is invalid"),
    ],
)
def test_bad_settings_fail_fast_naming_the_setting(monkeypatch, capsys, args, env, message):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_settings_from_env_reads_only_its_prefix():
    settings = settings_from_env({"FRAMEBROKER_HOST": "0.0.0.0", "HOST": "ignored"})
    assert settings.host == "0.0.0.0"
    with pytest.raises(ConfigError, match="max_cameras=0"):
        Settings(max_cameras=0)


async def test_broker_starts_and_serves_without_opencv_numpy_or_pillow(run_broker):
    """None of them is imported to start and serve: a broker needs no image library."""
    broker = await run_broker(env={"FRAMEBROKER_PUBLISH_TOKEN": SECRET}, blocked=("cv2", "numpy", "PIL"))
    frame = make_jpeg()
    async with aiohttp.ClientSession() as http:
        auth = {"Authorization": f"Bearer {SECRET}"}
        async with http.post(broker.url("/cameras/cam/publish"), data=frame, headers=auth) as resp:
            assert resp.status == 204
        async with http.get(broker.url("/cameras/cam/snapshot.jpg")) as resp:
            assert await resp.read() == frame
        async with http.get(broker.url("/api/cameras")) as resp:
            assert [c["id"] for c in (await resp.json())["cameras"]] == ["cam"]
    broker.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(broker.proc.wait(), 10) == 0
    assert "Traceback" not in await broker.rest_of_log()


async def test_demo_serves_a_moving_picture_and_says_where(run_broker):
    """`framebroker --demo`: the log gives the URL and where the token is; the demo camera
    streams 640x480, drawn with Pillow alone (OpenCV and numpy cannot be imported here)."""
    broker = await run_broker("--demo", blocked=("cv2", "numpy"))
    assert f"http://127.0.0.1:{broker.port}/" in broker.log
    assert "agents must use the one in" in broker.log
    assert "publish-token" in broker.log
    async with aiohttp.ClientSession() as http:
        async with http.get(broker.url("/api/cameras")) as resp:
            (demo,) = (await resp.json())["cameras"]
        assert demo["id"] == "demo"
        ws = await http.ws_connect(broker.url("/cameras/demo/ws").replace("http", "ws", 1))
        frames = []
        started = time.monotonic()
        while len(frames) < 16:
            msg = await asyncio.wait_for(ws.receive(), 5)
            if msg.type == aiohttp.WSMsgType.BINARY:
                frames.append(msg.data)
        elapsed = time.monotonic() - started
        assert len(set(frames)) == len(frames)  # it moves: every frame differs
        assert elapsed < 3  # 15 frames of a 15 fps camera in about a second
        async with http.get(broker.url("/cameras/demo/snapshot.jpg")) as resp:
            assert resp.status == 200
        async with http.get(broker.url("/api/cameras")) as resp:
            (demo,) = (await resp.json())["cameras"]
        assert (demo["width"], demo["height"]) == (640, 480)
        assert demo["fps"] > 10
        await ws.close()


async def test_sigterm_closes_viewers_and_publishers_with_going_away(run_broker):
    broker = await run_broker(env={"FRAMEBROKER_PUBLISH_TOKEN": SECRET, "FRAMEBROKER_SHUTDOWN_TIMEOUT": "3"})
    async with aiohttp.ClientSession() as http:
        base = broker.url("").replace("http", "ws", 1)
        pub = await http.ws_connect(
            f"{base}/cameras/cam/publish", headers={"Authorization": f"Bearer {SECRET}"}
        )
        viewer = await http.ws_connect(f"{base}/cameras/cam/ws")
        await pub.send_bytes(make_jpeg())
        started = time.monotonic()
        broker.proc.send_signal(signal.SIGTERM)
        for ws in (viewer, pub):
            msg = await asyncio.wait_for(ws.receive(), 5)
            while msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                msg = await asyncio.wait_for(ws.receive(), 5)
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001)
        assert await asyncio.wait_for(broker.proc.wait(), 10) == 0
        assert time.monotonic() - started < 5
    assert "stopped" in await broker.rest_of_log()


async def test_tokens_never_reach_the_log(run_broker):
    """Even at debug level with the access log on, a token in `?token=` is redacted."""
    broker = await run_broker(
        "--log-level", "debug", "--log-format", "json", env={"FRAMEBROKER_PUBLISH_TOKEN": SECRET}
    )
    async with aiohttp.ClientSession() as http:
        for token in (SECRET, "wrong-" + SECRET):
            url = broker.url(f"/cameras/cam/publish?token={token}&x=1")
            async with http.post(url, data=make_jpeg()) as resp:
                assert resp.status in (204, 403)
    broker.proc.send_signal(signal.SIGINT)
    await asyncio.wait_for(broker.proc.wait(), 10)
    log = await broker.rest_of_log()
    assert "token=***" in log
    assert SECRET not in log
    assert '"level": "info"' in log  # json lines
