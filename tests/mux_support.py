"""A client of the viewer socket for many cameras (GET /ws), as README "Protocol" describes it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import struct
from typing import Any

import aiohttp

# README, "Viewing many cameras on one socket": stream, width, quality, seq, receive time.
HEADER = struct.Struct("!IHHQd")


@dataclasses.dataclass(frozen=True)
class StreamFrame:
    """One binary message of /ws, its header read."""

    stream: int
    width: int
    quality: int
    seq: int
    received_ms: float
    jpeg: bytes

    @classmethod
    def parse(cls, data: bytes) -> StreamFrame:
        return cls(*HEADER.unpack_from(data), jpeg=data[HEADER.size :])


class MuxClient:
    """Subscribes and reads; text messages and frames are kept apart, in order of arrival."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.texts: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.frames: asyncio.Queue[StreamFrame] = asyncio.Queue()
        self.closed: asyncio.Future[aiohttp.WSMessage] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, http: aiohttp.ClientSession, url: str, **kwargs: Any) -> MuxClient:
        return cls(await http.ws_connect(url, **kwargs))

    async def send(self, **request: Any) -> None:
        await self.ws.send_str(json.dumps(request))

    async def subscribe(self, camera: str, **options: Any) -> dict[str, Any]:
        """Subscribe and return the broker's `subscribed` answer."""
        await self.send(type="subscribe", camera=camera, **options)
        return await self.reply("subscribed", camera)

    async def reply(self, kind: str, camera: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
        """The next text message of type `kind` (for `camera`), skipping others."""
        while True:
            message = await asyncio.wait_for(self.texts.get(), timeout)
            if message["type"] == kind and (camera is None or message.get("camera") == camera):
                return message

    async def frame(self, stream: int | None = None, timeout: float = 5.0) -> StreamFrame:
        """The next frame (of `stream`), skipping others."""
        while True:
            frame = await asyncio.wait_for(self.frames.get(), timeout)
            if stream is None or frame.stream == stream:
                return frame

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.texts.put_nowait(json.loads(msg.data))
            elif msg.type == aiohttp.WSMsgType.BINARY:
                self.frames.put_nowait(StreamFrame.parse(msg.data))
        self.closed.set_result(self.ws.close_code)
