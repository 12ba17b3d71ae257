"""Broker nodes that act as one over a real redis-server (README, "Scaling out"): every broker
is a separate process, every client talks to it over real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from yarl import URL

from .access_support import PASSWORDS, family_config
from .cluster_support import NODE_FLAGS, RedisServer, free_port
from .conftest import TOKEN, BrokerProcess, PartReader, make_jpeg, next_binary, next_json
from .test_metrics import scrape
from .test_nginx import SHIPPED, Nginx
from .test_systemd import NotifySocket

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
        "--redis",
        redis.url,
        "--node-name",
        name,
        *NODE_FLAGS,
        *flags,
        env={"FRAMEBROKER_PUBLISH_TOKEN": TOKEN},
    )


def ws_url(broker: BrokerProcess, path: str) -> str:
    return f"ws://127.0.0.1:{broker.port}{path}"


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def publisher_on(
    http: aiohttp.ClientSession, broker: BrokerProcess, camera: str, **options: Any
) -> aiohttp.ClientWebSocketResponse:
    """A publisher WebSocket for `camera` on `broker`, past its first viewers message."""
    ws = await http.ws_connect(ws_url(broker, f"/cameras/{camera}/publish"), headers=AUTH, **options)
    assert (await next_json(ws))["type"] == "viewers"
    return ws


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Wait until `check()` holds (polling), or fail naming `what`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def camera_entry(
    http: aiohttp.ClientSession, broker: BrokerProcess, camera: str
) -> dict[str, Any] | None:
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


async def test_frames_cross_nodes_byte_identical(
    run_broker: Run, redis: RedisServer, http: aiohttp.ClientSession
):
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
    async with (
        http.get(b.url("/cameras/yard/snapshot.jpg")) as on_b,
        http.get(a.url("/cameras/yard/snapshot.jpg")) as on_a,
    ):
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


async def test_a_publisher_on_another_node_takes_over(
    run_broker: Run, redis: RedisServer, http: aiohttp.ClientSession
):
    """A new publisher on node B takes the camera from node A's, which is closed with 4000;
    sequence numbers keep rising for a viewer on node C."""
    a = await node(run_broker, redis, "a")
    b = await node(run_broker, redis, "b")
    c = await node(run_broker, redis, "c")
    first = await publisher_on(http, a, "gate", autoclose=False)  # the close frame as it came
    await held_by(http, c, "gate", "a")
    viewer = await http.ws_connect(ws_url(c, "/cameras/gate/ws?header=1"))
    last = 0
    for index in range(3):
        await first.send_bytes(make_jpeg((10, 10, 10 + index)))
        last = seq_of(await frame_with_seq_after(viewer, last))
    second = await publisher_on(http, b, "gate")
    while (closing := await asyncio.wait_for(first.receive(), 10)).type == aiohttp.WSMsgType.TEXT:
        pass  # viewer counts
    assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 4000
    await held_by(http, c, "gate", "b")
    jpeg = make_jpeg((200, 10, 10), text="b")
    await second.send_bytes(jpeg)
    message = await frame_with_seq_after(viewer, last)
    assert message[16:] == jpeg and seq_of(message) == last + 1
    async with http.post(a.url("/cameras/gate/publish"), data=jpeg, headers=AUTH) as resp:
        assert resp.status == 409  # node A knows the camera is held on B


async def test_a_camera_back_after_a_long_absence_goes_on_counting(
    run_broker: Run, redis: RedisServer, http: aiohttp.ClientSession
):
    """A camera still watched on node B returns on node A, which forgot it (--forget-after)
    while Redis' own copy of its number expired: its numbers go on from B's, so B's viewer
    sees its first frame at once."""
    a, viewer, last = await watched_then_left(run_broker, redis, http, "attic", "--forget-after", "4")

    async def forgotten_on_a() -> bool:
        return await camera_entry(http, a, "attic") is None

    await eventually(forgotten_on_a, timeout=20, what="node A forgetting the camera")
    async with redis.client() as client:

        async def frame_expired() -> bool:
            return not await client.exists("framebroker:latest:attic")

        await eventually(frame_expired, timeout=20, what="its last frame expiring in Redis")
    await goes_on_counting(http, a, "attic", viewer, last)


async def test_a_camera_back_after_redis_restarted_goes_on_counting(
    run_broker: Run, redis: RedisServer, http: aiohttp.ClientSession
):
    """Redis restarts empty after a camera's publisher left: the nodes that remember the camera
    put its number back, so a publisher on a node started later goes on from there."""
    _, viewer, last = await watched_then_left(run_broker, redis, http, "cellar")
    redis.kill()
    await redis.start()
    async with redis.client() as client:

        async def number_back() -> bool:
            return await client.get("framebroker:seq:cellar") == str(last).encode()

        await eventually(number_back, what="the camera's number back in Redis")
    c = await node(run_broker, redis, "c")
    await redis_state(http, c, "up")  # else its publisher's first frame is numbered from 1
    await goes_on_counting(http, c, "cellar", viewer, last)


async def test_a_frame_sent_while_redis_was_away_reaches_the_other_nodes_on_its_return(
    run_broker: Run, redis: RedisServer, http: aiohttp.ClientSession
):
    """A camera that sends rarely sent its one frame while Redis was unreachable: when Redis
    returns, node A passes that frame on, and node B's snapshot shows it without waiting."""
    a = await node(run_broker, redis, "a")
    await redis_state(http, a, "up")
    redis.kill()
    await redis_state(http, a, "down")
    pub = await publisher_on(http, a, "gate")
    jpeg = make_jpeg((20, 160, 20), text="rare")
    await pub.send_bytes(jpeg)
    await redis.start()
    b = await node(run_broker, redis, "b")

    async def shown_on_b() -> bool:
        async with http.get(b.url("/cameras/gate/snapshot.jpg?max_age=60")) as resp:
            return resp.status == 200 and await resp.read() == jpeg

    await eventually(shown_on_b, what="node B's snapshot of the frame sent during the outage")
    await pub.close()


async def watched_then_left(
    run_broker: Run, redis: RedisServer, http: aiohttp.ClientSession, camera: str, *flags: str
) -> tuple[BrokerProcess, aiohttp.ClientWebSocketResponse, int]:
    """Nodes A and B: a publisher on A sent three frames to a viewer on B, then left.
    Returns node A, the viewer, and the last sequence number it got."""
    a = await node(run_broker, redis, "a", *flags)
    b = await node(run_broker, redis, "b", *flags)
    pub = await publisher_on(http, a, camera)
    await held_by(http, b, camera, "a")
    viewer = await http.ws_connect(ws_url(b, f"/cameras/{camera}/ws?header=1"))
    last = 0
    for index in range(3):
        await pub.send_bytes(make_jpeg((90, index, 90)))
        last = seq_of(await frame_with_seq_after(viewer, last))
    await pub.close()
    return a, viewer, last


async def goes_on_counting(
    http: aiohttp.ClientSession,
    broker: BrokerProcess,
    camera: str,
    viewer: aiohttp.ClientWebSocketResponse,
    last: int,
) -> None:
    """A new publisher on `broker`: its first frame reaches `viewer` numbered `last` + 1."""
    returning = await publisher_on(http, broker, camera)
    jpeg = make_jpeg((250, 90, 90), text="back")
    await returning.send_bytes(jpeg)
    message = await frame_with_seq_after(viewer, last)
    assert message[16:] == jpeg and seq_of(message) == last + 1


async def test_a_node_started_after_a_camera_left_shows_it_offline(
    run_broker: Run, redis: RedisServer, http: aiohttp.ClientSession
):
    """Nodes started after the publishers on node A left list those cameras offline and answer
    their snapshots with the last frames, as node A does; within --max-cameras only."""
    a = await node(run_broker, redis, "a")
    sent = {}
    async with redis.client() as client:
        for camera in ("porch", "shed"):
            pub = await publisher_on(http, a, camera)
            sent[camera] = make_jpeg((40, 40, 40), text=camera)
            await pub.send_bytes(sent[camera])

            async def stored(camera: str = camera) -> bool:
                return bool(await client.exists(f"framebroker:latest:{camera}"))

            await eventually(stored, what=f"{camera}'s frame in Redis")
            await pub.close()
    b = await node(run_broker, redis, "b")
    small = await node(run_broker, redis, "c", "--max-cameras", "1")

    async def offline_on(broker: BrokerProcess, count: int) -> bool:
        async with http.get(broker.url("/api/cameras")) as resp:
            cameras = (await resp.json())["cameras"]
        return len(cameras) == count and not any(c["online"] or c["publisher"] for c in cameras)

    await eventually(lambda: offline_on(b, 2), what="both cameras offline on node B")
    for camera, jpeg in sent.items():
        async with (
            http.get(b.url(f"/cameras/{camera}/snapshot.jpg")) as on_b,
            http.get(a.url(f"/cameras/{camera}/snapshot.jpg")) as on_a,
        ):
            assert on_b.status == on_a.status == 200
            assert await on_b.read() == jpeg == await on_a.read()
            assert on_b.headers["ETag"] == on_a.headers["ETag"]
    await eventually(lambda: offline_on(small, 1), what="one camera on node C")
    assert "not shown here: the broker already holds max_cameras=1 cameras" in await stop_and_log(small)


async def on_demand_agent(
    broker: BrokerProcess, camera: str, *, fps: float, idle_grace: float
) -> asyncio.subprocess.Process:
    """A camera-agent with a synthetic source that captures only while the broker reports demand."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "camera_agent", "--broker", broker.url(""), "--camera", camera,
        "--source", "synthetic", "--fps", str(fps), "--idle-grace", str(idle_grace),
        "--stats-interval", "0",
        env={**os.environ, "CAMERA_AGENT_TOKEN": TOKEN},
        stderr=subprocess.PIPE,
    )  # fmt: skip


async def test_demand_counts_viewers_on_every_node(
    run_broker: Run, redis: RedisServer, http: aiohttp.ClientSession, tmp_path: Path
):
    """A camera-agent capturing on demand on node A (its hello listed on node B too) starts when
    the only viewer is on node B, and a publisher hears the count drop to 0 within seconds of
    that viewer's node dying."""
    a = await node(run_broker, redis, "a")
    b = await node(run_broker, redis, "b")
    agent = await on_demand_agent(a, "porch", fps=15, idle_grace=0.5)
    try:
        await held_by(http, b, "porch", "a")

        async def hello_on_b() -> bool:
            entry = await camera_entry(http, b, "porch")
            return entry is not None and entry["agent"].get("source") == "synthetic"

        await eventually(hello_on_b, what="the agent's hello listed on node B")
        entry = await camera_entry(http, a, "porch")
        assert entry is not None and entry["frames"] == 0  # nobody watches: the agent does not capture
        viewer = await http.ws_connect(ws_url(b, "/cameras/porch/ws?header=1"))
        first = await frame_with_seq_after(viewer, 0)
        await frame_with_seq_after(viewer, seq_of(first))  # frames keep coming, not just one
    finally:
        agent.terminate()
        await agent.wait()
    pub = await publisher_on(http, a, "deck")
    await held_by(http, b, "deck", "a")
    watching = await http.ws_connect(ws_url(b, "/cameras/deck/ws"))
    assert await next_json(pub) == {"type": "viewers", "count": 1}
    assert not watching.closed
    b.proc.kill()  # the node dies without a word, its viewer still connected
    assert await next_json(pub, timeout=10) == {"type": "viewers", "count": 0}


async def paused_publisher(
    http: aiohttp.ClientSession, redis: RedisServer, a: BrokerProcess, b: BrokerProcess, camera: str
) -> aiohttp.ClientWebSocketResponse:
    """A publisher on node A (known to node B) that sent one frame, stored in Redis, and then
    paused for longer than --offline-after, as an agent does when nobody watches."""
    pub = await publisher_on(http, a, camera)
    await held_by(http, b, camera, "a")
    await pub.send_bytes(make_jpeg((10, 10, 10)))
    async with redis.client() as client:

        async def stored() -> bool:
            return bool(await client.exists(f"framebroker:latest:{camera}"))

        await eventually(stored, what="the frame in Redis")
    await asyncio.sleep(1.2)  # the frame grows older than --offline-after
    return pub


async def test_a_snapshot_subscribes_a_node_only_while_it_waits(
    run_broker: Run, redis: RedisServer, http: aiohttp.ClientSession
):
    """A snapshot on node B of a paused camera on node A wakes A's agent and waits for its fresh
    frame; once answered, B no longer receives the camera's frames, while the snapshot still
    counts as a viewer of B for --snapshot-grace."""
    a = await node(run_broker, redis, "a")
    b = await node(run_broker, redis, "b", "--snapshot-grace", "60", "--snapshot-wait", "20")
    pub = await paused_publisher(http, redis, a, b, "porch")
    async with redis.client() as client:
        asking = asyncio.ensure_future(http.get(b.url("/cameras/porch/snapshot.jpg")))
        assert await next_json(pub, timeout=10) == {"type": "viewers", "count": 1, "snapshot_only": True}
        fresh = make_jpeg((200, 100, 0), text="fresh")
        while not asking.done():  # the agent captures again
            await pub.send_bytes(fresh)
            await asyncio.wait([asking], timeout=0.2)
        async with asking.result() as resp:
            assert resp.status == 200 and await resp.read() == fresh

        async def unsubscribed() -> bool:
            [(_, count)] = await client.pubsub_numsub("framebroker:0:frames:porch")
            return count == 0

        await eventually(unsubscribed, what="node B unsubscribing from the camera's frames")
        counts = await client.hgetall("framebroker:demand:porch")
    assert [count.split()[::2] for node, count in counts.items() if node.startswith(b"b#")] == [
        [b"1", b"snapshots"]
    ]


async def closing_line(agent: asyncio.subprocess.Process) -> str:
    """The agent's next log line saying it closes its camera's source."""
    assert agent.stderr is not None
    while True:
        line = (await asyncio.wait_for(agent.stderr.readline(), 20)).decode()
        assert line, "the agent exited"
        if "closing the source" in line:
            return line


async def test_snapshots_on_another_node_let_an_on_demand_camera_pause(
    run_broker: Run, redis: RedisServer, http: aiohttp.ClientSession
):
    """A snapshot on node B of a camera whose on-demand agent is on node A: the agent is told the
    demand is a snapshot's and closes the camera once B's --snapshot-grace has passed, without its
    own --idle-grace on top, so a program polling B slower than the grace lets the camera rest.
    A live viewer joining on B within the grace turns the demand into a viewer's again: the camera
    runs past the grace, and after that viewer leaves, the agent's own idle grace applies."""
    a = await node(run_broker, redis, "a")
    b = await node(run_broker, redis, "b", "--snapshot-grace", "1", "--snapshot-wait", "10")
    agent = await on_demand_agent(a, "cam2", fps=10, idle_grace=2)
    try:
        await held_by(http, b, "cam2", "a")
        async with http.get(b.url("/cameras/cam2/snapshot.jpg")) as resp:
            assert resp.status == 200
        assert "the snapshots' demand ended" in await closing_line(agent)

        async with http.get(b.url("/cameras/cam2/snapshot.jpg")) as resp:
            assert resp.status == 200
            woken_at = int(resp.headers["X-Frame-Seq"])
        viewer = await http.ws_connect(ws_url(b, "/cameras/cam2/ws?header=1"))
        seq = seq_of(await frame_with_seq_after(viewer, woken_at))
        outlived = asyncio.get_running_loop().time() + 2  # B's snapshot grace, and then some
        while asyncio.get_running_loop().time() < outlived:
            seq = seq_of(await frame_with_seq_after(viewer, seq))
        await viewer.close()
        assert "no viewers for 2s" in await closing_line(agent)
    finally:
        agent.terminate()
        await agent.wait()


async def test_a_count_that_does_not_say_its_kind_is_a_live_viewer(
    run_broker: Run, redis: RedisServer, http: aiohttp.ClientSession
):
    """A node of an earlier version writes its count without saying whether a snapshot's grace is
    all of it: the holder takes it for a live viewer, so the agent keeps its own idle grace."""
    a = await node(run_broker, redis, "a")
    pub = await publisher_on(http, a, "deck")
    async with redis.client() as client:
        seconds, micros = await client.time()
        expires = seconds * 1000 + micros // 1000 + 60_000
        await client.hset("framebroker:demand:deck", "older#1", f"1 {expires}")
        await client.publish("framebroker:0:control", json.dumps({"t": "demand", "c": "deck"}))
    assert await next_json(pub, timeout=10) == {"type": "viewers", "count": 1}


async def test_a_frame_read_back_from_redis_is_not_fan_out_latency(
    run_broker: Run, redis: RedisServer, http: aiohttp.ClientSession
):
    """A viewer joins on node B a camera of node A that paused seconds ago: B reads the camera's
    last frame from Redis and shows it, but its age is no sample of the ingest-to-write
    histogram (README, "Metrics"); the next frame, relayed live, is one."""
    a = await node(run_broker, redis, "a")
    b = await node(run_broker, redis, "b")
    pub = await paused_publisher(http, redis, a, b, "porch")
    viewer = await http.ws_connect(ws_url(b, "/cameras/porch/ws?header=1"))
    first = await frame_with_seq_after(viewer, 0)
    histogram = ("framebroker_ingest_to_write_seconds_count", ())
    assert (await scrape(http, b.url("/metrics")))[histogram] == 0
    await pub.send_bytes(make_jpeg((200, 100, 0)))
    await frame_with_seq_after(viewer, seq_of(first))
    assert (await scrape(http, b.url("/metrics")))[histogram] == 1


async def test_posts_hold_a_camera_through_any_node(
    run_broker: Run, redis: RedisServer, http: aiohttp.ClientSession
):
    """An address POSTing through node A and node B in turn (a load balancer) keeps its camera,
    its frames reach a viewer on node C in order; another address gets 409 on either node."""
    a = await node(run_broker, redis, "a")
    b = await node(run_broker, redis, "b")
    c = await node(run_broker, redis, "c")
    async with http.post(a.url("/cameras/drive/publish"), data=make_jpeg(), headers=AUTH) as resp:
        assert resp.status == 204
    await held_by(http, c, "drive", "a")
    viewer = await http.ws_connect(ws_url(c, "/cameras/drive/ws?header=1"))
    last = seq_of(await frame_with_seq_after(viewer, 0))
    for index in range(4):
        jpeg = make_jpeg((index * 60, 0, 0), text=f"post {index}")
        async with http.post(
            (a, b)[index % 2].url("/cameras/drive/publish"), data=jpeg, headers=AUTH
        ) as resp:
            assert resp.status == 204
        message = await frame_with_seq_after(viewer, last)
        assert message[16:] == jpeg and seq_of(message) == last + 1
        last = seq_of(message)
    other = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=other) as elsewhere:
        for broker in (a, b):
            async with elsewhere.post(
                broker.url("/cameras/drive/publish"), data=make_jpeg(), headers=AUTH
            ) as resp:
                assert resp.status == 409


async def test_redis_killed_and_restarted(run_broker: Run, redis: RedisServer, http: aiohttp.ClientSession):
    """While Redis is down each node serves its own publisher's camera to its own viewers and
    says so once; within seconds of Redis' return frames cross nodes again."""
    a, b, pub, local, remote = await watched_on_both(run_broker, redis, http, "shed")
    last = seq_of(await frame_with_seq_after(remote, 0))
    redis.kill()
    await redis_state(http, a, "down")
    jpeg = make_jpeg((1, 2, 3), text="outage")
    await pub.send_bytes(jpeg)
    assert (await frame_with_seq_after(local, last))[16:] == jpeg
    loft = await publisher_on(http, a, "loft")  # a camera that appears during the outage
    await redis.start()
    await crossing_again(pub, remote, last)  # within 5 s of Redis' return
    await redis_state(http, a, "up")
    await redis_state(http, b, "up")
    await held_by(http, b, "loft", "a")
    watching = await http.ws_connect(ws_url(b, "/cameras/loft/ws"))
    assert await next_json(loft) == {"type": "viewers", "count": 1}  # demand crosses nodes again
    await watching.close()
    pub_log = await stop_and_log(a)
    assert pub_log.count("unreachable") == 1


async def test_redis_frozen(run_broker: Run, redis: RedisServer, http: aiohttp.ClientSession):
    """A Redis stopped with SIGSTOP is noticed by timeouts: local viewers keep their frames, and
    after SIGCONT frames cross nodes again."""
    a, b, pub, local, remote = await watched_on_both(run_broker, redis, http, "barn")
    last = seq_of(await frame_with_seq_after(remote, 0))
    redis.freeze()
    try:
        await redis_state(http, a, "down")
        await redis_state(http, b, "down")
        for index in range(3):
            jpeg = make_jpeg((index, 0, 0))
            await pub.send_bytes(jpeg)
            message = await frame_with_seq_after(local, last)
            assert message[16:] == jpeg
            last = seq_of(message)
    finally:
        redis.thaw()
    await crossing_again(pub, remote, last)  # within 5 s of SIGCONT
    await redis_state(http, a, "up")
    await redis_state(http, b, "up")


async def watched_on_both(
    run_broker: Run, redis: RedisServer, http: aiohttp.ClientSession, camera: str
) -> tuple[BrokerProcess, BrokerProcess, Any, Any, Any]:
    """Nodes A and B, a publisher of `camera` on A (one frame sent), and a viewer on each node."""
    a = await node(run_broker, redis, "a")
    b = await node(run_broker, redis, "b")
    pub = await publisher_on(http, a, camera)
    await held_by(http, b, camera, "a")
    local = await http.ws_connect(ws_url(a, f"/cameras/{camera}/ws?header=1"))
    remote = await http.ws_connect(ws_url(b, f"/cameras/{camera}/ws?header=1"))
    await pub.send_bytes(make_jpeg())
    return a, b, pub, local, remote


async def crossing_again(
    pub: aiohttp.ClientWebSocketResponse, remote: aiohttp.ClientWebSocketResponse, last: int
) -> None:
    """Publish until a frame newer than `last` reaches the viewer on the other node, within the 5 s
    the README promises after Redis returns."""

    async def crossed() -> bool:
        await pub.send_bytes(make_jpeg((9, 9, 9)))
        try:
            message = await next_binary(remote, timeout=0.3)
        except TimeoutError:
            return False
        return seq_of(message) > last

    await eventually(crossed, timeout=5, what="frames crossing nodes again")


async def redis_state(http: aiohttp.ClientSession, broker: BrokerProcess, state: str) -> None:
    async def check() -> bool:
        async with http.get(broker.url("/healthz")) as resp:
            assert resp.status == 200  # liveness never fails over Redis
            return (await resp.json())["redis"]["state"] == state

    await eventually(check, what=f"redis {state} on port {broker.port}")


async def stop_and_log(broker: BrokerProcess) -> str:
    broker.proc.terminate()
    log = await broker.rest_of_log()
    await broker.proc.wait()
    return log


async def test_two_workers_share_one_port(tmp_path: Path, redis: RedisServer, http: aiohttp.ClientSession):
    """`--workers 2` serves one port from two processes acting as one: viewers on either worker
    get the camera; a worker that dies is restarted, and the log says what ended it; SIGTERM
    stops them all."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker", "--workers", "2", "--redis", redis.url, "--port", "0", *NODE_FLAGS,
        stderr=subprocess.PIPE,
        env={**os.environ, "FRAMEBROKER_STATE_DIR": str(tmp_path / "state"),
             "FRAMEBROKER_PUBLISH_TOKEN": TOKEN},
        start_new_session=True,  # if the test fails, its workers are stopped with the supervisor
    )  # fmt: skip
    broker = BrokerProcess(proc)
    try:
        await until_log(broker, r"2 workers serving on port (\d+)")
        broker.port = int(re.search(r"2 workers serving on port (\d+)", broker.log).group(1))  # type: ignore[union-attr]
        pub = await publisher_on(http, broker, "lane")
        viewers = [await http.ws_connect(ws_url(broker, "/cameras/lane/ws?header=1")) for _ in range(8)]
        # Each new connection goes to either worker: a worker counting some viewers but not all
        # shows that both have viewers, so one of them gets the frames through Redis.
        await eventually(lambda: spread(broker, len(viewers)), what="viewers on both workers")
        jpeg = make_jpeg(text="workers")
        await pub.send_bytes(jpeg)
        for viewer in viewers:
            assert (await frame_with_seq_after(viewer, 0))[16:] == jpeg
        async with http.get(broker.url("/healthz")) as resp:
            assert (await resp.json())["node"] in {
                f"{socket.gethostname()}:{broker.port}/w{i}" for i in (1, 2)
            }
        pids = [int(pid) for pid in re.findall(r"worker \d started \(pid (\d+)\)", broker.log)]
        assert len(pids) == 2
        os.kill(pids[0], signal.SIGKILL)
        await until_log(broker, r"worker 1 (exited|killed)")
        assert re.search(r"worker 1 killed by signal 9 \(SIGKILL\) after [\d.]+ s; restarting it", broker.log)
        await until_log(broker, r"worker 1 serving again")
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        pids += [
            int(pid) for pid in re.findall(r"worker \d started \(pid (\d+)\)", await broker.rest_of_log())
        ]
        assert not [pid for pid in pids if os.path.exists(f"/proc/{pid}")]  # every worker stopped
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


async def spread(broker: BrokerProcess, viewers: int) -> bool:
    """Whether the worker answering a new connection has some of the camera's viewers, not all."""
    async with aiohttp.ClientSession() as fresh, fresh.get(broker.url("/api/cameras")) as resp:
        cameras = (await resp.json())["cameras"]
    # A worker that has not yet heard who publishes the camera does not list it yet.
    return bool(cameras) and 0 < cameras[0]["viewers"]["ws"] < viewers


async def until_log(broker: BrokerProcess, pattern: str) -> None:
    """Read the broker's log until a line matches `pattern`."""
    assert broker.proc.stderr is not None
    while not re.search(pattern, broker.log):
        line = await asyncio.wait_for(broker.proc.stderr.readline(), 20)
        assert line, f"broker exited:\n{broker.log}"
        broker.log += line.decode()


async def test_signing_out_on_one_node_ends_the_session_on_all(
    run_broker: Run, redis: RedisServer, tmp_path: Path
):
    """Nodes sharing the config and the signing key accept each other's session cookies, and
    a sign-out on node A ends the session on node B too."""
    config = family_config(tmp_path)
    shared = {"FRAMEBROKER_SECRET": "cluster-wide-signing-key-0123456789", "FRAMEBROKER_PUBLISH_TOKEN": TOKEN}
    nodes = [
        await run_broker(
            "--redis",
            redis.url,
            "--node-name",
            name,
            "--config",
            str(config),
            *NODE_FLAGS,
            env={**shared, "FRAMEBROKER_STATE_DIR": str(tmp_path / name)},
        )
        for name in ("a", "b")
    ]
    a, b = nodes
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        form = {"username": "alice", "password": PASSWORDS["alice"]}
        async with browser.post(a.url("/login"), data=form) as resp:
            assert resp.status == 200
        cookie = browser.cookie_jar.filter_cookies(URL(a.url("/")))["framebroker_session"].value
        async with browser.post(a.url("/logout")) as resp:
            assert resp.status == 200
    async with aiohttp.ClientSession(cookies={"framebroker_session": cookie}) as replay:

        async def signed_out_on_b() -> bool:
            async with replay.get(b.url("/api/session")) as resp:
                return (await resp.json())["user"] is None

        async with replay.get(b.url("/api/session")) as resp:
            was = (await resp.json())["user"]
        await eventually(signed_out_on_b, what="the sign-out reaching node B")
    assert was in ("alice", None)  # the sign-out may have reached B already


async def test_redis_with_a_password(run_broker: Run, tmp_path: Path, http: aiohttp.ClientSession):
    """A Redis that asks for a password: a node given it in the URL, one in --redis-password-file
    and one in FRAMEBROKER_REDIS (named hostname:port, without --node-name) act as one; a node
    with a wrong password stays down and says so; no log shows either password."""
    password, wrong = "redis-password-0123456789", "wrong-password-9876543210"
    redis = RedisServer(tmp_path / "redis", "--requirepass", password)
    await redis.start()
    (tmp_path / "password").write_text(password + "\n")
    (tmp_path / "wrong").write_text(wrong + "\n")
    in_url = f"redis://:{password}@127.0.0.1:{redis.port}/0"
    env = {"FRAMEBROKER_PUBLISH_TOKEN": TOKEN}
    port = free_port()
    try:
        nodes = [
            await run_broker("--redis", in_url, "--node-name", "a", *NODE_FLAGS, env=env),
            await run_broker(
                "--redis", redis.url, "--redis-password-file", str(tmp_path / "password"),
                "--node-name", "b", *NODE_FLAGS, env=env,
            ),
            await run_broker("--port", str(port), *NODE_FLAGS, env={**env, "FRAMEBROKER_REDIS": in_url}),
            await run_broker(
                "--redis", redis.url, "--redis-password-file", str(tmp_path / "wrong"),
                "--node-name", "d", *NODE_FLAGS, env=env,
            ),
        ]  # fmt: skip
        a, b, c, refused = nodes
        pub = await publisher_on(http, a, "vault")
        await held_by(http, b, "vault", "a")
        await held_by(http, c, "vault", "a")
        viewer = await http.ws_connect(ws_url(b, "/cameras/vault/ws?header=1"))
        jpeg = make_jpeg(text="password")
        await pub.send_bytes(jpeg)
        assert (await frame_with_seq_after(viewer, 0))[16:] == jpeg
        async with http.get(c.url("/cameras/vault/snapshot.jpg")) as resp:
            assert await resp.read() == jpeg
        async with http.get(c.url("/healthz")) as resp:
            assert (await resp.json())["node"] == f"{socket.gethostname()}:{port}"
        await redis_state(http, refused, "down")
        assert await camera_entry(http, refused, "vault") is None
        logs = [await stop_and_log(broker) for broker in nodes]
    finally:
        redis.kill()
    assert "unreachable" in logs[3] and "password" in logs[3]
    assert not [log for log in logs if password in log or wrong in log]


async def test_tls_to_redis(run_broker: Run, tmp_path: Path, http: aiohttp.ClientSession):
    """With a rediss:// URL the nodes talk to a redis-server that only speaks TLS, checking its
    certificate against the CA given in the URL."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    cert.private_key_pem.write_to_path(tmp_path / "key.pem")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    port = free_port()
    redis = RedisServer(
        tmp_path / "redis", "--tls-port", str(port), "--tls-cert-file", str(tmp_path / "cert.pem"),
        "--tls-key-file", str(tmp_path / "key.pem"), "--tls-ca-cert-file", str(tmp_path / "ca.pem"),
        "--tls-auth-clients", "no",
    )  # fmt: skip
    await redis.start()
    try:
        url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={tmp_path / 'ca.pem'}"
        a, b = [
            await run_broker(
                "--redis", url, "--node-name", name, *NODE_FLAGS, env={"FRAMEBROKER_PUBLISH_TOKEN": TOKEN}
            )
            for name in ("a", "b")
        ]
        pub = await publisher_on(http, a, "tls")
        await held_by(http, b, "tls", "a")
        viewer = await http.ws_connect(ws_url(b, "/cameras/tls/ws?header=1"))
        jpeg = make_jpeg(text="tls")
        await pub.send_bytes(jpeg)
        assert (await frame_with_seq_after(viewer, 0))[16:] == jpeg
    finally:
        redis.kill()


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        (["--workers", "2"], {}, "workers=2 needs --redis"),
        (["--redis", "http://127.0.0.1:6379"], {}, "expected a redis:// or rediss:// URL"),
        (
            ["--workers", "2", "--redis", "redis://127.0.0.1:1/0", "--config", "/nonexistent/broker.toml"],
            {},
            "cannot read the config file",
        ),
        (
            ["--redis", "redis://127.0.0.1:1/0"],
            {"PYTHONPATH": "NO_REDIS"},
            "pip install 'framebroker[cluster]'",
        ),
    ],
)
async def test_cluster_settings_that_cannot_work_stop_the_broker(
    tmp_path: Path, flags: list[str], env: dict[str, str], message: str
):
    """--workers without --redis, a URL that is not Redis', and --redis without redis-py installed
    each stop the broker with one line saying why, and exit status 2."""
    if env.get("PYTHONPATH") == "NO_REDIS":  # a redis package that cannot be imported shadows the real one
        (tmp_path / "redis").mkdir()
        (tmp_path / "redis" / "__init__.py").write_text("raise ImportError('No module named redis')\n")
        env = {"PYTHONPATH": str(tmp_path)}
    stderr = await refused_at_start(tmp_path, flags, env)
    assert message in stderr.splitlines()[-1]


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["single", "workers"])
@pytest.mark.parametrize("query", ["ssl_ca_cert=/x", "foo=bar"])
async def test_a_redis_url_parameter_redis_py_does_not_know_stops_the_broker(
    tmp_path: Path, workers: list[str], query: str
):
    """A misspelt parameter in the Redis URL (ssl_ca_cert for ssl_ca_certs) stops a single broker
    and a supervisor at start, with one line naming --redis and the parameter but not the
    password, instead of a node that starts and stays "unreachable"."""
    url = f"rediss://:hunter2@127.0.0.1:{free_port()}/0?{query}"
    stderr = await refused_at_start(tmp_path, [*workers, "--redis", url], {})
    parameter = query.split("=")[0]
    assert "redis='rediss://127.0.0.1:" in stderr.splitlines()[-1]
    assert f"'{parameter}'" in stderr.splitlines()[-1]
    assert "hunter2" not in stderr


async def refused_at_start(tmp_path: Path, flags: list[str], env: dict[str, str]) -> str:
    """The log of a broker started with `flags` that stops at once with exit status 2, no traceback."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker", "--port", "0", *flags,
        stderr=subprocess.PIPE,
        env={**os.environ, "FRAMEBROKER_STATE_DIR": str(tmp_path / "state"), **env},
        start_new_session=True,  # a broker that did start is stopped with its workers
    )  # fmt: skip
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    assert proc.returncode == 2, stderr.decode()
    assert "Traceback" not in stderr.decode()
    return stderr.decode()


def test_a_single_broker_never_loads_redis(tmp_path: Path):
    """Without --redis the broker imports nothing of redis-py."""
    code = (
        "import sys, pathlib\n"
        "from broker.config import Settings\n"
        "from broker.server import BrokerServer\n"
        "import broker.cli\n"
        f"BrokerServer(Settings(state_dir=pathlib.Path({str(tmp_path)!r}), publish_token='t' * 20))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('redis', 'hiredis')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


async def test_nodes_behind_nginx_need_no_sticky_sessions(
    run_broker: Run, redis: RedisServer, http: aiohttp.ClientSession
):
    """nginx with the shipped cluster upstream in front of two nodes: a publisher and viewers
    land on either node, round robin, and every viewer gets every camera's frames."""
    executable = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(executable, os.X_OK):
        pytest.skip("nginx not found: this test needs Debian's nginx package")
    flags = ("--public", "--trusted-proxies", "127.0.0.1")
    nodes = [await node(run_broker, redis, name, *flags) for name in ("a", "b")]
    folder = tempfile.TemporaryDirectory(prefix="framebroker-nginx-")
    nginx = Nginx(Path(folder.name), free_port())
    try:
        await nginx.start(executable, cluster_site(nginx.port, [n.port for n in nodes]))
        pub = await http.ws_connect(nginx.ws_url("/cameras/road/publish"), headers=AUTH)
        assert (await next_json(pub))["type"] == "viewers"
        holder = (await camera_entry(http, nodes[0], "road") or {}).get("node") or "b"
        await held_by(http, nodes[1], "road", holder)
        viewers = [await http.ws_connect(nginx.ws_url("/cameras/road/ws?header=1")) for _ in range(4)]
        counts = [
            (await camera_entry(http, broker, "road") or {}).get("viewers", {}).get("ws", 0)
            for broker in nodes
        ]
        assert all(counts), counts  # round robin: both nodes have viewers
        jpeg = make_jpeg(text="through nginx")
        await pub.send_bytes(jpeg)
        for viewer in viewers:
            assert (await frame_with_seq_after(viewer, 0))[16:] == jpeg
        async with http.get(nginx.url("/cameras/road/mjpeg")) as resp:
            assert await PartReader(resp).next_part() == jpeg
    finally:
        log = nginx.stop()
        folder.cleanup()
    assert "[emerg]" not in log and "[alert]" not in log, log


def cluster_site(nginx_port: int, node_ports: list[int]) -> str:
    """The shipped site with its commented cluster upstream in place of the single-server one."""
    text = SHIPPED.read_text()
    single = "upstream framebroker {\n    server 127.0.0.1:8080;\n    keepalive 16;\n}\n"
    assert text.count(single) == 1
    lines = text.splitlines(keepends=True)
    first = lines.index("# upstream framebroker {\n")
    last = lines.index("# }\n", first)
    block = [line.removeprefix("# ") for line in lines[first : last + 1]]
    servers = [line for line in block if line.lstrip().startswith("server ")]
    assert len(servers) >= len(node_ports)
    for line, port in zip(servers, node_ports, strict=False):
        block[block.index(line)] = line.replace(line.split()[1], f"127.0.0.1:{port}")
    block = [line for line in block if not (line.lstrip().startswith("server ") and "127.0.0.1" not in line)]
    text = "".join(lines[:first] + lines[last + 1 :]).replace(single, "".join(block))
    listen = "    listen 80 sndbuf=128k;\n    listen [::]:80 sndbuf=128k;\n"
    assert text.count(listen) == 1
    return text.replace(listen, f"    listen 127.0.0.1:{nginx_port} sndbuf=128k;\n")


async def test_workers_speak_to_systemd_through_their_supervisor(tmp_path: Path, redis: RedisServer):
    """Under Type=notify only the supervisor talks to systemd: READY=1 once both workers serve,
    then watchdog pings, which stop while a worker's event loop is stuck and come back after."""
    notify = NotifySocket(f"@framebroker-test-{uuid.uuid4().hex}")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker", "--workers", "2", "--redis", redis.url, "--port", "0", *NODE_FLAGS,
        stderr=subprocess.PIPE,
        env={**os.environ, "FRAMEBROKER_STATE_DIR": str(tmp_path / "state"), "NOTIFY_SOCKET": notify.env,
             "WATCHDOG_USEC": "1000000"},
    )  # fmt: skip
    broker = BrokerProcess(proc)
    try:
        ready = await notify.next(timeout=30)
        assert "READY=1" in ready and any(f.startswith("STATUS=2 workers serving on port") for f in ready)
        assert await notify.next() == {"WATCHDOG=1"}
        await until_log(broker, r"worker 2 started \(pid (\d+)\)")
        worker = int(re.findall(r"worker \d started \(pid (\d+)\)", broker.log)[-1])
        os.kill(worker, signal.SIGSTOP)
        try:
            await until_silent(notify, quiet=1.5, timeout=20)  # no ping while a worker's loop is stuck
        finally:
            os.kill(worker, signal.SIGCONT)
        assert await notify.next(timeout=10) == {"WATCHDOG=1"}
        proc.terminate()
        _, before = await notify.until("STOPPING=1")
        assert all(message == {"WATCHDOG=1"} for message in before)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        await broker.rest_of_log()  # to the end, so the pipe closes
    finally:
        notify.sock.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def until_silent(notify: NotifySocket, quiet: float, timeout: float) -> None:
    """Wait until `quiet` seconds pass without a message (polling: a cancelled receive would
    leave the socket registered with the loop)."""
    loop = asyncio.get_running_loop()
    deadline = last = loop.time()
    deadline += timeout
    while loop.time() < deadline:
        if notify.waiting():
            last = loop.time()
        elif loop.time() - last >= quiet:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"still notified after {timeout} s")
