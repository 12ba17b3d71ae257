"""Broker nodes that act as one over a real redis-server (README, "Scaling out"): every broker
is a separate process, every client talks to it over real sockets."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .cluster_support import NODE_FLAGS, RedisServer
from .conftest import TOKEN, BrokerProcess, PartReader, make_jpeg, next_binary, next_json

Run = Callable[..., Awaitable[BrokerProcess]]


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A redis-server of its own, stopped after the test."""
    server = RedisServer(tmp_path / "redis")
    await server.start()
    yield server
    server.kill()


async def node(run_broker: Run, redis: RedisServer, name: str, *flags: str) -> BrokerProcess:
    """A broker process that is node `name` of the cluster in `redis`."""
    return await run_broker(
        "--redis", redis.url, "--node-name", name, *NODE_FLAGS, *flags, env={"FRAMEBROKER_PUBLISH_TOKEN": TOKEN}
    )


def ws_url(broker: BrokerProcess, path: str) -> str:
    return f"ws://127.0.0.1:{broker.port}{path}"


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def publisher_on(http: aiohttp.ClientSession, broker: BrokerProcess, camera: str) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(ws_url(broker, f"/cameras/{camera}/publish"), headers=AUTH)
    assert (await next_json(ws))["type"] == "viewers"
    return ws


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "condition") -> None:
    """Wait until `check()` holds (polling), or fail naming `what`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def camera_entry(http: aiohttp.ClientSession, broker: BrokerProcess, camera: str) -> dict[str, Any] | None:
    async with http.get(broker.url("/api/cameras")) as resp:
        cameras = (await resp.json())["cameras"]
    return next((c for c in cameras if c["id"] == camera), None)


async def held_by(http: aiohttp.ClientSession, broker: BrokerProcess, camera: str, node_name: str) -> None:
    async def check() -> bool:
        entry = await camera_entry(http, broker, camera)
        return entry is not None and entry["node"] == node_name

    await eventually(check, what=f"{camera} held by {node_name} as seen on port {broker.port}")


def seq_of(message: bytes) -> int:
    return struct.unpack("!Q", message[:8])[0]


async def frame_with_seq_after(ws: aiohttp.ClientWebSocketResponse, after: int) -> bytes:
    """The next header=1 message newer than sequence number `after`."""
    while True:
        message = await next_binary(ws, timeout=10)
        if seq_of(message) > after:
            return message


async def test_frames_cross_nodes_byte_identical(run_broker: Run, redis: RedisServer, http: aiohttp.ClientSession):
    """A publisher on node A and a viewer on node B: B's viewer, snapshot, MJPEG and camera list
    show A's frames byte for byte, with the same sequence numbers and ETags."""
    a = await node(run_broker, redis, "a")
    b = await node(run_broker, redis, "b")
    pub = await publisher_on(http, a, "yard")
    await held_by(http, b, "yard", "a")
    viewer = await http.ws_connect(ws_url(b, "/cameras/yard/ws?header=1"))
    last = 0
    for index in range(5):
        jpeg = make_jpeg((index * 50, 80, 200), text=f"frame {index}")
        await pub.send_bytes(jpeg)
        message = await frame_with_seq_after(viewer, last)
        last = seq_of(message)
        assert message[16:] == jpeg
    assert last >= 5
    async with http.get(b.url("/cameras/yard/snapshot.jpg")) as on_b, http.get(a.url("/cameras/yard/snapshot.jpg")) as on_a:
        assert await on_b.read() == jpeg == await on_a.read()
        assert on_b.headers["ETag"] == on_a.headers["ETag"]
        assert on_b.headers["X-Frame-Seq"] == on_a.headers["X-Frame-Seq"] == str(last)
        etag = on_b.headers["ETag"]
    async with http.get(a.url("/cameras/yard/snapshot.jpg"), headers={"If-None-Match": etag}) as resp:
        assert resp.status == 304
    async with http.get(b.url("/cameras/yard/mjpeg")) as resp:
        assert await PartReader(resp).next_part() == jpeg
    entry = await camera_entry(http, b, "yard")
    assert entry is not None and entry["publisher"] is True and entry["node"] == "a"
    async with http.get(b.url("/healthz")) as resp:
        health = await resp.json()
    assert health["node"] == "b" and health["redis"]["state"] == "up"
