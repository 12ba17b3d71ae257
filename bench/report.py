"""The results: one row per run, printed as one Markdown table and optionally appended as JSON lines."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Row", "append_json", "notes", "receive_line", "table"]

BENCH_BOUND_PCT = 90.0
# The server's core busier than the server itself by more than this (percentage points):
# another process ran there, on a shared machine, and the row is not to be trusted.
SHARED_CORE_PCT = 15.0
MSG_TRUNC_LABEL = "MSG_TRUNC"


@dataclass(frozen=True)
class Row:
    """Everything measured in one run, derived numbers included; None where it does not apply.

    `kind` is "stream" (viewers only), "snapshot" (snapshot clients only), "mixed" or "idle".
    Times are in ms, CPU per item in µs of server CPU (user + system) per delivered frame,
    per 200 response, or per either ("mixed").
    """

    scenario: str
    server: str
    kind: str
    ws: int
    mjpeg: int
    snapshots: int
    viewers_connected: int  # ws + mjpeg
    ws_connected: int
    mjpeg_connected: int
    snapshots_connected: int
    connect_failures: int
    first_failure: str | None
    lost: int
    lost_reason: str | None
    width: int
    height: int
    frame_bytes: int
    fps: float
    window_s: float
    published: int
    pub_skipped: int
    delivered: int
    delivered_pct: float | None
    fps_median: float | None
    fps_min: float | None
    dups: int  # frames of the window received again or after a newer one
    keepalive_repeats: int  # MJPEG's keep-alive: the newest frame repeated (not a duplicate)
    malformed: int
    latency_ms: dict[str, float] | None  # p50, p90, p99, max
    requests: int
    requests_per_s: float | None
    request_errors: int
    request_latency_ms: dict[str, float] | None
    server_cpu_pct: float | None
    server_core_busy_pct: float | None
    server_us_per_item: float | None
    server_rss_mb_peak: float | None
    idle_rss_mb_before: float | None
    idle_rss_mb_after: float | None
    idle_rss_kb_per_viewer: float | None
    bench_cpu_pct: float
    bench_bound: bool
    msg_trunc: bool  # the clients discarded JPEG bytes in the kernel instead of copying them
    ratio_vs_ideal: float | None = None
    ratio_vs_tcp: float | None = None  # a TLS row's cost divided by the same broker's on plain TCP

    @property
    def cost(self) -> float | None:
        """The number compared with the ideal relay: CPU per item, or RSS per idle viewer."""
        return self.idle_rss_kb_per_viewer if self.kind == "idle" else self.server_us_per_item


def append_json(path: Path, rows: Iterable[Row]) -> None:
    """Append one JSON object per row to `path`."""
    with path.open("a", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(dataclasses.asdict(row)) + "\n")


def notes(row: Row) -> list[str]:
    """What a reader of the row should know that the table does not show."""
    who = f"{row.scenario} {row.server}"
    found = []
    if row.connect_failures:
        found.append(f"{who}: {row.connect_failures} clients could not connect ({row.first_failure})")
    if row.lost:
        found.append(f"{who}: {row.lost} clients were disconnected during the run ({row.lost_reason})")
    if row.pub_skipped:
        found.append(f"{who}: the publisher skipped {row.pub_skipped} of its ticks in the window")
    if row.dups:
        found.append(f"{who}: {row.dups} frames arrived again or out of order (not counted as delivered)")
    if row.malformed:
        found.append(f"{who}: {row.malformed} WebSocket messages had no stamp or a wrong length")
    if row.request_errors:
        found.append(f"{who}: {row.request_errors} snapshot requests were not answered 200")
    if (
        row.server_cpu_pct is not None
        and row.server_core_busy_pct is not None
        and row.server_core_busy_pct - row.server_cpu_pct > SHARED_CORE_PCT
    ):
        found.append(
            f"{who}: the server's core was {row.server_core_busy_pct:.0f} % busy but the server used "
            f"{row.server_cpu_pct:.0f} %: other processes shared its core, repeat this row"
        )
    if row.bench_bound:
        found.append(
            f"{who}: the bench used {row.bench_cpu_pct:.0f} % CPU: it may be the limit, not the server"
        )
    return found


_HEADER = (
    "scenario",
    "server",
    "clients (connected/asked)",
    "frame kB",
    "rate",
    "delivered %",
    "latency ms p50 / p90 / p99",
    "server CPU per item",
    "vs ideal",
    "server CPU % (core)",
    "server RSS MB",
    "bench CPU %",
)
_TLS_COLUMN = "TLS vs TCP"  # only in tables with a TLS row
_RIGHT = frozenset(("frame kB", "delivered %", "vs ideal", _TLS_COLUMN, "server RSS MB", "bench CPU %"))


def receive_line(msg_trunc: bool) -> str:
    """How the clients received, for the line above the table."""
    if msg_trunc:
        return (
            f"clients: {MSG_TRUNC_LABEL} (--msg-trunc): JPEG bytes discarded in the kernel, not copied as a "
            "browser does; the server's CPU per item reads lower than with real viewers"
        )
    return "clients: every byte received into user space, as a browser does"


def table(rows: Iterable[Row]) -> str:
    """The rows as one Markdown table."""
    rows = list(rows)
    header = list(_HEADER)
    # With a TLS row the column is there even when its ratio could not be measured (a run too
    # short for the CPU clock's 10 ms ticks): "-" then, rather than a table of another shape.
    with_tls = any(row.ratio_vs_tcp is not None or row.server.endswith("(TLS)") for row in rows)
    tls_at = header.index("vs ideal") + 1 if with_tls else None
    if tls_at is not None:
        header.insert(tls_at, _TLS_COLUMN)
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if name in _RIGHT else "---" for name in header) + "|",
    ]
    for row in rows:
        cells = _cells(row)
        if tls_at is not None:
            cells.insert(tls_at, "-" if row.ratio_vs_tcp is None else f"{row.ratio_vs_tcp:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cells(row: Row) -> list[str]:
    return [
        row.scenario,
        row.server,
        _clients(row),
        "-" if row.kind == "idle" else f"{row.frame_bytes / 1000:.0f}",
        _rate(row),
        "-" if row.delivered_pct is None else f"{row.delivered_pct:.1f}",
        _latency(row.latency_ms or row.request_latency_ms),
        _per_item(row),
        "-" if row.ratio_vs_ideal is None else f"{row.ratio_vs_ideal:.2f}x",
        _server_cpu(row),
        _rss(row),
        f"{row.bench_cpu_pct:.0f}" + (" (bench-bound)" if row.bench_bound else ""),
    ]


def _clients(row: Row) -> str:
    if row.kind == "idle":
        return f"{row.ws_connected}/{row.ws} idle ws"
    counts = (
        (row.ws_connected, row.ws, "ws"),
        (row.mjpeg_connected, row.mjpeg, "mjpeg"),
        (row.snapshots_connected, row.snapshots, "snapshot"),
    )
    clients = ", ".join(f"{connected}/{asked} {name}" for connected, asked, name in counts if asked)
    return f"{clients} ({MSG_TRUNC_LABEL})" if row.msg_trunc else clients


def _rate(row: Row) -> str:
    parts = []
    if row.fps_median is not None:
        parts.append(f"{row.fps_median:.1f} fps/viewer (min {row.fps_min:.1f})")
    if row.requests_per_s is not None:
        parts.append(f"{row.requests_per_s:.0f} req/s")
    return ", ".join(parts) or "-"


def _latency(latency: dict[str, float] | None) -> str:
    if not latency:
        return "-"
    return " / ".join(_ms(latency[key]) for key in ("p50", "p90", "p99"))


def _ms(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _per_item(row: Row) -> str:
    if row.kind == "idle":
        return (
            "n/a" if row.idle_rss_kb_per_viewer is None else f"{row.idle_rss_kb_per_viewer:.1f} kB RSS/viewer"
        )
    if row.server_us_per_item is None:
        return "n/a"
    unit = {"stream": "frame", "snapshot": "req"}.get(row.kind, "item")
    return f"{row.server_us_per_item:.0f} µs/{unit}"


def _server_cpu(row: Row) -> str:
    if row.server_cpu_pct is None:
        return "n/a"
    core = "" if row.server_core_busy_pct is None else f" ({row.server_core_busy_pct:.0f})"
    return f"{row.server_cpu_pct:.0f}{core}"


def _rss(row: Row) -> str:
    if row.kind == "idle" and row.idle_rss_mb_before is not None and row.idle_rss_mb_after is not None:
        return f"{row.idle_rss_mb_before:.1f} → {row.idle_rss_mb_after:.1f}"
    return "n/a" if row.server_rss_mb_peak is None else f"{row.server_rss_mb_peak:.1f}"
