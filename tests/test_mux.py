"""One viewer socket for many cameras (GET /ws): subscriptions, the frame header, fairness, access, bounds."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import threading
import time

import aiohttp
import pytest

from broker.app_keys import HUB
from broker.jpeg import jpeg_dimensions
from broker.share import ShareLinks
from broker.state import load_signing_key

from .access_support import GARDEN_TOKEN, basic, family_config
from .conftest import make_jpeg, next_binary, publisher
from .mux_support import MuxClient, StreamFrame
from .test_viewer import read_ws_message, stalled_viewer


async def test_subscribe_then_frames_of_each_camera_then_unsubscribe(broker, http):
    """Each subscription is answered with its stream number and the camera's state; its frames
    follow, named by that stream; after unsubscribing, no more frames of that camera."""
    garden = await publisher(http, broker, "garden")
    yard = await publisher(http, broker, "yard")
    first = make_jpeg((1, 2, 3))
    await garden.send_bytes(first)
    client = await MuxClient.connect(http, broker.ws_url("/ws"))

    subscribed = await client.subscribe("garden")
    assert subscribed == {"type": "subscribed", "camera": "garden", "stream": subscribed["stream"],
                          "width": None, "quality": None}  # fmt: skip
    status = await client.reply("status", "garden")
    assert status["online"] is True
    cached = await client.frame()
    assert (cached.stream, cached.seq, cached.jpeg) == (subscribed["stream"], 1, first)

    yard_stream = (await client.subscribe("yard"))["stream"]
    assert yard_stream != subscribed["stream"]
    assert (await client.reply("status", "yard"))["camera"] == "yard"
    for i in range(3):
        yard_frame, garden_frame = make_jpeg((0, i * 50, 0)), make_jpeg((i * 50, 0, 0))
        await yard.send_bytes(yard_frame)
        assert (await client.frame(yard_stream)).jpeg == yard_frame
        await garden.send_bytes(garden_frame)
        assert (await client.frame(subscribed["stream"])).jpeg == garden_frame

    async with http.get(broker.url("/api/cameras")) as response:
        viewers = {camera["id"]: camera["viewers"] for camera in (await response.json())["cameras"]}
    assert viewers == {"garden": {"ws": 1, "mjpeg": 0}, "yard": {"ws": 1, "mjpeg": 0}}

    await client.send(type="unsubscribe", camera="garden")
    assert await client.reply("unsubscribed") == {"type": "unsubscribed", "camera": "garden"}
    await garden.send_bytes(make_jpeg((9, 9, 9)))
    last_yard = make_jpeg((0, 0, 200))
    await yard.send_bytes(last_yard)
    # Frames arrive in order: once yard's newest is here, a garden frame would have come first.
    frame = await client.frame()
    assert (frame.stream, frame.jpeg) == (yard_stream, last_yard)
    assert broker.app[HUB].channel("garden").viewer_count == 0


async def test_frame_header_names_the_stream_its_size_sequence_and_receive_time(broker, http):
    """24 bytes, big-endian: stream (u32), width and quality (u16 each, 0 at full size),
    sequence number (u64), the broker's receive time in ms since the epoch (f64); then the JPEG."""
    pub = await publisher(http, broker, "garden")
    ws = await http.ws_connect(broker.ws_url("/ws"))
    await ws.send_json({"type": "subscribe", "camera": "garden"})
    full = await ws.receive_json(timeout=5)
    await ws.send_json({"type": "subscribe", "camera": "garden", "width": 320, "quality": 50})  # replaces it
    while (small := await ws.receive_json(timeout=5))["type"] != "subscribed":
        pass
    assert (small["width"], small["quality"]) == (320, 50)
    assert full["stream"] != small["stream"]
    jpeg = make_jpeg(size=(1280, 720), noise=3)
    before = time.time() * 1000
    await pub.send_bytes(jpeg)
    data = await next_binary(ws)
    stream, width, quality, seq, received_ms = struct.unpack("!IHHQd", data[:24])
    assert (stream, width, quality, seq) == (small["stream"], 320, 50, 1)
    assert before - 50 <= received_ms <= time.time() * 1000 + 50
    assert jpeg_dimensions(data[24:]) == (320, 180)


async def test_a_camera_that_never_published_can_be_waited_for(broker, http):
    """A subscription to a camera with no publisher yet says offline, then shows its first frame."""
    client = await MuxClient.connect(http, broker.ws_url("/ws"))
    stream = (await client.subscribe("later"))["stream"]
    assert (await client.reply("status", "later"))["online"] is False
    pub = await publisher(http, broker, "later")
    jpeg = make_jpeg()
    await pub.send_bytes(jpeg)
    assert (await client.reply("status", "later"))["online"] is True
    assert (await client.frame(stream)).jpeg == jpeg


async def test_a_refused_camera_gets_an_error_and_the_socket_stays_open(start_broker, http, tmp_path):
    """alice may watch garden, not bob's door: her subscription to door is answered with an
    error naming door; garden on the same socket works; without credentials: 401 before upgrade."""
    broker = await start_broker(config=family_config(tmp_path), host="127.0.0.1")
    for camera, token in (("garden", GARDEN_TOKEN), ("door", broker.token)):
        headers = {"Authorization": f"Bearer {token}"}
        url = broker.url(f"/cameras/{camera}/publish")
        async with http.post(url, data=make_jpeg(), headers=headers) as response:
            assert response.status == 204

    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(broker.ws_url("/ws"))
    assert refused.value.status == 401

    client = await MuxClient.connect(http, broker.ws_url("/ws"), headers=basic("alice"))
    await client.send(type="subscribe", camera="door")
    error = await client.reply("error")
    assert error["camera"] == "door"
    assert "may not watch camera 'door'" in error["error"]
    stream = (await client.subscribe("garden"))["stream"]
    assert (await client.frame(stream)).seq == 1
    assert broker.app[HUB].channel("door").viewer_count == 0
    assert not client.ws.closed


async def test_a_share_link_watches_its_own_camera_on_the_socket(start_broker, http, tmp_path):
    """`/ws?share=` (the page opened from a share link): its camera, and no other."""
    broker = await start_broker(config=family_config(tmp_path))
    for camera, token in (("garden", GARDEN_TOKEN), ("door", broker.token)):
        headers = {"Authorization": f"Bearer {token}"}
        url = broker.url(f"/cameras/{camera}/publish")
        async with http.post(url, data=make_jpeg(), headers=headers) as response:
            assert response.status == 204
    share = ShareLinks(load_signing_key(broker.settings)).token("garden", time.time() + 600)
    client = await MuxClient.connect(http, broker.ws_url("/ws"), params={"share": share})
    stream = (await client.subscribe("garden"))["stream"]
    assert (await client.frame(stream)).seq == 1
    await client.send(type="subscribe", camera="door")
    assert (await client.reply("error", "door"))["error"] == "you may not watch camera 'door'"


async def test_bad_requests_get_errors_and_only_repeated_abuse_closes(start_broker, http):
    """Malformed, unknown and binary messages each get a JSON error; the socket closes (1008)
    only at --max-bad-messages, never on the first."""
    broker = await start_broker(max_bad_messages=7)
    client = await MuxClient.connect(http, broker.ws_url("/ws"))
    bad = [
        "not json",
        json.dumps(["subscribe"]),
        json.dumps({"type": "dance"}),
        json.dumps({"type": "subscribe", "camera": "../etc"}),
        json.dumps({"type": "subscribe", "camera": "garden", "width": "wide"}),
        "[" * 4000,  # nested deeper than the parser goes
    ]
    for text in bad:
        await client.ws.send_str(text)
        error = await client.reply("error")
        assert error["error"]
    # Still usable after six bad requests.
    assert (await client.subscribe("garden", width=320))["width"] == 320
    await client.ws.send_bytes(b"\x00\x01")
    assert "binary" in (await client.reply("error"))["error"]
    assert await asyncio.wait_for(client.closed, 5) == 1008


async def test_subscriptions_per_socket_are_bounded(start_broker, http):
    """Past --max-subscriptions a subscription is refused with an error; unsubscribing makes room."""
    broker = await start_broker(max_subscriptions=2)
    client = await MuxClient.connect(http, broker.ws_url("/ws"))
    await client.subscribe("one")
    await client.subscribe("two")
    await client.subscribe("two", width=160)  # a change of size is no new subscription
    await client.send(type="subscribe", camera="three")
    error = await client.reply("error", "three")
    assert "max_subscriptions=2" in error["error"]
    await client.send(type="unsubscribe", camera="one")
    await client.reply("unsubscribed", "one")
    await client.subscribe("three")


async def test_a_full_camera_refuses_the_subscription_not_the_socket(start_broker, http):
    """--max-viewers-per-camera counts each subscription as a viewer of its camera."""
    broker = await start_broker(max_viewers_per_camera=1)
    pub = await publisher(http, broker, "garden")
    await pub.send_bytes(make_jpeg())
    first = await MuxClient.connect(http, broker.ws_url("/ws"))
    await first.subscribe("garden")
    second = await MuxClient.connect(http, broker.ws_url("/ws"))
    await second.send(type="subscribe", camera="garden")
    assert "max_viewers_per_camera=1" in (await second.reply("error", "garden"))["error"]
    await first.close()
    await second.subscribe("garden")


def masked_text(text: str) -> bytes:
    """A client's masked text frame."""
    payload = text.encode()
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


class SlowReader(threading.Thread):
    """Reads a raw /ws socket at about `rate` bytes a second, noting each message in order."""

    def __init__(self, sock: socket.socket, rate: float) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.rate = rate
        self.messages: list[tuple[int, bytes]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                opcode, payload = read_ws_message(self.sock)
            except OSError:
                return
            self.messages.append((opcode, payload))
            time.sleep(len(payload) / self.rate)


async def test_a_busy_camera_never_starves_a_quiet_one_on_a_slow_socket(start_broker, http):
    """One socket, a slow reader, a 60 fps camera of large frames and a 1 fps camera: every
    frame of the quiet camera arrives, each soon after it was published (few busy frames
    published after it overtake it), while the busy camera's frames are skipped, newest wins."""
    broker = await start_broker(heartbeat=30.0, viewer_send_timeout=10.0)  # the raw reader answers no pings
    busy = await publisher(http, broker, "busy")
    quiet = await publisher(http, broker, "quiet")
    big = [make_jpeg(size=(1280, 720), noise=i + 1) for i in range(4)]
    assert min(map(len, big)) > 100_000
    await busy.send_bytes(big[0])
    await quiet.send_bytes(make_jpeg(text="q1"))
    busy_sent, quiet_sent = 1, 1

    sock = await asyncio.to_thread(stalled_viewer, broker.port, "/ws")
    reader = SlowReader(sock, rate=1_000_000)  # about 8 busy frames a second
    try:
        for camera in ("busy", "quiet"):
            sock.sendall(masked_text(json.dumps({"type": "subscribe", "camera": camera})))
        reader.start()
        busy_before_quiet: dict[int, int] = {1: 1}  # quiet seq -> busy frames published before it
        started = time.monotonic()
        next_quiet = started + 1.0
        while quiet_sent < 5:
            await busy.send_bytes(big[busy_sent % len(big)])
            busy_sent += 1
            if time.monotonic() >= next_quiet:
                busy_before_quiet[quiet_sent + 1] = busy_sent
                await quiet.send_bytes(make_jpeg(text=f"q{quiet_sent + 1}"))
                quiet_sent += 1
                next_quiet += 1.0
            await asyncio.sleep(1 / 60)

        def quiet_seqs() -> list[int]:
            return [seq for stream, seq in frames_of(reader.messages) if stream == streams["quiet"]]

        streams = await wait_for_streams(reader)
        deadline = time.monotonic() + 10
        while quiet_seqs()[-1:] != [quiet_sent] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert quiet_seqs() == list(range(1, quiet_sent + 1))  # none skipped, none starved

        frames = frames_of(reader.messages)
        for quiet_seq, busy_published in busy_before_quiet.items():
            position = frames.index((streams["quiet"], quiet_seq))
            overtaking = [
                seq for stream, seq in frames[:position] if stream == streams["busy"] and seq > busy_published
            ]
            assert len(overtaking) <= 4, (quiet_seq, overtaking)

        busy_seqs = [seq for stream, seq in frames if stream == streams["busy"]]
        assert busy_seqs == sorted(busy_seqs)
        assert len(busy_seqs) < busy_sent / 2  # the reader could not take them all: skipped, not queued
        (subscription,) = broker.app[HUB].channel("busy").viewers
        assert subscription.frames_skipped > 0
        assert subscription.pending is None or subscription.queued  # at most one frame waits
    finally:
        reader.stop.set()
        sock.close()


async def wait_for_streams(reader: SlowReader) -> dict[str, int]:
    """camera -> stream, from the `subscribed` answers the reader has seen."""
    for _ in range(200):
        streams = {
            message["camera"]: message["stream"]
            for opcode, payload in list(reader.messages)
            if opcode == 1 and (message := json.loads(payload))["type"] == "subscribed"
        }
        if len(streams) == 2:
            return streams
        await asyncio.sleep(0.05)
    raise AssertionError("no subscribed answers")


def frames_of(messages: list[tuple[int, bytes]]) -> list[tuple[int, int]]:
    """(stream, seq) of each binary message, in order."""
    return [
        (StreamFrame.parse(payload).stream, StreamFrame.parse(payload).seq)
        for opcode, payload in list(messages)
        if opcode == 2
    ]


async def test_shutdown_closes_the_socket_going_away(start_broker, http):
    """A broker that stops closes /ws sockets with 1001."""
    broker = await start_broker()
    client = await MuxClient.connect(http, broker.ws_url("/ws"))
    await client.subscribe("garden")
    await broker.stop()
    assert await asyncio.wait_for(client.closed, 10) == aiohttp.WSCloseCode.GOING_AWAY


async def test_a_socket_counts_once_per_address_however_many_cameras_it_watches(start_broker, http):
    """With --max-connections-per-ip 2, an address holds two /ws sockets of 3 cameras each; a third
    socket gets 429 before the upgrade; each subscription counts as a viewer of its camera."""
    broker = await start_broker(max_connections_per_ip=2, trusted_proxies=("127.0.0.1",), public=True)
    away = {"X-Forwarded-For": "198.51.100.7"}
    clients = [await MuxClient.connect(http, broker.ws_url("/ws"), headers=away) for _ in range(2)]
    for client in clients:
        for camera in ("a", "b", "c"):
            await client.subscribe(camera)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(broker.ws_url("/ws"), headers=away)
    assert (refused.value.status, refused.value.headers["Retry-After"]) == (429, "10")
    assert [broker.app[HUB].channel(camera).viewer_count for camera in ("a", "b", "c")] == [2, 2, 2]
