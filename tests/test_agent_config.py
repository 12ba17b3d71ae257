"""Agent configuration: flags, CAMERA_AGENT_* variables and the TOML file, and the CLI's
fail-fast behaviour on bad settings (exit code 2, one clear line, no traceback)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from camera_agent.backoff import Backoff, FailureLog
from camera_agent.cli import build_parser, main
from camera_agent.config import OPTIONS, BrokerConfig, CameraConfig, ConfigError, load_config

from .conftest import python_m

BASE = {"url": "http://broker:8080", "token": "t0k", "id": "garden", "source": "synthetic"}
ROOT = Path(__file__).resolve().parent.parent


def test_flag_beats_environment_beats_default():
    env = {"CAMERA_AGENT_FPS": "5", "CAMERA_AGENT_QUALITY": "60", "CAMERA_AGENT_HFLIP": "yes"}
    config = load_config({**BASE, "fps": "10"}, env)
    (camera,) = config.cameras
    assert camera.fps == 10.0
    assert camera.quality == 60
    assert camera.hflip is True
    assert camera.stall_timeout == CameraConfig.stall_timeout


def test_link_timeouts_are_settings():
    """The ping interval and the connect timeout are bounds like any other: flag and variable."""
    env = {"CAMERA_AGENT_HEARTBEAT": "7.5"}
    config = load_config({**BASE, "connect_timeout": "4"}, env)
    assert config.broker.heartbeat == 7.5
    assert config.broker.connect_timeout == 4.0
    assert load_config(BASE, {}).broker.heartbeat == BrokerConfig.heartbeat
    with pytest.raises(ConfigError, match="heartbeat"):
        load_config({**BASE, "heartbeat": "0"}, {})


def test_everything_can_come_from_the_environment():
    env = {
        "CAMERA_AGENT_BROKER": "wss://cams.example.org/broker/",
        "CAMERA_AGENT_TOKEN": "secret",
        "CAMERA_AGENT_CAMERA": "door",
        "CAMERA_AGENT_SOURCE": "synthetic",
        "CAMERA_AGENT_SIZE": "1280x720",
        "CAMERA_AGENT_ALWAYS_ON": "1",
        "CAMERA_AGENT_TRANSPORT": "http",
    }
    config = load_config({}, env)
    assert config.broker.url == "https://cams.example.org/broker"
    assert (
        config.broker.publish_url("door", websocket=True)
        == "wss://cams.example.org/broker/cameras/door/publish"
    )
    assert config.broker.transport == "http"
    assert config.cameras[0].size == (1280, 720)
    assert config.cameras[0].always_on is True


def test_every_option_has_a_flag_and_an_env_var_shown_in_help():
    text = build_parser().format_help()
    for option in OPTIONS:
        assert option.flag in text
        assert option.env in text


@pytest.mark.parametrize(
    ("broker", "expected"),
    [
        ("http://h:8080", "ws://h:8080/cameras/c/publish"),
        ("https://h", "wss://h/cameras/c/publish"),
        ("ws://h:1/", "ws://h:1/cameras/c/publish"),
    ],
)
def test_broker_url_schemes_map_to_websocket(broker: str, expected: str):
    config = load_config({**BASE, "url": broker, "id": "c"}, {})
    assert config.broker.publish_url("c", websocket=True) == expected


@pytest.mark.parametrize(
    ("flags", "env", "fragment"),
    [
        ({"source": "webcam"}, {}, "--source: bad value 'webcam': expected one of picamera2"),
        ({"size": "640by480"}, {}, "--size: bad value '640by480'"),
        ({"url": "ftp://x"}, {}, "--broker: bad value 'ftp://x'"),
        ({"url": "http://:80"}, {}, "the URL has no host"),
        ({}, {"CAMERA_AGENT_FPS": "fast"}, "CAMERA_AGENT_FPS: bad value 'fast'"),
        ({"quality": "101"}, {}, "--quality: bad value '101': expected 1 to 100"),
        ({"id": "bad id"}, {}, "--camera: bad value 'bad id'"),
        ({"backoff_initial": "5", "backoff_max": "1"}, {}, "backoff_max=1 is smaller"),
    ],
)
def test_bad_values_name_the_key_and_the_value(flags: dict[str, str], env: dict[str, str], fragment: str):
    with pytest.raises(ConfigError) as raised:
        load_config({**BASE, **flags}, env)
    assert fragment in str(raised.value)


def test_missing_token_says_where_to_set_it():
    flags = {k: v for k, v in BASE.items() if k != "token"}
    with pytest.raises(ConfigError, match=r"missing token .*--token / CAMERA_AGENT_TOKEN"):
        load_config(flags, {})


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_config_file_describes_several_cameras(tmp_path: Path):
    """[broker] + [[camera]]; the token may come from the environment; flags override the file."""
    path = write_toml(
        tmp_path,
        """
        [agent]
        stats_interval = 30

        [broker]
        url = "http://broker.lan:8080"
        transport = "ws"

        [[camera]]
        id = "garden"
        source = "synthetic"
        fps = 10
        size = [320, 240]

        [[camera]]
        id = "door"
        source = "synthetic"
        size = "640x480"
        always_on = true
        """,
    )
    config = load_config({"config": str(path), "quality": "55"}, {"CAMERA_AGENT_TOKEN": "from-env"})
    assert config.broker == BrokerConfig(url="http://broker.lan:8080", token="from-env")
    assert config.stats_interval == 30
    garden, door = config.cameras
    assert (garden.id, garden.fps, garden.size, garden.quality) == ("garden", 10.0, (320, 240), 55)
    assert (door.id, door.size, door.always_on, door.quality) == ("door", (640, 480), True, 55)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ('[[camera]]\nid = "a"\nsource = "synthetic"\nfsp = 3\n', "camera[1]: unknown key 'fsp'"),
        ('[[camera]]\nid = "a"\nsource = "synthetic"\n[[camera]]\nid = "b"\nsource = "synthetic"\nfps = -1\n',
         "camera[2].fps: bad value -1"),
        ('[[camera]]\nid = "a"\nsource = "synthetic"\n[[camera]]\nid = "a"\nsource = "synthetic"\n',
         "camera id 'a' appears twice"),
        ("[cameras]\n", "unknown table 'cameras'"),
        ("[broker\n", "not valid TOML"),
        ("", "no cameras configured"),
    ],
)  # fmt: skip
def test_config_file_errors_name_the_entry_and_key(tmp_path: Path, body: str, fragment: str):
    path = write_toml(tmp_path, '[broker]\nurl = "http://b"\ntoken = "t"\n' + body)
    with pytest.raises(ConfigError) as raised:
        load_config({"config": str(path)}, {})
    assert fragment in str(raised.value)


def test_unreadable_config_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config({"config": str(tmp_path / "missing.toml")}, {})


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--source", "webcam"], "--source: bad value 'webcam'"),
        (["--source", "opencv", "--input", "/nonexistent/clip.avi"], "no such video file"),
        (["--source", "files", "--input", "/nonexistent/folder"], "not a folder"),
        (["--broker", "gopher://x"], "--broker: bad value 'gopher://x'"),
        (["--size", "wide"], "--size: bad value 'wide'"),
    ],
)
def test_cli_fails_fast_with_exit_code_2(args: list[str], fragment: str, capsys: pytest.CaptureFixture[str]):
    argv = ["--broker", "http://127.0.0.1:9", "--token", "t", "--camera", "c", "--source", "synthetic", *args]
    assert main(argv, environ={}) == 2
    err = capsys.readouterr().err
    assert err.startswith("camera-agent: error: ")
    assert fragment in err
    assert "Traceback" not in err


def test_cli_process_exits_2_without_traceback():
    """The real command in a subprocess: exit status 2 and one line on stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMERA_AGENT_")}
    result = subprocess.run(
        [sys.executable, "-m", "camera_agent", "--broker", "http://127.0.0.1:9", "--camera", "c",
         "--source", "opencv", "--input", "/nonexistent/clip.avi", "--token", "t"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=env,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "camera-agent: error: camera 'c': input '/nonexistent/clip.avi': no such video file"
    ]


def run_agent(
    *args: str, blocked: tuple[str, ...] = (), path: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`camera-agent ARGS` in a subprocess in which the `blocked` modules cannot be imported
    and `path` comes first on sys.path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMERA_AGENT_")}
    if path is not None:
        env["PYTHONPATH"] = str(path)
    command = [
        *python_m("camera_agent", blocked),
        "--broker",
        "http://127.0.0.1:9",
        "--camera",
        "c",
        "--token",
        "t",
    ]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)


def test_opencv_source_without_opencv_is_one_line_naming_what_to_install():
    """No OpenCV installed (it is an extra now): exit 2 and one line saying how to get it."""
    result = run_agent("--source", "opencv", "--input", "0", blocked=("cv2",))
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("camera-agent: error: camera 'c': OpenCV (with numpy) cannot be imported")
    assert "'.[opencv]'" in line and "python3-opencv" in line


def test_a_broken_picamera2_is_one_line_not_a_traceback(tmp_path: Path):
    """picamera2 from apt meeting a numpy 2 from pip fails at import with a ValueError:
    exit 2 and one line that says what is wrong and how to fix it."""
    (tmp_path / "libcamera").mkdir()
    (tmp_path / "libcamera" / "__init__.py").write_text("class Transform: pass\n")
    (tmp_path / "picamera2").mkdir()
    (tmp_path / "picamera2" / "__init__.py").write_text(
        "raise ValueError('numpy.dtype size changed, may indicate binary incompatibility. "
        "Expected 96 from C header, got 88 from PyObject')\n"
    )
    result = run_agent("--source", "picamera2", path=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("camera-agent: error: camera 'c': picamera2 cannot be imported (ValueError: numpy")
    assert "pip uninstall numpy" in line and "python3-picamera2" in line


def test_cli_process_stops_cleanly_on_sigterm():
    """Under systemd: SIGTERM while retrying an unreachable broker ends with status 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMERA_AGENT_")}
    env["CAMERA_AGENT_TOKEN"] = "t"
    command = [sys.executable, "-m", "camera_agent", "--broker", "http://127.0.0.1:9", "--camera", "c",
               "--source", "synthetic", "--always-on", "--backoff-initial", "0.1",
               "--backoff-max", "0.2"]  # fmt: skip
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env) as process:
        assert process.stderr is not None
        seen = []
        for line in process.stderr:
            seen.append(line)
            if "cannot connect to 127.0.0.1:9" in line:
                break
        process.send_signal(signal.SIGTERM)
        try:
            status = process.wait(timeout=30)
        finally:
            process.kill()
        rest = process.stderr.read()
    assert status == 0, seen
    assert "stopped" in rest
    assert "Traceback" not in rest


def test_backoff_is_capped_full_jitter_and_resets():
    delays = Backoff(0.5, 4.0, rng=lambda: 1.0)
    assert [delays.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    delays.reset()
    assert delays.next_delay() == 0.5
    assert Backoff(0.5, 4.0, rng=lambda: 0.0).next_delay() == 0.0


def test_failure_log_says_each_reason_once_and_still_retrying_rarely(caplog: pytest.LogCaptureFixture):
    now = [0.0]
    failures = FailureLog(logging.getLogger("test"), "camera x", repeat_after=60, clock=lambda: now[0])
    for _ in range(10):
        failures.failed("connection refused", 1.0)
        now[0] += 1
    failures.failed("broker rejected the token", 1.0)
    now[0] += 100
    failures.failed("broker rejected the token", 1.0)
    failures.recovered("connected")
    messages = [r.getMessage() for r in caplog.records if r.name == "test"]
    assert messages == [
        "camera x: connection refused; retrying (next in 1.0s)",
        "camera x: broker rejected the token; retrying (next in 1.0s)",
        "camera x: still retrying after 12 attempts over 110s: broker rejected the token",
        "camera x: connected after 12 failed attempts over 110s",
    ]
