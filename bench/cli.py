"""Command line of ``python -m bench``: arguments, scenario presets, the runs in order, the table."""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import re
import resource
import secrets
import sys
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

from . import procstat
from .cluster import ClusterResult, measure_cluster, summary
from .errors import BenchError
from .frames import synthesize
from .progress import Progress
from .report import Row, append_json, notes, receive_line, table
from .run import RunSpec, measure
from .scenarios import ALL, HD, SCENARIOS, named, scenario_help
from .servers import Server, check_reachable, started
from .target import Target
from .tls import throwaway_certificate

__all__ = ["main"]

CAMERA_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
FD_MARGIN = 256  # descriptors beyond those per client: pipes, epoll, the servers' own files

EPILOG = f"""\
scenarios (each may give several rows; --viewers replaces the client counts):
{scenario_help()}
Without --scenario and without --ws/--mjpeg/--snapshots, s1 runs.

columns:
  clients               connected/asked, per kind; "(MSG_TRUNC)" with --msg-trunc
  rate                  frames per second delivered per viewer in the window (median, min);
                        snapshot answers (200) per second, all clients together
  delivered %           frames delivered / (frames published in the window x viewers); a
                        frame counts if sent in the window, newer than the viewer's last one,
                        and received by the end of the drain
  latency ms            publisher's send() to the viewer's receipt of the JPEG's last byte
                        (snapshots: request sent to last byte), CLOCK_MONOTONIC on this host
  server CPU per item   server user+system CPU in the window (/proc/PID/stat) per delivered
                        frame or per snapshot answer; idle: RSS growth per viewer
  vs ideal              that cost divided by the ideal relay's (bench/ideal.py) in the same
                        run: the floor an implementation can reach on this machine
  server CPU % (core)   the server process's CPU over the window, and in brackets how busy
                        its core was (user+nice+system+irq+softirq from /proc/stat), which
                        includes the kernel's loopback work done on that core
  server RSS MB         peak resident memory (idle: before -> with the viewers)
  bench CPU %           all bench processes (publisher, viewers, snapshots, this one), % of
                        one core; "(bench-bound)" when its core was (nearly) full

The servers the bench starts are pinned to --server-cpu and the bench to --bench-cpu when
the machine has two cores or more. Latency uses CLOCK_MONOTONIC, so the bench and the
broker must run on the same host. CPU time comes in clock ticks (10 ms at the usual
100 Hz): small loads over short windows give rough per-item numbers. Anything unusual
(clients that could not connect or were dropped, publisher ticks skipped, frames received
twice, a bench-bound run, the server's core busy with other processes) is noted on stderr
and kept in the --json rows; MJPEG's keep-alive repeats of the newest frame are expected
and only counted there. Each published JPEG carries a stamp (sequence number, send time)
in a comment segment: see bench/stamp.py.

Clients copy every byte they receive into user space, as a browser does. --msg-trunc
discards the JPEG bytes in the kernel instead: the bench then needs far less CPU, but the
server's receive-side work shrinks too and its CPU per item reads lower than with real
viewers (25 to 50 % lower per frame in our runs). Use it only when the bench is the limit.

Other benchmarks, each with its own --help: python -m bench.grid (16 cameras to grid
viewers on /ws at a smaller size, against full-size viewers of one camera),
python -m bench.variant_cost (CPU to make each smaller size, against cv2.imencode) and
python -m bench.agent_cpu (the camera agent's CPU per frame).
"""


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, run every row, print the table."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        specs = _specs(args)
        plan = _Plan.from_args(args, specs)
    except ValueError as exc:
        parser.error(str(exc))
    progress = Progress(args.quiet)
    rows: list[Row] = []
    try:
        plan.run(specs, rows, progress)
    except BenchError as exc:
        progress.end()
        _print_results(plan, rows)
        sys.exit(f"bench: error: {exc}")
    except KeyboardInterrupt:
        progress.end()
        _print_results(plan, rows)
        sys.exit("bench: interrupted")
    _print_results(plan, rows)


def _print_results(plan: _Plan, rows: list[Row]) -> None:
    if rows:
        print(plan.machine_line())
        print(receive_line(any(row.msg_trunc for row in rows)) + "\n")
        print(table(rows), flush=True)
    if plan.cluster_results:
        print("\n" + summary(plan.cluster_results), flush=True)


class _Parser(argparse.ArgumentParser):
    """Bad arguments: one line and exit 2 (the usage would bury the reason)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m bench",
        description="Load and latency benchmark of a framebroker: one synthetic camera, many viewers; "
        "prints one Markdown table. Each run is repeated against an ideal relay as a baseline.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_argument_group("what to run")
    what.add_argument(
        "--scenario", choices=[scenario.name for scenario in SCENARIOS] + [ALL], help="a preset (see below)"
    )
    what.add_argument("--viewers", type=_counts, metavar="N[,N...]", help="client counts for the preset")
    what.add_argument(
        "--ws", type=_counts, metavar="N[,N...]", help="WebSocket viewers; each value is one row"
    )
    what.add_argument("--mjpeg", type=_count, default=0, metavar="M", help="MJPEG viewers in every row")
    what.add_argument(
        "--snapshots", type=_count, default=0, metavar="C", help="snapshot clients in every row"
    )
    what.add_argument(
        "--size", type=_size, metavar="WxH", help="frame size (default: the preset's, else 1280x720)"
    )
    what.add_argument("--fps", type=_positive, default=30.0, help="frames per second published (default 30)")
    what.add_argument("--header", action="store_true", help="WebSocket viewers ask for ?header=1")
    what.add_argument(
        "--msg-trunc",
        action="store_true",
        help="clients discard JPEG bytes in the kernel (recv with MSG_TRUNC) instead of copying them as a "
        "browser does: for when the bench is the bottleneck; the rows say so, and the server's CPU per "
        "item then reads low",
    )
    what.add_argument("--camera", default="bench", help="camera id (default bench)")
    timing = parser.add_argument_group("timing (seconds)")
    timing.add_argument(
        "--duration", metavar="S", type=_positive, default=10.0, help="measured window (default 10)"
    )
    timing.add_argument(
        "--warmup",
        metavar="S",
        type=_non_negative,
        default=1.0,
        help="before the window, not counted (default 1)",
    )
    timing.add_argument(
        "--drain", metavar="S", type=_non_negative, default=2.0, help="after publishing stops (default 2)"
    )
    timing.add_argument(
        "--settle", metavar="S", type=_positive, default=2.0, help="idle: wait before reading RSS (default 2)"
    )
    timing.add_argument(
        "--connect-timeout", metavar="S", type=_positive, default=20.0, help="for all clients to connect (20)"
    )
    target = parser.add_argument_group("server")
    target.add_argument("--url", help="measure this broker (http://host:port) instead of starting one")
    target.add_argument("--pid", type=int, help="pid of the --url broker, for its CPU and memory (same host)")
    target.add_argument("--token", help="publish token (default: $FRAMEBROKER_PUBLISH_TOKEN, or generated)")
    target.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        help="also run each row against the ideal relay (default: on, off with --url)",
    )
    machine = parser.add_argument_group("machine")
    machine.add_argument("--server-cpu", type=int, default=0, metavar="CORE", help="core for the servers (0)")
    machine.add_argument("--bench-cpu", type=int, default=1, metavar="CORE", help="core for the bench (1)")
    machine.add_argument(
        "--workers",
        type=_count,
        default=1,
        metavar="K",
        help="load processes, all on --bench-cpu (default 1)",
    )
    output = parser.add_argument_group("output")
    output.add_argument("--json", type=Path, metavar="FILE", help="append one JSON object per row to FILE")
    output.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


# -- argument types: a ValueError/ArgumentTypeError becomes "bench: error: ..." and exit 2 --------


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def _counts(text: str) -> list[int]:
    values = [_count(part) for part in text.split(",")]
    if not all(values):
        raise argparse.ArgumentTypeError(f"{text!r}: counts must be positive")
    return values


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not positive")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def _size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT")
    width, height = int(match.group(1)), int(match.group(2))
    if not (16 <= width <= 8192 and 16 <= height <= 8192):
        raise argparse.ArgumentTypeError(f"{text!r}: width and height must be 16 to 8192")
    return width, height


# -- rows -----------------------------------------------------------------------------------


def _specs(args: argparse.Namespace) -> list[RunSpec]:
    custom = args.ws is not None or args.mjpeg or args.snapshots
    if custom and args.scenario:
        raise ValueError("--scenario cannot be combined with --ws, --mjpeg or --snapshots")
    if args.viewers and custom:
        raise ValueError("--viewers goes with --scenario; give counts to --ws, --mjpeg, --snapshots directly")
    if args.fps > 240:
        raise ValueError(f"--fps {args.fps:g} is more than 240")
    if not custom:
        return _preset(args.scenario or "s1", args)
    return [
        _spec(args, "custom", ws=count, mjpeg=args.mjpeg, snapshots=args.snapshots, size=HD)
        for count in (args.ws or [0])
    ]


def _preset(name: str, args: argparse.Namespace) -> list[RunSpec]:
    return [
        _spec(
            args,
            scenario.name,
            size=scenario.size,
            idle=scenario.idle,
            tls=scenario.tls,
            **scenario.clients(count),
        )
        for scenario in named(name)
        for count in args.viewers or scenario.counts
    ]


def _spec(
    args: argparse.Namespace,
    scenario: str,
    *,
    size: tuple[int, int],
    ws: int = 0,
    mjpeg: int = 0,
    snapshots: int = 0,
    idle: bool = False,
    tls: bool = False,
) -> RunSpec:
    return RunSpec(
        scenario=scenario,
        ws=ws,
        mjpeg=mjpeg,
        snapshots=snapshots,
        size=args.size or size,
        fps=args.fps,
        duration=args.settle if idle else args.duration,
        warmup=args.warmup,
        drain=args.drain,
        header=args.header,
        idle=idle,
        connect_timeout=args.connect_timeout,
        workers=max(1, args.workers),
        tls=tls,
        truncate=args.msg_trunc,
    )


# -- the plan: servers, pinning, limits ----------------------------------------------------------


@dataclasses.dataclass
class _Plan:
    """How the rows run: against which servers, on which cores."""

    camera: str
    url: Target | None
    pid: int | None
    token: str
    baseline: bool
    server_core: int | None
    bench_core: int | None
    pinning: str
    json: Path | None
    frames: dict[tuple[int, int], list[bytes]] = dataclasses.field(default_factory=dict)
    cluster_results: list[ClusterResult] = dataclasses.field(default_factory=list)

    @classmethod
    def from_args(cls, args: argparse.Namespace, specs: list[RunSpec]) -> _Plan:
        """Check the arguments that need the machine (cores, limits, files); ValueError if bad."""
        if not CAMERA_ID.fullmatch(args.camera):
            raise ValueError(f"--camera {args.camera!r}: use 1-64 characters from A-Z a-z 0-9 _ -")
        url = _url_target(args.url, args.camera) if args.url else None
        if url is not None and any(spec.tls for spec in specs):
            raise ValueError("--scenario wss starts its own broker with a certificate: leave out --url")
        if args.pid is not None and url is None:
            raise ValueError("--pid goes with --url: the bench knows the servers it starts")
        if args.pid is not None and not Path(f"/proc/{args.pid}").exists():
            raise ValueError(f"--pid {args.pid}: no such process on this host")
        if not args.workers:
            raise ValueError("--workers must be at least 1")
        server_core, bench_core, pinning = _pinning(args, local_server=url is None)
        _check_limits(max(spec.clients for spec in specs))
        if args.json is not None:
            try:
                args.json.open("a").close()
            except OSError as exc:
                raise ValueError(f"--json {args.json}: {exc.strerror}") from None
        token = args.token or os.environ.get("FRAMEBROKER_PUBLISH_TOKEN") or ""
        if url is None:
            token = token or secrets.token_hex(16)
        baseline = args.baseline if args.baseline is not None else url is None
        return cls(args.camera, url, args.pid, token, baseline, server_core, bench_core, pinning, args.json)

    def machine_line(self) -> str:
        """The facts a reader needs to compare results."""
        cores = os.cpu_count() or 0
        return (
            f"machine: {cores} cores ({procstat.cpu_model()}), Linux {platform.release()}, "
            f"Python {platform.python_version()}; {self.pinning}"
        )

    def run(self, specs: list[RunSpec], rows: list[Row], progress: Progress) -> None:
        """Run every spec against each server, appending rows as they come."""
        if self.bench_core is not None:
            os.sched_setaffinity(0, {self.bench_core})  # the processes the bench starts inherit it
        if self.url is not None:
            check_reachable(self.url)
        for spec in specs:
            jpegs = [] if spec.idle else self._frames(spec.size)
            if spec.scenario == "cluster":
                self._run_cluster(spec, jpegs, rows, progress)
                continue
            measured = (
                self._tls_rows(spec, jpegs, progress) if spec.tls else self._rows(spec, jpegs, progress)
            )
            for row in measured:
                for line in notes(row):
                    progress.show(f"note: {line}")
                    progress.end()
            rows.extend(measured)
            if self.json is not None:
                append_json(self.json, measured)

    def _rows(self, spec: RunSpec, jpegs: list[bytes], progress: Progress) -> list[Row]:
        """The broker's row, and the ideal relay's with the baseline."""
        measured: list[Row] = []
        if self.url is not None:
            server = Server(self.url.authority, self.url, self.pid)
            measured.append(measure(spec, server, jpegs, self.token, None, progress))
        else:
            with started("broker", self.camera, self.token, self.server_core, spec.clients) as server:
                measured.append(measure(spec, server, jpegs, self.token, self.server_core, progress))
        if self.baseline:
            with started("ideal", self.camera, self.token, self.server_core, spec.clients) as server:
                ideal = measure(spec, server, jpegs, self.token, self.server_core, progress)
            cost, floor = measured[0].cost, ideal.cost
            if cost is not None and floor:
                measured[0] = dataclasses.replace(measured[0], ratio_vs_ideal=cost / floor)
            measured.append(ideal)
        return measured

    def _tls_rows(self, spec: RunSpec, jpegs: list[bytes], progress: Progress) -> list[Row]:
        """The broker over TLS, then the same broker on plain TCP (and the ideal relay): what TLS costs."""
        with (
            throwaway_certificate() as tls,
            started("broker", self.camera, self.token, self.server_core, spec.clients, tls) as server,
        ):
            over_tls = measure(
                spec,
                dataclasses.replace(server, name="broker (TLS)"),
                jpegs,
                self.token,
                self.server_core,
                progress,
            )
        plain = self._rows(spec, jpegs, progress)
        cost, floor = over_tls.cost, plain[0].cost
        if cost is not None and floor:
            over_tls = dataclasses.replace(over_tls, ratio_vs_tcp=cost / floor)
        return [over_tls, *plain]

    def _run_cluster(self, spec: RunSpec, jpegs: list[bytes], rows: list[Row], progress: Progress) -> None:
        if self.url is not None:
            raise BenchError("--scenario cluster starts its own brokers and Redis: leave out --url")
        result = measure_cluster(
            spec, jpegs, self.camera, self.token, self.server_core, self.bench_core, progress
        )
        rows.extend((result.single, result.cluster))
        self.cluster_results.append(result)
        if self.json is not None:
            append_json(self.json, [result.single, result.cluster])

    def _frames(self, size: tuple[int, int]) -> list[bytes]:
        if size not in self.frames:
            self.frames[size] = synthesize(*size)
        return self.frames[size]


def _url_target(url: str, camera: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ValueError(
            f"--url {url!r}: expected http://host:port (https and path prefixes are not supported)"
        )
    try:
        port = parts.port or 80
    except ValueError:
        raise ValueError(f"--url {url!r}: bad port") from None
    return Target(parts.hostname, port, camera)


def _pinning(args: argparse.Namespace, local_server: bool) -> tuple[int | None, int | None, str]:
    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        return None, None, f"no pinning (only {len(allowed)} core available)"
    for flag, core in (("--server-cpu", args.server_cpu), ("--bench-cpu", args.bench_cpu)):
        if core not in allowed:
            raise ValueError(f"{flag} {core}: not one of the cores available ({sorted(allowed)})")
    if args.server_cpu == args.bench_cpu:
        raise ValueError("--server-cpu and --bench-cpu must differ")
    if local_server:
        return (
            args.server_cpu,
            args.bench_cpu,
            f"server pinned to core {args.server_cpu}, bench to core {args.bench_cpu}",
        )
    server = f"ideal relay pinned to core {args.server_cpu}, " if args.baseline else ""
    return (
        args.server_cpu,
        args.bench_cpu,
        f"{server}bench pinned to core {args.bench_cpu}, the --url broker as it is",
    )


def _check_limits(clients: int) -> None:
    """Raise the open-file limit to its maximum; ValueError if the clients still cannot fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # The servers the bench starts inherit the limit; the broker holds two descriptors
    # per viewer (the connection and its own sending one).
    needed = 2 * clients + FD_MARGIN
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise ValueError(
            f"{clients} clients need about {needed} open files but the limit is {hard}: "
            "raise it (ulimit -n, or LimitNOFILE in systemd) or ask for fewer clients"
        )
    low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    if clients > high - low:
        raise ValueError(f"{clients} clients need more local ports than net.ipv4.ip_local_port_range gives")
