"""Many cameras on one screen: grid viewers on /ws at a smaller size, against full-size viewers of one camera.

Run: ``python -m bench.grid``. It starts the broker pinned to core 0 (the bench runs
on core 1), publishes camera-like 1280x720 JPEGs at 15 fps from 16 cameras, and
connects 100 viewers, each one WebSocket on /ws subscribed to all 16 cameras at
320 pixels wide. The baseline, in the same run, is 100 viewers of one camera's own
WebSocket at full size. Rows give what each viewer received per second, the broker's
CPU per delivered frame (all its threads, the resizing included) and, for the grid,
how many variants the broker made per source frame: one per (camera, size) and
frame, whatever the number of viewers. Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import secrets
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

from . import procstat
from .errors import BenchError
from .frames import synthesize
from .gridviewers import GridResult, watch
from .publisher import publish
from .servers import Server, pinned, started
from .target import Target

__all__ = ["main"]

SIZE = (1280, 720)
SERVER_CORE, BENCH_CORE = 0, 1
TIMEOUT = 30.0


@dataclass(frozen=True)
class Row:
    scenario: str
    cameras: int
    viewers: int
    subscriptions: int  # per viewer
    fps_per_viewer: float  # frames received per viewer per second (median)
    kb_per_viewer: float  # kB per viewer per second (median)
    latency_ms: tuple[float, float]  # broker receipt to last byte: p50, p99
    cpu_share: float  # broker CPU over the window, fraction of one core
    core_busy: float | None  # how busy its core was, other processes included
    cpu_us_per_frame: float
    made_per_frame: float | None  # variants made per source frame (grid only)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.grid", description=__doc__.split(":")[0])
    parser.add_argument("--cameras", type=int, default=16, help="cameras in the grid (16)")
    parser.add_argument("--viewers", type=int, default=100, help="viewers in each row (100)")
    parser.add_argument("--width", type=int, default=320, help="width the grid viewers ask for (320)")
    parser.add_argument("--fps", type=float, default=15.0, help="frames per second per camera (15)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured window, seconds (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="before the window, seconds (2)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of both rows, interleaved (1)")
    args = parser.parse_args(argv)
    jpegs = synthesize(*SIZE)
    rows: list[Row] = []
    try:
        for _ in range(args.repeat):
            for grid in (True, False):
                rows.append(_run(args, jpegs, grid))
                print(f"done: {rows[-1].scenario}", file=sys.stderr)
    except BenchError as exc:
        sys.exit(f"bench.grid: error: {exc}")
    _print(rows, args, jpegs)


def _run(args: argparse.Namespace, jpegs: list[bytes], grid: bool) -> Row:
    cameras = [f"cam{index:02}" for index in range(args.cameras if grid else 1)]
    token = secrets.token_urlsafe(16)
    context = multiprocessing.get_context("spawn")
    children: list[BaseProcess] = []
    with pinned(BENCH_CORE), started("broker", cameras[0], token, SERVER_CORE, args.viewers) as server:
        try:
            targets = [Target(server.target.host, server.target.port, camera) for camera in cameras]
            publishers = [
                _spawn(context, children, publish, target, token, jpegs, args.fps, TIMEOUT)
                for target in targets
            ]
            for conn in publishers:
                _expect(conn, "ready")
            viewers = _spawn(context, children, watch, server.target, args.viewers, cameras, args.width)
            _, connected, failure = _expect(viewers, "ready")
            if connected < args.viewers:
                raise BenchError(f"{args.viewers - connected} viewers could not connect: {failure}")
            now, now_ns = time.time(), time.monotonic_ns()
            start, end = now + args.warmup, now + args.warmup + args.duration
            viewers.send(("window", start, end))
            # Full rate from the warm-up on (a frame a second until then), past the window's end.
            publishing_ends = now_ns + round((args.warmup + args.duration + 1) * 1e9)
            for conn in publishers:
                conn.send(("window", now_ns, publishing_ends))
            time.sleep(max(0.0, start - time.time()))
            cpu_before, made_before = procstat.cpu_seconds(_pid(server)), _made(server, cameras)
            core_before = procstat.core_times(SERVER_CORE)
            time.sleep(max(0.0, end - time.time()))
            cpu_after, made_after = procstat.cpu_seconds(_pid(server)), _made(server, cameras)
            core_busy = procstat.core_times(SERVER_CORE).busy_share(core_before)
            result: GridResult = _expect(viewers, "result")[1]
            for conn in publishers:
                conn.send(("close",))
        finally:
            for child in children:
                child.join(5)
                if child.is_alive():
                    child.kill()
    return _row(args, grid, cameras, result, cpu_after - cpu_before, core_busy, made_before, made_after)


def _spawn(
    context: BaseContext, children: list[BaseProcess], target: Callable[..., None], *args: Any
) -> Connection:
    """Start `target(*args, pipe)` in a process of its own; the main end of the pipe."""
    here, there = context.Pipe()
    process = context.Process(target=target, args=(*args, there), daemon=True)
    process.start()
    children.append(process)
    return here


def _expect(conn: Connection, kind: str) -> tuple:
    if not conn.poll(TIMEOUT + 30):
        raise BenchError(f"no {kind!r} from a bench process")
    message = conn.recv()
    if message[0] == "error":
        raise BenchError(message[1])
    if message[0] != kind:
        raise BenchError(f"expected {kind!r}, got {message!r}")
    return message


def _pid(server: Server) -> int:
    assert server.pid is not None
    return server.pid


def _made(server: Server, cameras: list[str]) -> tuple[int, int]:
    """Source frames received and variant frames made, over all the cameras."""
    frames = made = 0
    for camera in cameras:
        with urllib.request.urlopen(f"{server.target.url}/api/cameras/{camera}", timeout=5) as response:
            detail = json.load(response)
        frames += detail["frames"]
        made += sum(variant["frames_made"] for variant in detail["variants"])
    return frames, made


def _row(
    args: argparse.Namespace,
    grid: bool,
    cameras: list[str],
    result: GridResult,
    cpu: float,
    core_busy: float | None,
    made_before: tuple[int, int],
    made_after: tuple[int, int],
) -> Row:
    delivered = sum(result.frames)
    latencies = sorted(result.latencies_ms) or [0.0]
    sources = made_after[0] - made_before[0]
    made = made_after[1] - made_before[1]
    return Row(
        scenario=f"grid: /ws, {len(cameras)} cameras at {args.width} px" if grid else "one camera, full size",
        cameras=len(cameras),
        viewers=result.connected,
        subscriptions=len(cameras),
        fps_per_viewer=statistics.median(result.frames) / args.duration,
        kb_per_viewer=statistics.median(result.bytes) / args.duration / 1000,
        latency_ms=(latencies[len(latencies) // 2], latencies[int((len(latencies) - 1) * 0.99)]),
        cpu_share=cpu / args.duration,
        core_busy=core_busy,
        cpu_us_per_frame=cpu / delivered * 1e6 if delivered else float("nan"),
        made_per_frame=made / sources if grid and sources else None,
    )


def _print(rows: list[Row], args: argparse.Namespace, jpegs: list[bytes]) -> None:
    kb = statistics.mean(map(len, jpegs)) / 1000
    print(
        f"machine: {procstat.cpu_model()}; broker pinned to core 0, bench to core 1; cameras "
        f"{SIZE[0]}x{SIZE[1]} (~{kb:.0f} kB) at {args.fps:g} fps; window {args.duration:g} s\n"
    )
    print("| scenario | viewers x subscriptions | frames per viewer | kB/s per viewer | latency ms p50 / p99 "
          "| broker CPU % (core) | CPU per delivered frame | vs full size | variants made per source frame |")
    print("|---|---|---:|---:|---|---:|---:|---:|---:|")
    baselines = [row for row in rows if row.made_per_frame is None]
    for index, row in enumerate(rows):
        baseline = baselines[min(index // 2, len(baselines) - 1)]
        # A short run can measure no CPU at all (clock ticks are 10 ms): no ratio then.
        comparable = row is not baseline and baseline.cpu_us_per_frame > 0
        ratio = f"{row.cpu_us_per_frame / baseline.cpu_us_per_frame:.2f}x" if comparable else ""
        made = f"{row.made_per_frame:.2f}" if row.made_per_frame is not None else ""
        core = f"{row.core_busy * 100:.0f}" if row.core_busy is not None else "?"
        print(
            f"| {row.scenario} | {row.viewers} x {row.subscriptions} | {row.fps_per_viewer:.1f} fps "
            f"| {row.kb_per_viewer:,.0f} | {row.latency_ms[0]:.1f} / {row.latency_ms[1]:.1f} "
            f"| {row.cpu_share * 100:.0f} ({core}) | {row.cpu_us_per_frame:.1f} µs | {ratio} | {made} |"
        )


if __name__ == "__main__":
    main()
