"""One viewer's writer on its own, over a real socket: what happens when writing fails."""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from broker.frame import Frame
from broker.writer import FrameWriter

from .conftest import make_jpeg


async def test_a_writer_that_fails_drops_its_viewer_and_logs_once(aiohttp_server, caplog):
    """An error while flushing that is neither a timeout nor a lost connection ends the
    writer and the connection: the viewer is not left frozen behind heartbeats."""
    jpeg = make_jpeg()
    writers: list[FrameWriter] = []

    def encode(frame: Frame) -> bytes:
        if frame.seq == 2:
            raise ValueError("cannot build the wire bytes")
        return frame.jpeg

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        stream = await response.prepare(request)
        assert request.transport is not None
        writer = FrameWriter(
            request.transport, stream, encode, kind="mjpeg", peer="tester",
            send_timeout=5.0, sndbuf=65536, min_interval=0.2,
        )  # fmt: skip
        writers.append(writer)
        for seq in (1, 2):  # the second one waits for the rate limit, then fails in the flush task
            writer.offer(Frame("cam", seq, jpeg, time.time(), time.monotonic()), time.monotonic())
        await asyncio.wait([asyncio.ensure_future(writer.wait_closed())], timeout=20)
        return response

    app = web.Application()
    app.router.add_get("/", handler)
    server = await aiohttp_server(app)
    # HTTP/1.0: the writer's bytes go out as they are, without chunked encoding.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    try:
        received = await asyncio.wait_for(reader.read(), 10)  # until the server drops the connection
    finally:
        writer.close()
        for frame_writer in writers:
            if not frame_writer.closed:  # a writer left frozen would keep its socket
                frame_writer.abort("the test ends")
    assert received.endswith(jpeg)
    assert writers[0].closed
    lines = [r for r in caplog.records if r.name == "broker.writer" and r.levelno >= logging.WARNING]
    assert [r.levelno for r in lines] == [logging.WARNING]
    assert "tester" in lines[0].getMessage() and "cannot build the wire bytes" in lines[0].getMessage()
