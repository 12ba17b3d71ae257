"""``python -m bench --scenario cluster``: viewers on one node of a cluster, the publisher on another.

In the same run: one broker serving publisher and viewers (the baseline), then a Redis
started here and two nodes, the publisher on node A and the viewers on node B. Node B
is pinned to the server core, as the single broker was, so their CPU per delivered frame
compare directly; node A and Redis run on the bench's core, their CPU is reported apart.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from . import procstat
from .errors import BenchError
from .progress import Progress
from .report import Row
from .run import RunSpec, _Run
from .servers import Server, pinned, started

__all__ = ["ClusterResult", "measure_cluster", "summary"]

REDIS_START_TIMEOUT = 10.0


@dataclass(frozen=True)
class ClusterResult:
    """The two rows of one viewer count, and what node A and Redis cost meanwhile."""

    single: Row
    cluster: Row
    node_a_us_per_frame: float | None
    redis_us_per_frame: float | None


@contextlib.contextmanager
def redis_started(core: int | None) -> Iterator[tuple[str, int]]:
    """A redis-server on a free loopback port, without persistence: (URL, pid)."""
    program = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(program):
        raise BenchError("the cluster scenario needs redis-server (Debian: apt install redis-server)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder, pinned(core):
        process = subprocess.Popen(
            [program, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", folder],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + REDIS_START_TIMEOUT
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise BenchError("redis-server did not start") from None
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0", process.pid
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(10)


class _PublisherOnA(_Run):
    """A run whose viewers go to `server` (node B) and whose publisher goes to node A; it reads
    the CPU of node A and of Redis whenever it reads node B's."""

    def __init__(self, *args: object, publish_to: Server, redis_pid: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._publish_to = publish_to
        self._redis_pid = redis_pid
        self.others: list[tuple[float, float, float]] = []  # (when, node A CPU s, Redis CPU s)
        self.window: tuple[float, float] = (0.0, 0.0)

    def _phases(self, rss_before: int | None) -> Row:
        start = time.monotonic() + self.spec.warmup  # as _Run._phases reckons it
        self.window = (start, start + self.spec.duration)
        return super()._phases(rss_before)

    def _sample(self) -> Any:
        sample = super()._sample()
        assert self._publish_to.pid is not None
        self.others.append(
            (sample.at, procstat.cpu_seconds(self._publish_to.pid), procstat.cpu_seconds(self._redis_pid))
        )
        return sample

    def per_frame_in_window(self, published: int) -> tuple[float | None, float | None]:
        """µs of node A's and Redis' CPU per frame published in the window."""
        start, end = self.window
        first = next((s for s in self.others if s[0] >= start), None)
        last = next((s for s in self.others if s[0] >= end), None)
        if first is None or last is None or not published:
            return None, None
        return (last[1] - first[1]) * 1e6 / published, (last[2] - first[2]) * 1e6 / published

    def _start_publisher(self) -> None:
        viewers_server = self.server
        self.server = self._publish_to
        try:
            super()._start_publisher()
        finally:
            self.server = viewers_server


def measure_cluster(
    spec: RunSpec,
    jpegs: list[bytes],
    camera: str,
    token: str,
    server_core: int | None,
    bench_core: int | None,
    progress: Progress,
) -> ClusterResult:
    """The baseline row, then the cluster row, for `spec`."""
    with started("broker", camera, token, server_core, spec.clients) as server:
        single = _Run(spec, server, jpegs, token, server_core, progress).execute()
    with redis_started(bench_core) as (url, redis_pid):
        flags = ("--redis", url)
        with (
            started(
                "broker", camera, token, bench_core, spec.clients, flags=(*flags, "--node-name", "a")
            ) as node_a,
            started(
                "broker", camera, token, server_core, spec.clients, flags=(*flags, "--node-name", "b")
            ) as node_b,
        ):
            named = Server("node B (publisher on A)", node_b.target, node_b.pid)
            run = _PublisherOnA(
                spec, named, jpegs, token, server_core, progress, publish_to=node_a, redis_pid=redis_pid
            )
            cluster = run.execute()
    node_a_us, redis_us = run.per_frame_in_window(cluster.published)
    return ClusterResult(single, cluster, node_a_us, redis_us)


def summary(results: list[ClusterResult]) -> str:
    """Lines comparing each cluster row with the single node of the same run."""
    lines = []
    for result in results:
        single, cluster = result.single, result.cluster
        cpu = (
            f"{cluster.server_us_per_item / single.server_us_per_item:.2f}x"
            if cluster.server_us_per_item and single.server_us_per_item
            else "n/a"
        )
        p99 = (
            f"{cluster.latency_ms['p99'] - single.latency_ms['p99']:+.1f} ms"
            if cluster.latency_ms and single.latency_ms
            else "n/a"
        )
        p50 = (
            f"{cluster.latency_ms['p50'] - single.latency_ms['p50']:+.1f} ms"
            if cluster.latency_ms and single.latency_ms
            else "n/a"
        )
        lines.append(
            f"cluster, {cluster.ws} viewers: node B's CPU per delivered frame {cpu} the single node's; "
            f"latency added p50 {p50}, p99 {p99}; delivered {cluster.delivered_pct or 0:.1f} % "
            f"(single {single.delivered_pct or 0:.1f} %), duplicates {cluster.dups}; CPU per frame "
            f"published in the window: node A {result.node_a_us_per_frame or 0:.0f} µs, Redis "
            f"{result.redis_us_per_frame or 0:.0f} µs"
        )
    return "\n".join(lines)
