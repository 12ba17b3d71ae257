"""Running under systemd (Type=notify, WatchdogSec=): the broker and the agent report ready,
ping the watchdog from their event loop, and report stopping; the shipped units verify."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.systemd import ServiceNotifier

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "deploy" / "systemd"


class NotifySocket:
    """The service manager's end of $NOTIFY_SOCKET: a bound datagram socket."""

    def __init__(self, address: str) -> None:
        self.env = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)

    async def next(self, timeout: float = 15.0) -> set[str]:
        """The fields of the next message."""
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), timeout)
        return set(data.decode().split("\n"))

    async def until(self, field: str, timeout: float = 15.0) -> tuple[set[str], list[set[str]]]:
        """The first message with `field`, and the messages before it."""
        before = []
        while field not in (message := await self.next(timeout)):
            before.append(message)
        return message, before

    def waiting(self) -> list[set[str]]:
        """Every message already received, without waiting."""
        messages = []
        while True:
            try:
                messages.append(set(self.sock.recv(65536).decode().split("\n")))
            except BlockingIOError:
                return messages


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    """A notify socket in the abstract namespace (as systemd's own may be)."""
    notify = NotifySocket(f"@framebroker-test-{uuid.uuid4().hex}")
    yield notify
    notify.sock.close()


async def test_broker_reports_ready_then_pings_the_watchdog_until_it_stops(run_broker, notify_socket):
    """Under Type=notify the broker sends READY=1 once it listens, WATCHDOG=1 every half
    WatchdogSec, and STOPPING=1 on SIGTERM."""
    broker = await run_broker(env={"NOTIFY_SOCKET": notify_socket.env, "WATCHDOG_USEC": "400000"})
    ready = await notify_socket.next()
    assert ready == {"READY=1", f"STATUS=serving on port {broker.port}"}
    for _ in range(3):
        assert await notify_socket.next() == {"WATCHDOG=1"}
    broker.proc.send_signal(signal.SIGTERM)
    stopping, before = await notify_socket.until("STOPPING=1")
    assert stopping == {"STOPPING=1", "STATUS=stopping"}
    assert all(message == {"WATCHDOG=1"} for message in before)
    assert await asyncio.wait_for(broker.proc.wait(), 10) == 0
    assert notify_socket.waiting() == []  # nothing after STOPPING=1


async def test_agent_reports_ready_then_pings_the_watchdog_until_it_stops(broker, tmp_path):
    """The camera agent, started by a template unit, does the same once its cameras run."""
    notify = NotifySocket(str(tmp_path / "notify"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "camera_agent", "--broker", broker.url(""), "--camera", "garden",
        "--source", "synthetic", "--fps", "5",
        stderr=subprocess.PIPE,
        env={**os.environ, "CAMERA_AGENT_TOKEN": broker.token, "NOTIFY_SOCKET": notify.env,
             "WATCHDOG_USEC": "400000"},
    )  # fmt: skip
    try:
        ready = await notify.next()
        assert ready == {"READY=1", f"STATUS=publishing 1 camera(s) to {broker.url('')}"}
        for _ in range(3):
            assert await notify.next() == {"WATCHDOG=1"}
        proc.send_signal(signal.SIGTERM)
        await notify.until("STOPPING=1")
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        notify.sock.close()


async def test_watchdog_pings_stop_while_the_event_loop_is_stuck(notify_socket):
    """The pings come from the event loop itself: while the loop is blocked none are sent,
    so systemd would restart a stuck service; they resume when the loop runs again."""
    notifier = ServiceNotifier({"NOTIFY_SOCKET": notify_socket.env, "WATCHDOG_USEC": "100000"})
    notifier.ready("testing")
    assert "READY=1" in await notify_socket.next()
    assert await notify_socket.next() == {"WATCHDOG=1"}
    notify_socket.waiting()
    time.sleep(0.5)  # the loop is stuck for ten ping intervals
    assert notify_socket.waiting() == []
    assert await notify_socket.next() == {"WATCHDOG=1"}
    notifier.stopping()
    _, before = await notify_socket.until("STOPPING=1")
    assert all(message == {"WATCHDOG=1"} for message in before)


def test_watchdog_meant_for_another_process_is_left_alone():
    """WATCHDOG_PID names the process systemd watches; any other process does not ping."""
    other = {"NOTIFY_SOCKET": "@unused", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    assert ServiceNotifier(other).watchdog_interval is None
    mine = {**other, "WATCHDOG_PID": str(os.getpid())}
    assert ServiceNotifier(mine).watchdog_interval == 0.5
    assert ServiceNotifier({}).watchdog_interval is None


def installed_script(name: str) -> Path:
    """Where `pip install` put a console script of this project."""
    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        if (folder / name).is_file():
            return folder / name
    found = shutil.which(name)
    assert found, f"{name} is not installed: pip install -e ."
    return Path(found)


@pytest.fixture
def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze not found: the unit checks need Debian's systemd package")
    return found


def installable_unit(tmp_path: Path, shipped: str, name: str) -> Path:
    """The shipped unit as installed here: only ExecStart's folder differs (this checkout's
    virtual environment instead of /opt/framebroker/.venv)."""
    text = (UNITS / shipped).read_text()
    assert "ExecStart=/opt/framebroker/.venv/bin/" in text
    script = installed_script(name.split("@")[0].removesuffix(".service"))
    unit = tmp_path / name
    unit.write_text(text.replace("/opt/framebroker/.venv/bin/", f"{script.parent}/"))
    return unit


@pytest.mark.parametrize(
    ("shipped", "installed", "exposure"),
    [
        ("framebroker.service", "framebroker.service", 25),
        # A template is checked as an instance; device access keeps the agent a little more exposed.
        ("camera-agent@.service", "camera-agent@garden.service", 40),
    ],
)
def test_shipped_units_verify_and_are_hardened(tmp_path, systemd_analyze, shipped, installed, exposure):
    """`systemd-analyze verify` finds nothing to say about the units, and `systemd-analyze
    security` rates their exposure at most 2.5 (broker) and 4.0 (agent) of 10."""
    unit = installable_unit(tmp_path, shipped, installed)
    verify = subprocess.run(
        [systemd_analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")
    text = unit.read_text()
    for setting in ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes"):
        assert setting in text
    assert "Type=notify" in text and "WatchdogSec=" in text and "LimitNOFILE=" in text
    if shipped.startswith("camera-agent"):
        assert "SupplementaryGroups=video" in text and "DeviceAllow=char-video4linux rw" in text
    else:
        assert "StateDirectory=framebroker" in text
    security = subprocess.run(
        [systemd_analyze, "security", "--offline=yes", f"--threshold={exposure}", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert security.returncode == 0, security.stdout[-2000:]
    text = unit.read_text()
    for setting in ("Type=notify", "WatchdogSec=", "LimitNOFILE=", "NoNewPrivileges=yes",
                    "ProtectSystem=strict", "ProtectHome=", "PrivateTmp=yes", "StateDirectory="):  # fmt: skip
        assert f"\n{setting}" in text, setting
