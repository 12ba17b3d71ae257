"""The grid benchmark and the variant-cost benchmark: the grid viewers' parser, and short real runs."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.gridviewers import GRID_HEADER, GridResult, GridViewer, parse
from bench.wsproto import OP_BINARY, OP_PING, OP_TEXT, frame_header, parse_header

ROOT = Path(__file__).resolve().parent.parent


def grid_message(stream: int, seq: int, received_ms: float, jpeg: bytes) -> bytes:
    payload = struct.pack("!IHHQd", stream, 320, 70, seq, received_ms) + jpeg
    return frame_header(OP_BINARY, len(payload)) + payload


@pytest.mark.parametrize("chunk", [1, 2, 5, 23, 24, 25, 100, 4096, 1 << 20])
def test_grid_viewer_counts_every_frame_however_the_bytes_arrive(chunk: int) -> None:
    """Frames of 10, 200 and 70,000 bytes between a status message and a ping, delivered in
    reads of any size: each counted once, with its latency; the ping answered."""
    text = json.dumps({"type": "status", "camera": "a", "online": True}).encode()
    now_ms = time.time() * 1000
    stream = (
        frame_header(OP_TEXT, len(text)) + text
        + grid_message(1, 1, now_ms - 5, b"x" * 10)
        + frame_header(OP_PING, 4) + b"ping"
        + grid_message(2, 7, now_ms - 5, b"y" * 200)
        + grid_message(1, 2, now_ms - 5, b"z" * 70_000)
    )  # fmt: skip
    ours, theirs = socket.socketpair()
    with ours, theirs:
        viewer = GridViewer(ours, GRID_HEADER)
        result = GridResult(1)
        view = memoryview(stream)
        for pos in range(0, len(stream), chunk):
            parse(viewer, view[pos : pos + chunk], 0.0, time.time() + 60, result)
        assert viewer.frames == 3
        assert viewer.bytes == len(stream)
        assert all(0 <= latency < 60_000 for latency in result.latencies_ms)
        pong = theirs.recv(100)
        opcode, length, mask = parse_header(pong)
        unmasked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(pong[-length:]))
        assert (opcode, unmasked) == (0xA, b"ping")


def test_grid_bench_runs_and_makes_each_variant_once_per_frame() -> None:
    """Two cameras, three grid viewers, one second: both rows print, and the grid made one
    variant per source frame."""
    command = [sys.executable, "-m", "bench.grid", "--cameras", "2", "--viewers", "3",
               "--duration", "1.5", "--warmup", "0.5"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith(("| grid", "| one"))]
    assert len(rows) == 2, done.stdout
    grid, full = (row.split("|")[1:-1] for row in rows)
    assert grid[1].strip() == "3 x 2" and full[1].strip() == "3 x 1"
    made = float(grid[-1])
    assert 0.8 <= made <= 1.2  # once per frame, not once per viewer (3)


def test_variant_cost_bench_prints_each_width_against_imencode() -> None:
    command = [sys.executable, "-m", "bench.variant_cost", "--frames", "3", "--repeat", "1"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "| cv2.imencode of the full 1280x720 picture (baseline) | 1280x720" in done.stdout
    assert "| broker: 320 wide (shrink_jpeg) | 320x180" in done.stdout
