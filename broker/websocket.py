"""The broker's WebSocket responses: aiohttp's, plus two rules of RFC 6455 that aiohttp leaves out.

- Every frame from a client must be masked (section 5.1: "The server MUST close the
  connection upon receiving a frame that is not masked"). aiohttp's reader unmasks masked
  frames and passes unmasked ones through, so a publisher could push unmasked frames into
  the cache. A small header scanner in front of aiohttp's reader fails such a connection
  with 1002 before the frame reaches the handler.
- The size limit is inclusive: aiohttp refuses a message of exactly `max_msg_size`
  bytes, the broker accepts a frame of exactly `--max-frame-bytes` over HTTP POST too.

aiohttp offers no hook for either, so this reaches into two private attributes of its
request handler; tests/test_protocol.py fails if a new aiohttp moves them.
"""

from __future__ import annotations

from typing import Any

from aiohttp import WebSocketError, WSCloseCode, web

__all__ = ["MaskGuard", "StrictWebSocket"]

UNMASKED = "client frames must be masked (RFC 6455 section 5.1)"


class MaskGuard:
    """Reads just enough of a client's byte stream to see each frame header; skips payloads."""

    __slots__ = ("_head", "_skip")

    def __init__(self) -> None:
        self._head = b""  # a header split across reads
        self._skip = 0  # payload bytes of the current frame not seen yet

    def feed(self, data: bytes) -> bool:
        """Account for `data`; False as soon as a frame header lacks the mask bit."""
        end = len(data)
        pos = min(self._skip, end)
        self._skip -= pos
        while pos < end:
            head = self._head + data[pos : pos + 14]
            if len(head) < 2:
                self._head, pos = head, end
                break
            second = head[1]
            if not second & 0x80:
                return False
            length = second & 0x7F
            size = 2 + {126: 2, 127: 8}.get(length, 0) + 4  # + extended length + masking key
            if len(head) < size:
                self._head, pos = head, end
                break
            if length == 126:
                length = int.from_bytes(head[2:4], "big")
            elif length == 127:
                length = int.from_bytes(head[2:10], "big")
            pos += size - len(self._head)
            self._head = b""
            take = min(length, end - pos)
            pos += take
            self._skip = length - take
        return True


class _GuardedParser:
    """aiohttp's WebSocket reader behind a MaskGuard."""

    __slots__ = ("_guard", "_on_unmasked", "_parser")

    def __init__(self, parser: Any, guard: MaskGuard, on_unmasked: Any) -> None:
        self._parser = parser
        self._guard = guard
        self._on_unmasked = on_unmasked

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if not self._guard.feed(data):
            self._on_unmasked()
            return True, b""
        return self._parser.feed_data(data)

    def feed_eof(self) -> None:
        self._parser.feed_eof()


class StrictWebSocket(web.WebSocketResponse):
    """A WebSocketResponse that fails unmasked client frames and takes `max_msg_size` inclusively."""

    def __init__(self, *, max_msg_size: int, **kwargs: Any) -> None:
        super().__init__(max_msg_size=max_msg_size + 1, **kwargs)

    def _post_start(self, request: web.BaseRequest, protocol: str | None, writer: Any) -> None:
        handler = request.protocol
        guard = MaskGuard()
        # Bytes that came with the handshake are fed to the reader as soon as it is set.
        masked = guard.feed(handler._message_tail)
        if not masked:
            handler._message_tail = b""
        super()._post_start(request, protocol, writer)
        handler._payload_parser = _GuardedParser(handler._payload_parser, guard, self._unmasked)
        if not masked:
            self._unmasked()

    def _unmasked(self) -> None:
        # As aiohttp's own reader does for protocol errors: receive() then closes with 1002.
        self._reader.set_exception(WebSocketError(WSCloseCode.PROTOCOL_ERROR, UNMASKED))
