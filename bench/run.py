"""One run against one server: publisher and load processes, the phases, the measurements, one Row.

Phases: every client connects (the camera publishes once a second meanwhile), then
warm-up at the full frame rate (not counted), the measured window, and the drain
(publishing has stopped; frames sent in the window still count when they arrive).
Server and bench CPU are read at the window's start and end; the server's RSS every
half second. An idle run has no publisher: the server's RSS is read before the viewers
connect and again after they have been connected for the settle time.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import statistics
import time
import urllib.error
import urllib.request
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from . import procstat
from .errors import BenchError
from .loadgen import WorkerResult, WorkerSpec, work
from .progress import Progress
from .publisher import PublisherResult, publish
from .report import BENCH_BOUND_PCT, Row
from .servers import Server

__all__ = ["RunSpec", "measure"]

MAX_IN_FLIGHT = 64  # handshakes under way at once, over all load processes
RSS_INTERVAL = 0.5
PROGRESS_INTERVAL = 1.0
IDLE_LINGER = 0.5  # idle viewers stay this long after the RSS is read
STARTUP_GRACE = 30.0  # for a child process to start, beyond the connect timeout
FIRST_FRAME_TIMEOUT = 5.0


@dataclass(frozen=True)
class RunSpec:
    """What one run does (a scenario may make several)."""

    scenario: str
    ws: int
    mjpeg: int
    snapshots: int
    size: tuple[int, int]
    fps: float
    duration: float  # the measured window, or the settle time of an idle run
    warmup: float
    drain: float
    header: bool
    idle: bool
    connect_timeout: float
    workers: int
    truncate: bool  # load processes take JPEG bytes with MSG_TRUNC (see bench/client.py, Buffers)
    tls: bool = False  # the broker serves TLS (wss://), measured against itself on plain TCP

    @property
    def clients(self) -> int:
        """Every client of the run: viewers and snapshot clients."""
        return self.ws + self.mjpeg + self.snapshots

    @property
    def kind(self) -> str:
        """One of "idle", "stream", "snapshot" or "mixed"."""
        if self.idle:
            return "idle"
        if not self.snapshots:
            return "stream"
        return "mixed" if self.ws or self.mjpeg else "snapshot"


@dataclass(frozen=True)
class _Sample:
    """Counters read at one instant."""

    at: float
    server_cpu: float | None
    core: procstat.CoreTimes | None
    bench_cpu: dict[int, float]


def measure(
    spec: RunSpec,
    server: Server,
    jpegs: list[bytes],
    token: str,
    server_core: int | None,
    progress: Progress,
) -> Row:
    """Run `spec` against `server` and return its row."""
    return _Run(spec, server, jpegs, token, server_core, progress).execute()


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


def _percentiles(values_ns: Sequence[int]) -> dict[str, float] | None:
    if not values_ns:
        return None
    ordered = sorted(values_ns)
    last = len(ordered) - 1
    return {
        name: ordered[min(last, int(fraction * len(ordered)))] / 1e6
        for name, fraction in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
    }


class _Run:
    def __init__(
        self,
        spec: RunSpec,
        server: Server,
        jpegs: list[bytes],
        token: str,
        server_core: int | None,
        progress: Progress,
    ) -> None:
        self.spec = spec
        self.server = server
        self.jpegs = jpegs
        self.token = token
        self.server_core = server_core
        self.progress = progress
        self.context = multiprocessing.get_context("spawn")
        self.processes: list[BaseProcess] = []
        self.publisher: Connection | None = None
        self.workers: list[Connection] = []
        self.shared = self.context.RawArray("q", 2 * spec.workers)  # per worker: delivered, connected
        self.rss_peak = 0
        self.label = f"{spec.scenario} {server.name}"

    def execute(self) -> Row:
        try:
            if not self.spec.idle:
                self._start_publisher()
                if self.spec.mjpeg or self.spec.snapshots:
                    self._wait_first_frame()
            rss_before = self._rss()
            self._start_workers()
            return self._phases(rss_before)
        finally:
            self._stop_children()

    # -- set-up -------------------------------------------------------------------------

    def _start_publisher(self) -> None:
        here, there = self.context.Pipe()
        self.publisher = here
        args = (self.server.target, self.token, self.jpegs, self.spec.fps, self.spec.connect_timeout, there)
        self._spawn(publish, args)
        message = self._receive(here, self.spec.connect_timeout + STARTUP_GRACE, "the publisher")
        if message[0] == "error":
            raise BenchError(message[1])

    def _wait_first_frame(self) -> None:
        """MJPEG and snapshots answer 404 until the camera has published: wait for its first frame."""
        url = f"{self.server.target.url}{self.server.target.path('snapshot.jpg')}"
        deadline = time.monotonic() + FIRST_FRAME_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    response.read()
                    return
            except (OSError, urllib.error.HTTPError) as exc:
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"no frame reached {url} within {FIRST_FRAME_TIMEOUT:g} s: {exc}"
                    ) from None
                time.sleep(0.05)

    def _start_workers(self) -> None:
        spec = self.spec
        counts = zip(
            _split(spec.ws, spec.workers),
            _split(spec.mjpeg, spec.workers),
            _split(spec.snapshots, spec.workers),
            strict=True,
        )
        in_flight = max(1, MAX_IN_FLIGHT // spec.workers)
        for slot, (ws, mjpeg, snapshots) in enumerate(counts):
            worker = WorkerSpec(
                target=self.server.target,
                ws=ws,
                mjpeg=mjpeg,
                snapshots=snapshots,
                header=spec.header,
                connect_timeout=spec.connect_timeout,
                max_in_flight=in_flight,
                truncate=spec.truncate,
            )
            here, there = self.context.Pipe()
            self.workers.append(here)
            self._spawn(work, (worker, there, self.shared, slot))
        opened = 0
        failure = None
        deadline = time.monotonic() + spec.connect_timeout + STARTUP_GRACE
        waiting = list(self.workers)
        asked = spec.clients
        while waiting:
            for conn in wait(waiting, timeout=PROGRESS_INTERVAL):
                _, worker_opened, _, worker_failure = self._receive(conn, 0, "a load process")
                opened += worker_opened
                failure = failure or worker_failure
                waiting.remove(conn)
            if time.monotonic() > deadline:
                raise BenchError("the load processes did not finish connecting")
            self.progress.show(f"[{self.label}] connecting: {sum(self.shared[1::2])}/{asked}")
        if asked and not opened:
            raise BenchError(f"no client could connect to {self.server.target.url}: {failure}")

    # -- the measured phases ------------------------------------------------------------

    def _phases(self, rss_before: int | None) -> Row:
        spec = self.spec
        warmup = 0.0 if spec.idle else spec.warmup
        drain = IDLE_LINGER if spec.idle else spec.drain
        now = time.monotonic()
        start, end = now + warmup, now + warmup + spec.duration
        stop = end + drain
        ns = [round(t * 1e9) for t in (start, end, stop)]
        for conn in self.workers:
            conn.send(("window", *ns))
        if self.publisher is not None:
            self.publisher.send(("window", ns[0], ns[1]))
        first = last = None
        next_rss = next_progress = now
        previous = self._sample()
        while (now := time.monotonic()) < stop:
            if first is None and now >= start:
                first = self._sample()
            if last is None and now >= end:
                last = self._sample()
            if now >= next_rss:
                self._rss()
                next_rss += RSS_INTERVAL
            if now >= next_progress:
                previous = self._show_progress(previous, now, start, end)
                next_progress += PROGRESS_INTERVAL
            wake = min(next_rss, next_progress, stop)
            if first is None:
                wake = min(wake, start)
            if last is None:
                wake = min(wake, end)
            self._watch_publisher(max(0.0, wake - time.monotonic()))
        self.progress.end()
        assert first is not None and last is not None
        rss_after = self._rss() if spec.idle else None
        results = [self._result(conn) for conn in self.workers]
        published = self._publisher_result()
        return self._row(first, last, results, published, rss_before, rss_after)

    def _watch_publisher(self, timeout: float) -> None:
        if self.publisher is None:
            time.sleep(timeout)
            return
        if wait([self.publisher], timeout):
            message = self._receive(self.publisher, 0, "the publisher")
            raise BenchError(message[1] if message[0] == "error" else f"the publisher said {message!r}")

    def _show_progress(self, previous: _Sample, now: float, start: float, end: float) -> _Sample:
        sample = self._sample()
        if now < start:
            phase = f"warm-up {now - (start - self.spec.warmup):.1f}/{self.spec.warmup:g} s"
        elif now < end:
            phase = f"{'settle' if self.spec.idle else 'window'} {now - start:.1f}/{self.spec.duration:g} s"
        else:
            phase = f"drain {now - end:.1f}/{self.spec.drain:g} s"
        text = (
            f"[{self.label}] {phase}, clients {sum(self.shared[1::2])}/"
            f"{self.spec.clients}, delivered {sum(self.shared[0::2])}"
        )
        if sample.server_cpu is not None and previous.server_cpu is not None and sample.at > previous.at:
            text += (
                f", server CPU {(sample.server_cpu - previous.server_cpu) / (sample.at - previous.at):.0%}"
            )
        self.progress.show(text)
        return sample

    # -- results ------------------------------------------------------------------------

    def _result(self, conn: Connection) -> WorkerResult:
        message = self._receive(conn, self.spec.connect_timeout + STARTUP_GRACE, "a load process")
        return message[1]

    def _publisher_result(self) -> PublisherResult | None:
        if self.publisher is None:
            return None
        self.publisher.send(("close",))
        message = self._receive(self.publisher, STARTUP_GRACE, "the publisher")
        if message[0] == "error":
            raise BenchError(message[1])
        return message[1]

    def _row(
        self,
        first: _Sample,
        last: _Sample,
        results: list[WorkerResult],
        published: PublisherResult | None,
        rss_before: int | None,
        rss_after: int | None,
    ) -> Row:
        spec = self.spec
        window = last.at - first.at
        delivered_each = [count for result in results for count in result.delivered]
        delivered = sum(delivered_each)
        latencies = array("q")
        request_latencies = array("q")
        for result in results:
            latencies.extend(result.latencies)
            request_latencies.extend(result.request_latencies)
        requests = sum(result.requests for result in results)
        frames_out = published.published if published else 0
        server_cpu = (
            last.server_cpu - first.server_cpu
            if last.server_cpu is not None and first.server_cpu is not None
            else None
        )
        core = last.core.busy_share(first.core) if last.core and first.core else None
        bench = {pid: last.bench_cpu[pid] - first.bench_cpu.get(pid, 0.0) for pid in last.bench_cpu}
        bench_pct = 100 * sum(bench.values()) / window
        busiest_pct = 100 * max(bench.values(), default=0.0) / window
        # Bench-bound: its cores are (nearly) full, or one of its single-threaded processes is.
        cores = len(os.sched_getaffinity(0))
        bench_bound = bench_pct > BENCH_BOUND_PCT * cores or busiest_pct > BENCH_BOUND_PCT
        streaming = spec.ws + spec.mjpeg > 0 and not spec.idle
        items = (delivered if streaming else 0) + requests
        viewers = len(delivered_each)
        idle_viewers = viewers if spec.idle else 0
        width, height = spec.size
        return Row(
            scenario=spec.scenario,
            server=self.server.name,
            kind=spec.kind,
            ws=spec.ws,
            mjpeg=spec.mjpeg,
            snapshots=spec.snapshots,
            viewers_connected=viewers,
            ws_connected=sum(result.opened["ws"] for result in results),
            mjpeg_connected=sum(result.opened["mjpeg"] for result in results),
            snapshots_connected=sum(result.opened["snapshot"] for result in results),
            connect_failures=sum(result.failed for result in results),
            first_failure=next((result.failure for result in results if result.failure), None),
            lost=sum(result.lost for result in results),
            lost_reason=next((result.lost_reason for result in results if result.lost_reason), None),
            width=width,
            height=height,
            frame_bytes=round(statistics.mean(map(len, self.jpegs))) if self.jpegs else 0,
            fps=spec.fps,
            window_s=round(window, 3),
            published=frames_out,
            pub_skipped=published.skipped if published else 0,
            delivered=delivered,
            delivered_pct=100 * delivered / (frames_out * viewers)
            if streaming and frames_out and viewers
            else None,
            fps_median=statistics.median(delivered_each) / window if streaming and viewers else None,
            fps_min=min(delivered_each) / window if streaming and viewers else None,
            dups=sum(result.dups for result in results),
            keepalive_repeats=sum(result.repeats for result in results),
            malformed=sum(result.malformed + result.unstamped for result in results),
            latency_ms=_percentiles(latencies) if streaming else None,
            requests=requests,
            requests_per_s=requests / window if spec.snapshots else None,
            request_errors=sum(result.request_errors for result in results),
            request_latency_ms=_percentiles(request_latencies) if spec.snapshots else None,
            server_cpu_pct=None if server_cpu is None else 100 * server_cpu / window,
            server_core_busy_pct=None if core is None else 100 * core,
            server_us_per_item=server_cpu / items * 1e6 if server_cpu is not None and items else None,
            server_rss_mb_peak=self.rss_peak / 1e6 if self.server.pid else None,
            idle_rss_mb_before=rss_before / 1e6 if spec.idle and rss_before is not None else None,
            idle_rss_mb_after=rss_after / 1e6 if rss_after is not None else None,
            idle_rss_kb_per_viewer=(
                (rss_after - rss_before) / idle_viewers / 1000
                if rss_after is not None and rss_before is not None and idle_viewers
                else None
            ),
            bench_cpu_pct=bench_pct,
            bench_bound=bench_bound,
            msg_trunc=spec.truncate and not spec.tls,  # TLS has no MSG_TRUNC: its viewers decrypt all
        )

    # -- helpers ------------------------------------------------------------------------

    def _spawn(self, target: Any, args: tuple[Any, ...]) -> None:
        process = self.context.Process(target=target, args=args, daemon=True)
        process.start()
        self.processes.append(process)

    def _receive(self, conn: Connection, timeout: float, who: str) -> tuple[Any, ...]:
        """The next message from `who`; `timeout` 0 when it is known to be there."""
        try:
            if timeout and not conn.poll(timeout):
                raise BenchError(f"{who} did not answer within {timeout:g} s")
            return conn.recv()
        except (EOFError, OSError):
            raise BenchError(f"{who} ended unexpectedly (see its error above)") from None

    def _sample(self) -> _Sample:
        pid = self.server.pid
        bench_pids = [os.getpid(), *(p.pid for p in self.processes if p.pid is not None)]
        bench = {}
        for bench_pid in bench_pids:
            try:
                bench[bench_pid] = procstat.cpu_seconds(bench_pid)
            except OSError:
                continue  # ended already
        return _Sample(
            at=time.monotonic(),
            server_cpu=self._server_cpu(pid),
            core=procstat.core_times(self.server_core) if self.server_core is not None else None,
            bench_cpu=bench,
        )

    def _server_cpu(self, pid: int | None) -> float | None:
        if pid is None:
            return None
        try:
            return procstat.cpu_seconds(pid)
        except OSError:
            raise BenchError(f"the {self.server.name} (pid {pid}) is gone") from None

    def _rss(self) -> int | None:
        if self.server.pid is None:
            return None
        try:
            rss = procstat.rss_bytes(self.server.pid)
        except OSError:
            raise BenchError(f"the {self.server.name} (pid {self.server.pid}) is gone") from None
        self.rss_peak = max(self.rss_peak, rss)
        return rss

    def _stop_children(self) -> None:
        self.progress.end()
        for conn in [*self.workers, *([self.publisher] if self.publisher else [])]:
            with contextlib.suppress(OSError):  # that process has ended already
                conn.send(("abort",))
        for process in self.processes:
            process.join(5.0)
            if process.is_alive():
                process.terminate()
                process.join()
