"""CPU per frame of the camera agent versus ``cv2.imencode`` alone on the same frames.

Run: ``python -m bench.agent_cpu``. A real broker runs in a subprocess (so its CPU is
not counted); the agent runs in this process on uvloop, as ``camera-agent`` does, and
its CPU time (all threads: capture, encode, send) is read with ``time.process_time``.
The baseline encodes the same pictures with ``cv2.imencode`` at the same quality in
the same process. Prints one Markdown table.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import uvloop

from camera_agent.agent import Agent
from camera_agent.config import AgentConfig, BrokerConfig, CameraConfig
from camera_agent.sources import open_source
from camera_agent.sources.synthetic import SyntheticSource

SIZES = ((640, 480), (1280, 720))
FPS = 30.0
QUALITY = 80
WARMUP_FRAMES = 15
MEASURED_FRAMES = 90
VIDEO_FRAMES = 60
TOKEN = "bench-token"


@dataclass(frozen=True)
class Case:
    label: str
    camera: CameraConfig
    baseline: list[np.ndarray] | SyntheticSource  # pictures to encode, or the pattern to draw


@dataclass(frozen=True)
class Row:
    label: str
    size: tuple[int, int]
    agent_ms: float
    imencode_ms: float
    frame_kb: float


def pattern_bgr(pattern: SyntheticSource, index: int) -> np.ndarray:
    """Frame ``index`` of the test pattern (drawn by Pillow, in RGB) as OpenCV's BGR array."""
    return np.ascontiguousarray(np.asarray(pattern.draw(index))[:, :, ::-1])


def camera_like(pattern: SyntheticSource, index: int, rng: np.random.Generator) -> np.ndarray:
    """The test pattern plus sensor-like noise (sigma 4): flat colour encodes unrealistically fast."""
    noise = rng.normal(0, 4, (pattern.height, pattern.width, 3))
    return np.clip(pattern_bgr(pattern, index) + noise, 0, 255).astype(np.uint8)


def write_video(path: Path, fourcc: str, frames: list[np.ndarray]) -> Path:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), FPS, (width, height))
    if not writer.isOpened():
        raise SystemExit(f"this OpenCV cannot write {fourcc} video")
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def decoded(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def cases(folder: Path) -> Iterator[Case]:
    rng = np.random.default_rng(1)
    for width, height in SIZES:
        size = (width, height)
        pattern = SyntheticSource("bench", width, height, fps=FPS, quality=QUALITY, deterministic=True)
        yield Case(
            "synthetic",
            CameraConfig(id="bench", source="synthetic", size=size, fps=FPS, quality=QUALITY, always_on=True),
            pattern,
        )
        pictures = [camera_like(pattern, i, rng) for i in range(VIDEO_FRAMES)]
        for fourcc, how in (("MJPG", "passthrough"), ("XVID", "re-encode")):
            video = write_video(folder / f"{fourcc}_{width}.avi", fourcc, pictures)
            camera = CameraConfig(
                id="bench", source="opencv", input=str(video), size=size, fps=FPS, quality=QUALITY, loop=True,
                always_on=True,
            )  # fmt: skip
            yield Case(f"opencv file, {fourcc} ({how})", camera, decoded(video))


def imencode_ms(baseline: list[np.ndarray] | SyntheticSource, frames: int) -> float:
    """CPU ms per cv2.imencode of the same pictures (drawing them is not counted)."""
    params = [cv2.IMWRITE_JPEG_QUALITY, QUALITY]
    spent = 0.0
    for i in range(frames):
        if isinstance(baseline, SyntheticSource):
            picture = pattern_bgr(baseline, i)
        else:
            picture = baseline[i % len(baseline)]
        started = time.process_time()
        cv2.imencode(".jpg", picture, params)
        spent += time.process_time() - started
    return spent / frames * 1000


async def agent_ms(case: Case, broker_url: str) -> tuple[float, float]:
    """CPU ms and kB per frame sent by a real Agent publishing to the broker."""
    config = AgentConfig(BrokerConfig(url=broker_url, token=TOKEN), (case.camera,), stats_interval=0)
    agent = Agent(config, {"bench": open_source(case.camera)})
    task = asyncio.create_task(agent.run())
    try:
        await agent.started.wait()
        stats = agent.pipelines["bench"].stats
        while stats.sent < WARMUP_FRAMES:
            await asyncio.sleep(0.01)
        cpu, sent, sent_bytes = time.process_time(), stats.sent, stats.sent_bytes
        while stats.sent < sent + MEASURED_FRAMES:
            await asyncio.sleep(0.01)
        frames = stats.sent - sent
        return (time.process_time() - cpu) / frames * 1000, (stats.sent_bytes - sent_bytes) / frames / 1000
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.contextmanager
def broker_process() -> Iterator[str]:
    """A framebroker in a subprocess on a free loopback port; yields its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "broker", "--host", "127.0.0.1", "--port", str(port),
               "--publish-token", TOKEN, "--log-level", "warning", "--no-access-log"]  # fmt: skip
    root = Path(__file__).resolve().parent.parent
    process = subprocess.Popen(command, cwd=root, env=os.environ | {"PYTHONPATH": str(root)})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit("the broker did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


async def measure(broker_url: str, folder: Path) -> list[Row]:
    rows = []
    for case in cases(folder):
        per_frame, kb = await agent_ms(case, broker_url)
        size = case.camera.size or (0, 0)
        rows.append(Row(case.label, size, per_frame, imencode_ms(case.baseline, MEASURED_FRAMES), kb))
    return rows


def main() -> None:
    with tempfile.TemporaryDirectory() as folder, broker_process() as url:
        rows = uvloop.run(measure(url, Path(folder)))
    print(f"camera-agent CPU per frame ({MEASURED_FRAMES} frames at {FPS:g} fps, q{QUALITY}, "
          f"cv2 {cv2.__version__}, {os.cpu_count()} CPUs)\n")  # fmt: skip
    print("| source | size | agent CPU ms/frame | cv2.imencode ms/frame | ratio | kB/frame |")
    print("|---|---|---:|---:|---:|---:|")
    for row in rows:
        ratio = row.agent_ms / row.imencode_ms if row.imencode_ms else float("nan")
        print(
            f"| {row.label} | {row.size[0]}x{row.size[1]} | {row.agent_ms:.2f} | "
            f"{row.imencode_ms:.2f} | {ratio:.2f} | {row.frame_kb:.0f} |"
        )


if __name__ == "__main__":
    main()
