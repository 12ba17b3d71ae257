"""Protocol strictness: masked client frames only (RFC 6455 5.1); one publisher per camera, POST included."""

from __future__ import annotations

import asyncio
import os
import struct

import pytest

from broker.websocket import MaskGuard

from .conftest import make_jpeg, next_binary, publisher

HANDSHAKE = (
    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
)


def frame(payload: bytes, opcode: int = 0x2, masked: bool = True) -> bytes:
    """One client frame; unmasked when `masked` is False (what RFC 6455 forbids)."""
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, length | (0x80 if masked else 0))
    elif length < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126 | (0x80 if masked else 0), length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127 | (0x80 if masked else 0), length)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def raw_websocket(
    port: int, path: str, extra: str = ""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HANDSHAKE.format(path=path, extra=extra).encode())
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 101")
    return reader, writer


async def close_code(reader: asyncio.StreamReader) -> int | None:
    """Read server frames until its close frame; its code (None if the connection just ends)."""
    while True:
        head = await asyncio.wait_for(reader.read(2), 5)
        if len(head) < 2:
            return None
        opcode, length = head[0] & 0x0F, head[1] & 0x7F
        if length == 126:
            length = struct.unpack("!H", await reader.readexactly(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", await reader.readexactly(8))[0]
        payload = await reader.readexactly(length)
        if opcode == 0x8:
            return struct.unpack("!H", payload[:2])[0]


async def test_an_unmasked_frame_from_a_publisher_fails_the_connection(broker, http):
    """The frame is not cached or served; the publisher is closed with 1002."""
    good = make_jpeg((1, 2, 3))
    async with http.post(broker.url("/cameras/cam/publish"), data=good, headers=broker.auth) as resp:
        assert resp.status == 204
    reader, writer = await raw_websocket(
        broker.port, "/cameras/cam/publish", f"Authorization: Bearer {broker.token}\r\n"
    )
    writer.write(frame(make_jpeg((200, 0, 0)), masked=False))
    assert await close_code(reader) == 1002
    writer.close()
    async with http.get(broker.url("/cameras/cam/snapshot.jpg")) as resp:
        assert await resp.read() == good


async def test_an_unmasked_frame_sent_with_the_handshake_is_caught_too(broker, http):
    """Bytes pipelined right behind the upgrade request go through the same check."""
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    request = HANDSHAKE.format(path="/cameras/cam/publish", extra=f"Authorization: Bearer {broker.token}\r\n")
    writer.write(request.encode() + frame(make_jpeg(), masked=False))
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 101")
    assert await close_code(reader) == 1002
    writer.close()
    async with http.get(broker.url("/cameras/cam/snapshot.jpg")) as resp:
        assert resp.status in (404, 503)  # nothing was ever cached


async def test_masked_frames_split_anywhere_still_arrive(broker, http):
    """Real clients mask; frames cut into pieces at every awkward boundary still publish."""
    jpeg = make_jpeg((0, 0, 250), size=(640, 480), noise=3)
    _reader, writer = await raw_websocket(
        broker.port, "/cameras/cam/publish", f"Authorization: Bearer {broker.token}\r\n"
    )
    data = frame(b'{"type": "hello"}', opcode=0x1) + frame(jpeg)
    for cut in (1, 2, 3, 5, 9, 13, 14, 700):
        writer.write(data[:cut])
        await writer.drain()
        await asyncio.sleep(0.01)
        data = data[cut:]
    writer.write(data)
    for _ in range(100):
        async with http.get(broker.url("/cameras/cam/snapshot.jpg")) as resp:
            if resp.status == 200 and await resp.read() == jpeg:
                break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the masked frame never became the snapshot")
    writer.close()


async def test_viewers_must_mask_too(broker):
    reader, writer = await raw_websocket(broker.port, "/cameras/cam/ws")
    writer.write(frame(b"hi", opcode=0x1, masked=False))
    assert await close_code(reader) == 1002
    writer.close()


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_the_mask_guard_follows_frames_of_every_length_class(size):
    """Headers of 2, 4 and 10 bytes plus the key, payloads skipped, fed one byte at a time or whole."""
    stream = frame(b"x" * size) + frame(b"y" * 3, opcode=0x9) + frame(b"z" * size)
    guard = MaskGuard()
    assert guard.feed(stream)
    assert guard.feed(frame(b"after"))
    trickle = MaskGuard()
    assert all(trickle.feed(stream[i : i + 1]) for i in range(0, min(len(stream), 70_000)))
    assert not MaskGuard().feed(frame(b"x" * size) + frame(b"bad", masked=False))


async def test_a_websocket_publisher_holds_its_camera_against_posts(broker, http):
    """While a WebSocket publisher is connected, POSTs to its camera get 409 and reach no viewer."""
    pub = await publisher(http, broker, "cam")
    viewer = await http.ws_connect(broker.ws_url("/cameras/cam/ws"))
    ws_frame = make_jpeg((0, 255, 0))
    await pub.send_bytes(ws_frame)
    assert await next_binary(viewer) == ws_frame
    async with http.post(
        broker.url("/cameras/cam/publish"), data=make_jpeg((255, 0, 0)), headers=broker.auth
    ) as r:
        assert r.status == 409
        assert "held by" in await r.text()
    await pub.send_bytes(ws_frame)
    assert await next_binary(viewer) == ws_frame
    await pub.close()
    await viewer.close()


async def test_a_posting_address_holds_its_camera_until_it_pauses(start_broker, http):
    """A second POSTing address gets 409 until the first has been quiet for --offline-after."""
    broker = await start_broker(trusted_proxies=("127.0.0.1",), offline_after=0.5)
    url = broker.url("/cameras/cam/publish")

    async def post(address: str) -> int:
        headers = {**broker.auth, "X-Forwarded-For": address}
        async with http.post(url, data=make_jpeg(), headers=headers) as resp:
            return resp.status

    assert await post("198.51.100.1") == 204
    assert await post("198.51.100.2") == 409
    assert await post("198.51.100.1") == 204
    await asyncio.sleep(0.7)
    assert await post("198.51.100.2") == 204  # the first went quiet: the camera changes hands
    pub = await publisher(http, broker, "cam")  # a WebSocket publisher takes over from POSTs
    assert await post("198.51.100.2") == 409
    await pub.close()


async def test_protocol_errors_log_a_warning_with_the_address_and_no_error(broker, caplog):
    reader, writer = await raw_websocket(
        broker.port, "/cameras/cam/publish", f"Authorization: Bearer {broker.token}\r\n"
    )
    writer.write(frame(b"x", masked=False))
    await close_code(reader)
    writer.close()
    await asyncio.sleep(0.1)
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL") or r.exc_info]
    assert any("127.0.0.1" in r.getMessage() and "mask" in r.getMessage() for r in caplog.records)
