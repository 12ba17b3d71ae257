"""Stream viewers over TLS (wss://, https:// MJPEG): what a browser behind TLS costs the server."""

from __future__ import annotations

import os
import select
import socket
import ssl
from collections.abc import Callable

from .client import CLOSED, CONNECTING, HEAD, OPEN, Buffers, Client
from .tally import Tally
from .target import Target
from .tls import WOULD_BLOCK
from .viewers import Viewer

__all__ = ["TLS_READ", "TlsViewer"]

TLS_READ = 1 << 16  # more than a TLS record (16 kB) of plaintext per read
# Bytes read per epoll event, about two 720p frames: as much as a plain viewer takes in one
# go, so that neither reads much more often than the other, and every viewer gets its turn.
READ_BUDGET = 1 << 18


class TlsViewer(Viewer):
    """A Viewer whose connection completes a real TLS handshake and decrypts every byte it receives.

    The TCP connection opens as any client's does; then the handshake runs on the same
    epoll (want-read, want-write), then the request goes out. TLS has no MSG_TRUNC: each
    record is decrypted into `sink`, one buffer shared by the process's TLS viewers, and
    parsed from there, so the server encrypts for and is paced by a reader like a real
    one. Each epoll event reads until the socket is empty or READ_BUDGET is reached.
    """

    __slots__ = ("_context", "_sink", "_sink_view")

    def __init__(
        self,
        target: Target,
        poller: select.epoll,
        on_settled: Callable[[Client], None],
        *,
        kind: str,
        header: bool,
        tally: Tally,
        buffers: Buffers,
        context: ssl.SSLContext,
        sink: bytearray,
    ) -> None:
        super().__init__(target, poller, on_settled, kind=kind, header=header, tally=tally, buffers=buffers)
        self._context = context
        self._sink = sink
        self._sink_view = memoryview(sink)

    def on_event(self, events: int) -> None:
        """Connect, then shake hands, then read the response head and the stream, all decrypted."""
        if self.state == CONNECTING:
            self._handshake()
        elif self.state != CLOSED:
            self._read()

    def _handshake(self) -> None:
        sock = self.sock
        assert sock is not None
        if not isinstance(sock, ssl.SSLSocket):
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self.fail(os.strerror(code))
                return
            # The same descriptor, so the epoll registration stays.
            sock = self.sock = self._context.wrap_socket(
                sock, server_hostname=self.target.host, do_handshake_on_connect=False
            )
        try:
            sock.do_handshake()
            sock.send(self.request())  # a small request into an empty buffer: it all fits
        except ssl.SSLWantReadError:
            self.poller.modify(self.fd, select.EPOLLIN)
            return
        except ssl.SSLWantWriteError:
            self.poller.modify(self.fd, select.EPOLLOUT)
            return
        except OSError as exc:  # ssl.SSLError included
            self.fail(f"TLS handshake failed: {getattr(exc, 'reason', None) or exc.strerror or exc}")
            return
        self.state = HEAD
        self.poller.modify(self.fd, select.EPOLLIN)

    def _read(self) -> None:
        sock = self.sock
        assert isinstance(sock, ssl.SSLSocket)
        taken = 0
        while True:
            try:
                count = sock.recv_into(self._sink, len(self._sink))
            except WOULD_BLOCK:
                return
            except OSError as exc:
                self.fail(exc.strerror or str(exc))
                return
            if not count:
                self.fail("closed by the server")
                return
            if self.state == OPEN:
                self.parser.feed(self._sink_view[:count])
            else:
                self._take_head(bytes(self._sink_view[:count]))
            taken += count
            # Bytes OpenSSL decrypted already are not seen by epoll: stop only without any.
            if self.state == CLOSED or (taken >= READ_BUDGET and not sock.pending()):
                return
