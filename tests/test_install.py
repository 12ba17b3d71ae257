"""README's install commands, run as written in fresh virtual environments: the quick
start on the system Python, and the Raspberry Pi path next to apt's numpy.

They install from PyPI (pip's cache makes repeats quick); `-m "not install"` leaves them
out of a run, CI runs them.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import aiohttp
import pytest

pytestmark = [pytest.mark.install, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent
# What `pip install -e .` reads: the package metadata, the packages and the viewer page.
CHECKOUT = ("setup.cfg", "pyproject.toml", "README.md", "broker", "camera_agent", "static")


def readme_commands(heading: str) -> list[str]:
    """The commands of the first ```sh block under `heading` in README.md, continuations joined."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(heading + "\n") :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, f"no sh block under {heading!r}"
    joined = block[1].replace("\\\n", " ")
    return [line.split(" #")[0].strip() for line in joined.splitlines() if line.strip()]


def checkout_copy(tmp_path: Path) -> Path:
    """The project as a fresh clone has it, without this checkout's .venv or caches."""
    copy = tmp_path / "framebroker"
    copy.mkdir()
    for name in CHECKOUT:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, copy / name)
    return copy


def run(command: str, cwd: Path) -> str:
    """`command` in bash, as a user types it; its output, or a failure that shows it."""
    result = subprocess.run(
        ["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, f"{command!r} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_readme_quick_start_runs_the_demo_in_a_fresh_venv(tmp_path: Path):
    """README's quick start, as written: it makes its own virtual environment (Debian's
    python3 refuses `pip install` outside one), installs, and serves the demo camera."""
    (command,) = readme_commands("## Quick start")
    assert "python3 -m venv .venv" in command
    copy = checkout_copy(tmp_path)
    port = free_port()
    log = tmp_path / "quick-start.log"
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_shell(
            command,
            cwd=copy,
            # 8080 may be taken on this machine. The system's python3 comes first, as on a fresh
            # Debian: it refuses `pip install` outside a virtual environment.
            env={**os.environ, "FRAMEBROKER_PORT": str(port), "PATH": f"/usr/bin:{os.environ['PATH']}"},
            stdout=output,
            stderr=output,
            start_new_session=True,  # its own process group: the shell and the broker stop together
        )
    try:
        async with aiohttp.ClientSession() as http:
            while True:
                assert process.returncode is None, log.read_text()
                try:
                    async with http.get(f"http://127.0.0.1:{port}/cameras/demo/snapshot.jpg") as resp:
                        if resp.status == 200:
                            assert resp.content_type == "image/jpeg"
                            break
                except aiohttp.ClientConnectionError:
                    pass  # still installing
                await asyncio.sleep(0.5)
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 30)


def test_readme_pi_install_keeps_apt_numpy_and_pulls_no_opencv(tmp_path: Path):
    """README's Raspberry Pi commands in a venv that sees numpy 1.x outside itself, as a Pi's
    venv sees apt's python3-numpy: that numpy stays in charge, nothing of numpy, OpenCV or
    picamera2 lands in the venv, and a missing picamera2 is one clear line."""
    commands = [c for c in readme_commands("### Raspberry Pi") if not c.startswith("sudo ")]
    install = [c for c in commands if not c.startswith(".venv/bin/camera-agent")]
    assert any("--system-site-packages" in c for c in install)
    copy = checkout_copy(tmp_path)
    apt = tmp_path / "dist-packages"  # stands in for /usr/lib/python3/dist-packages
    python = copy / ".venv" / "bin" / "python"
    purelib = None  # the venv's own site-packages
    for command in install:
        run(command, copy)
        if " -m venv " in command:
            run(f"{python} -m pip install --quiet --disable-pip-version-check --target {apt} 'numpy<2'", copy)
            purelib = Path(
                run(f"{python} -c 'import sysconfig; print(sysconfig.get_path(\"purelib\"))'", copy).strip()
            )
            (purelib / "apt.pth").write_text(f"{apt}\n")  # on sys.path after the venv's own packages
    assert purelib is not None
    where = run(f"{python} -c 'import numpy; print(numpy.__version__, numpy.__file__)'", copy).split()
    assert int(where[0].split(".")[0]) < 2 and where[1].startswith(str(apt)), where
    installed = {path.name.lower() for path in purelib.iterdir()}
    assert not {n for n in installed if n.startswith(("numpy", "cv2", "opencv", "picamera2"))}, installed
    agent = subprocess.run(
        [copy / ".venv" / "bin" / "camera-agent", "--broker", "http://127.0.0.1:9", "--camera", "garden",
         "--source", "picamera2", "--token", "t"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert agent.returncode == 2
    (line,) = agent.stderr.strip().splitlines()
    assert "picamera2 cannot be imported" in line and "python3-picamera2" in line
