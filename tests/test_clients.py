"""README's "Using it with other programs", run as written: ffmpeg records with its
commands, motion reads the stream with its `netcam_url`, and every URL there answers."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import signal
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from .browser_support import RED, STATIC_DIR, Camera, colour_close
from .conftest import PartReader

README = Path(__file__).resolve().parent.parent / "README.md"
EXAMPLE_BROKER = "http://broker.lan:8080"


def clients_section() -> str:
    text = README.read_text()
    start = text.index("## Using it with other programs\n")
    return text[start : text.index("\n## ", start + 1)]


def readme_commands(program: str) -> list[str]:
    """The section's shell commands that start with `program`, continuation lines joined."""
    joined = clients_section().replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.startswith(program + " ")]


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} not found: this test needs Debian's {name} package")
    return found


async def run(*command: str, timeout: float = 60) -> str:
    """Run a program without blocking the broker's event loop; its stdout."""
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, f"{command[0]} failed: {err.decode()[-2000:]}"
    return out.decode()


@pytest.fixture
async def broker(start_broker):
    return await start_broker(static_dir=STATIC_DIR)


@pytest.mark.parametrize("command", readme_commands("ffmpeg"), ids=["copy", "h264"])
async def test_ffmpeg_records_with_the_readme_command(broker, http, tmp_path, command):
    """README's ffmpeg command, for 3 s instead of an hour, records the camera's frames with
    their real timing: about 10 a second from a 10 fps camera, not the 25 ffmpeg would assume."""
    tool("ffmpeg")
    ffprobe = tool("ffprobe")
    args = shlex.split(command)
    output = tmp_path / args[-1]
    args = [broker.url(a.removeprefix(EXAMPLE_BROKER)) if a.startswith(EXAMPLE_BROKER) else a for a in args]
    args[args.index("-t") + 1] = "3"
    args[-1] = str(output)
    async with Camera(http, broker, "garden", RED, fps=10):
        await run(*args, "-nostdin", "-loglevel", "error")
    probe = json.loads(
        await run(
            ffprobe, "-v", "error", "-count_frames", "-select_streams", "v:0", "-of", "json",
            "-show_entries", "stream=nb_read_frames,width,height:format=duration", str(output),
        )
    )  # fmt: skip
    stream = probe["streams"][0]
    frames, duration = int(stream["nb_read_frames"]), float(probe["format"]["duration"])
    assert (stream["width"], stream["height"]) == (320, 240)
    assert frames >= 5
    assert 2.0 <= duration <= 3.5, duration
    assert frames / duration <= 12, (frames, duration)


@pytest.mark.parametrize("scheme", ["mjpeg", "http"])
async def test_motion_reads_the_stream_with_the_readme_netcam_url(broker, http, tmp_path, scheme):
    """motion, given README's `netcam_url` (and with `http://` in its place), saves
    snapshots of the camera's picture."""
    motion = tool("motion")
    (line,) = [line for line in clients_section().splitlines() if line.startswith("netcam_url ")]
    url = line.split()[1].replace("mjpeg://broker.lan:8080", f"{scheme}://127.0.0.1:{broker.port}")
    out = tmp_path / "out"
    out.mkdir()
    config = tmp_path / "motion.conf"
    config.write_text(
        "\n".join(
            [
                "daemon off",
                f"log_file {tmp_path}/motion.log",
                f"pid_file {tmp_path}/motion.pid",
                f"target_dir {out}",
                f"netcam_url {url}",
                "framerate 5",
                "snapshot_interval 1",
                "snapshot_filename snap-%Y%m%d%H%M%S",
                "picture_output off",
                "movie_output off",
                "webcontrol_port 0",
                "stream_port 0",
                "",
            ]
        )
    )
    async with Camera(http, broker, "garden", RED, fps=10):
        proc = await asyncio.create_subprocess_exec(
            motion, "-n", "-c", str(config),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while len(snapshots := sorted(out.glob("snap-*.jpg"))) < 2:
                assert proc.returncode is None, (tmp_path / "motion.log").read_text()
                assert time.monotonic() < deadline, (tmp_path / "motion.log").read_text()
                await asyncio.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 15)
    picture = cv2.imread(str(snapshots[0]))  # scaled to motion's own width and height
    b, g, r = picture[picture.shape[0] // 2, picture.shape[1] // 2]
    assert colour_close((int(r), int(g), int(b)), RED)


async def test_every_url_in_the_section_answers_with_a_picture_or_a_stream(broker, http):
    """Each http:// URL of the section (Home Assistant, OctoPrint, Mainsail, Fluidd,
    motionEye, VLC, go2rtc, Frigate) gets a JPEG or an MJPEG stream from a real broker."""
    found = re.findall(r"http://broker\.lan:8080/[^\s`|\"']*", clients_section())
    urls = sorted({url.split("#")[0] for url in found})  # go2rtc's "#video=h264" is for go2rtc
    assert len(urls) == 4, urls  # MJPEG and snapshot, canonical and mjpg-streamer style
    async with Camera(http, broker, "garden", RED), Camera(http, broker, "printer", RED):
        for url in urls:
            async with http.get(broker.url(url.removeprefix(EXAMPLE_BROKER))) as resp:
                assert resp.status == 200, url
                if resp.content_type == "image/jpeg":
                    jpeg = await resp.read()
                else:
                    assert resp.content_type == "multipart/x-mixed-replace", url
                    jpeg = await PartReader(resp).next_part()
            picture = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            assert picture.shape == (240, 320, 3), url
