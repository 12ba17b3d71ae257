"""The load benchmark: its stream parsers on awkwardly split bytes, and one short real run."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import select
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.client import CONNECTING, Buffers
from bench.parser import MjpegParser, WebSocketParser
from bench.report import Row, notes
from bench.stamp import SEQ_AT, stamped
from bench.tally import NEVER, Tally
from bench.target import Target
from bench.tls import client_context, openssl_certificate, trustme_certificate
from bench.viewers import Viewer
from bench.wsproto import OP_PING, OP_TEXT, frame_header
from broker import wire
from broker.frame import VIEWER_HEADER

from .conftest import make_jpeg

ROOT = Path(__file__).resolve().parent.parent
CHUNKS = (1, 2, 3, 7, 29, 64, 511, 4096, 1 << 20)


def stamp(jpeg: bytes, seq: int, send_ns: int) -> bytes:
    """A stamped copy of `jpeg`, as the publisher sends it."""
    template = bytearray(stamped(jpeg))
    template[SEQ_AT : SEQ_AT + 16] = seq.to_bytes(8, "big") + send_ns.to_bytes(8, "big")
    return bytes(template)


def drive(parser: WebSocketParser | MjpegParser, data: bytes, chunk: int, use_skip: bool) -> None:
    """Deliver `data` as a socket would, `chunk` bytes at most per read; discard skips if `use_skip`."""
    pos = 0
    while pos < len(data):
        if use_skip and parser.skip:
            count = min(parser.skip, chunk, len(data) - pos)
            parser.skipped(count)
        else:
            count = min(chunk, len(data) - pos)
            parser.feed(data[pos : pos + count])
        pos += count


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    return [make_jpeg(size=(64, 48), noise=seed) for seed in (1, 2, 3)]


@pytest.mark.parametrize("use_skip", [True, False])
@pytest.mark.parametrize("chunk", CHUNKS)
def test_websocket_parser_finds_every_frame(jpegs: list[bytes], chunk: int, use_skip: bool) -> None:
    frames: list[tuple[int, int]] = []
    controls: list[tuple[int, bytes]] = []
    stream = frame_header(OP_TEXT, 17) + b'{"type": "status"}'[:17]
    expected = []
    for seq, jpeg in enumerate(jpegs * 2, start=1):
        send_ns = 10**12 + seq
        body = stamp(jpeg, seq, send_ns)
        if seq % 2:
            body = VIEWER_HEADER.pack(seq, 1.5e12) + body  # ?header=1
        stream += wire.websocket_frame(body)
        stream += frame_header(OP_PING, 4) + b"ping" if seq == 3 else b""
        expected.append((seq, send_ns))
    stream += wire.websocket_frame(b"\xff\xd8 no stamp \xff\xd9")
    parser = WebSocketParser(lambda seq, ns: frames.append((seq, ns)), lambda op, p: controls.append((op, p)))

    drive(parser, stream, chunk, use_skip)

    assert frames == expected
    assert controls == [(OP_PING, b"ping")]
    assert (parser.unstamped, parser.malformed, parser.skip) == (1, 0, 0)


@pytest.mark.parametrize("chunked", [True, False])
@pytest.mark.parametrize("use_skip", [True, False])
@pytest.mark.parametrize("chunk", CHUNKS)
def test_mjpeg_parser_finds_frames(jpegs: list[bytes], chunk: int, use_skip: bool, chunked: bool) -> None:
    boundary = b"frameboundary"
    frames: list[tuple[int, int]] = []
    stream = b"--" + boundary + b"\r\n"
    expected = []
    for seq, jpeg in enumerate(jpegs * 2, start=1):
        part = wire.mjpeg_part(stamp(jpeg, seq, 7 * seq), boundary)
        stream += wire.http_chunk(part) if chunked else part
        expected.append((seq, 7 * seq))
        if seq == 2:  # an unstamped picture (the broker's "no signal") is scanned through
            part = wire.mjpeg_part(jpegs[0], boundary)
            stream += wire.http_chunk(part) if chunked else part
    parser = MjpegParser(lambda seq, ns: frames.append((seq, ns)))

    drive(parser, stream, chunk, use_skip)

    assert frames == expected
    assert parser.skip == 0


def measuring_viewer(kind: str, buffers: Buffers | None = None, port: int = 9) -> Viewer:
    """A viewer whose measured window is open: every frame it parses counts."""
    tally = Tally()
    tally.start_ns, tally.end_ns = 0, NEVER
    return Viewer(Target("127.0.0.1", port, "cam"), select.epoll(), lambda client: None, kind=kind,
                  header=False, tally=tally, buffers=buffers or Buffers())  # fmt: skip


def poll_until(viewer: Viewer, done: Callable[[], bool]) -> None:
    """Run the viewer's events until `done()`, it fails, or 10 s pass."""
    deadline = time.monotonic() + 10
    while not done() and viewer.error is None and time.monotonic() < deadline:
        for _, events in viewer.poller.poll(0.1):
            viewer.on_event(events)


@pytest.mark.parametrize("truncate", [False, True])
def test_viewers_copy_jpeg_bytes_into_user_space_unless_msg_trunc(truncate: bool) -> None:
    """A viewer takes each JPEG into its own memory, as a browser does; with MSG_TRUNC the kernel drops it."""
    jpeg = stamp(make_jpeg(size=(320, 240), noise=5), 1, 10)
    assert len(jpeg) > 20_000  # more than the viewer's first reads, so the rest goes through take()
    boundary = b"frameboundary"
    head = b"HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=%s\r\n\r\n--%s\r\n"
    buffers = Buffers(truncate=truncate)
    with socket.create_server(("127.0.0.1", 0)) as server:
        viewer = measuring_viewer("mjpeg", buffers, server.getsockname()[1])
        viewer.start()
        peer, _ = server.accept()
        with peer:
            peer.settimeout(10)
            poll_until(viewer, lambda: viewer.state != CONNECTING)  # it sent its request
            assert peer.recv(4096).startswith(b"GET /cameras/cam/mjpeg HTTP/1.1\r\n")
            peer.sendall(head % (boundary, boundary) + wire.mjpeg_part(jpeg, boundary))
            poll_until(viewer, lambda: viewer.tally.delivered > 0)
        viewer.close()
    assert viewer.error is None and viewer.tally.delivered == 1
    assert (buffers.sink.find(jpeg[-64:]) >= 0) is not truncate


def test_mjpeg_keep_alive_repeats_are_not_duplicates() -> None:
    """MJPEG repeating its newest frame is a keep-alive; older frames and WebSocket repeats are duplicates."""
    jpeg = make_jpeg(size=(64, 48), noise=1)
    boundary = b"frameboundary"
    mjpeg = measuring_viewer("mjpeg")
    for seq in (1, 2, 3, 3, 3, 2):
        mjpeg.parser.feed(wire.mjpeg_part(stamp(jpeg, seq, 100 + seq), boundary))
    websocket = measuring_viewer("ws")
    for seq in (1, 2, 2):
        websocket.parser.feed(wire.websocket_frame(stamp(jpeg, seq, 100 + seq)))

    assert (mjpeg.delivered, mjpeg.repeats, mjpeg.dups) == (3, 2, 1)
    assert (websocket.delivered, websocket.repeats, websocket.dups) == (2, 0, 1)


def test_a_row_measured_beside_another_process_says_so() -> None:
    """The server's core much busier than the server: another process ran there, and the notes say so."""
    measured = {"scenario": "ws", "server": "broker", "server_cpu_pct": 50.0, "server_core_busy_pct": 60.0}
    quiet = Row(**dict.fromkeys(field.name for field in dataclasses.fields(Row)) | measured)
    assert notes(quiet) == []
    assert notes(dataclasses.replace(quiet, server_core_busy_pct=96.0)) == [
        "ws broker: the server's core was 96 % busy but the server used 50 %: other processes shared its "
        "core, repeat this row"
    ]


def test_bench_runs_against_broker_and_ideal_relay(tmp_path: Path) -> None:
    """A short mixed run fills one row for the broker and one for the ideal relay, in the table and the JSON.

    Nothing here depends on how busy the machine is: shares and latencies are only checked
    for being possible, not for being good.
    """
    results = tmp_path / "rows.json"
    command = [sys.executable, "-m", "bench", "--ws", "5", "--mjpeg", "3", "--snapshots", "2",
               "--duration", "1.5", "--warmup", "0.5", "--drain", "0.5", "--size", "320x240",
               "--baseline", "--quiet", "--json", str(results)]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("machine: ")
    assert lines[1] == "clients: every byte received into user space, as a browser does"
    header, _, *body = ([cell.strip() for cell in line.strip("|").split("|")] for line in lines[3:])
    table = {cells[header.index("server")]: cells for cells in body}
    assert set(table) == {"broker", "ideal"}, done.stdout
    for cells in table.values():
        assert 0 < float(cells[header.index("delivered %")]) <= 100, done.stdout

    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [row["server"] for row in rows] == ["broker", "ideal"]
    for row in rows:
        assert row["viewers_connected"] == 8
        assert row["snapshots_connected"] == 2
        assert row["connect_failures"] == row["lost"] == row["malformed"] == 0
        assert row["dups"] == 0
        assert 0 < row["delivered"] <= row["published"] * row["viewers_connected"]
        assert 0 < row["latency_ms"]["p50"] <= row["latency_ms"]["p99"]
        assert row["requests"] > 0 and row["request_errors"] == 0
        assert row["server_us_per_item"] > 0 and row["server_rss_mb_peak"] > 0
        assert 8_000 < row["frame_bytes"] < 40_000
    assert rows[0]["ratio_vs_ideal"] > 0


def test_wss_scenario_measures_the_broker_over_tls_against_plain_tcp(tmp_path: Path) -> None:
    """`--scenario wss`: a broker with a throwaway certificate, TLS viewers that decrypt every frame,
    then the same broker on plain TCP; the TLS row says how its CPU per frame compares."""
    results = tmp_path / "rows.json"
    command = [sys.executable, "-m", "bench", "--scenario", "wss", "--viewers", "4", "--size", "320x240",
               "--duration", "3", "--warmup", "0.5", "--drain", "0.5", "--no-baseline", "--quiet",
               "--json", str(results)]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr

    table = [line for line in done.stdout.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert "TLS vs TCP" in header
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [row["server"] for row in rows] == ["broker (TLS)", "broker"]
    for row in rows:
        assert row["scenario"] == "wss"
        assert row["viewers_connected"] == 4
        assert row["connect_failures"] == row["lost"] == row["malformed"] == row["dups"] == 0
        assert row["delivered"] > 0 and row["server_us_per_item"] > 0
    # Such a short run may measure no CPU on plain TCP (10 ms clock ticks): then no ratio.
    assert rows[0]["ratio_vs_tcp"] is None or rows[0]["ratio_vs_tcp"] > 0
    assert rows[1]["ratio_vs_tcp"] is None


def test_wss_scenario_needs_a_broker_of_its_own() -> None:
    """`--scenario wss` with `--url` is refused: only a broker the bench starts has its certificate."""
    command = [sys.executable, "-m", "bench", "--scenario", "wss", "--url", "http://127.0.0.1:8080"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "leave out --url" in done.stderr


@pytest.mark.parametrize("make", [trustme_certificate, openssl_certificate])
def test_throwaway_certificates_complete_a_handshake(tmp_path: Path, make) -> None:
    """Either way of making the bench's certificate (trustme, or the openssl command) gives a pair a
    client that trusts only its CA accepts for 127.0.0.1."""
    if make is openssl_certificate and shutil.which("openssl") is None:
        pytest.skip("openssl not found: the fallback certificate needs Debian's openssl package")
    files = make(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(files.cert, files.key)
    server_side, client_side = socket.socketpair()
    with server_side, client_side, concurrent.futures.ThreadPoolExecutor(1) as pool:
        accepted = pool.submit(lambda: server_context.wrap_socket(server_side, server_side=True))
        with client_context(str(files.ca)).wrap_socket(client_side, server_hostname="127.0.0.1") as tls:
            assert tls.version() == "TLSv1.3"
        accepted.result(timeout=10).close()


def test_msg_trunc_runs_are_labelled(tmp_path: Path) -> None:
    """With --msg-trunc the table says so above it and in every row, and so does the JSON."""
    results = tmp_path / "rows.json"
    command = [sys.executable, "-m", "bench", "--ws", "3", "--mjpeg", "2", "--msg-trunc", "--no-baseline",
               "--duration", "1", "--warmup", "0.3", "--drain", "0.3", "--size", "320x240", "--quiet",
               "--json", str(results)]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

    lines = done.stdout.strip().splitlines()
    assert lines[1].startswith("clients: MSG_TRUNC (--msg-trunc): JPEG bytes discarded in the kernel")
    assert "| 3/3 ws, 2/2 mjpeg (MSG_TRUNC) |" in lines[-1]
    row = json.loads(results.read_text())
    assert row["msg_trunc"] is True and row["delivered"] > 0


def test_idle_viewers_beyond_the_brokers_waiting_limit_all_connect(tmp_path: Path) -> None:
    """The idle scenario's viewers wait for a camera that never published: the bench raises that limit."""
    results = tmp_path / "rows.json"
    command = [sys.executable, "-m", "bench", "--scenario", "idle", "--viewers", "300", "--no-baseline",
               "--settle", "0.5", "--quiet", "--json", str(results)]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

    row = json.loads(results.read_text())
    assert (row["ws_connected"], row["connect_failures"]) == (300, 0)
    assert row["idle_rss_kb_per_viewer"] > 0


def test_cluster_scenario_compares_a_node_fed_through_redis_with_a_single_broker(tmp_path: Path) -> None:
    """`--scenario cluster`: its own redis-server, the viewers on node B with the publisher on node A,
    against one broker serving the same viewers; no frame lost or repeated on either."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not found: the cluster scenario needs Debian's redis-server package")
    results = tmp_path / "rows.json"
    command = [sys.executable, "-m", "bench", "--scenario", "cluster", "--viewers", "4",
               "--size", "320x240", "--duration", "3", "--warmup", "0.5", "--drain", "0.5",
               "--quiet", "--json", str(results)]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [row["server"] for row in rows] == ["broker", "node B (publisher on A)"]
    for row in rows:
        assert row["viewers_connected"] == 4
        assert row["connect_failures"] == row["lost"] == row["malformed"] == row["dups"] == 0
        assert row["delivered"] > 0
    assert "node B's CPU per delivered frame" in done.stdout
