"""OpenCV capture: USB/V4L2 devices, video files and RTSP/HTTP streams.

JPEG bytes pass through untouched where OpenCV can hand them over (MJPG webcams with
CONVERT_RGB=0; MJPEG files and streams with CAP_PROP_FORMAT=-1); anything else is
decoded and re-encoded with ``cv2.imencode``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np

from ..config import CameraConfig, ConfigError
from ..jpeg import complete_jpeg
from .base import SourceError, SourceUnavailable
from .threaded import FrameReader, ThreadedSource

__all__ = ["OpenCVSource"]

log = logging.getLogger(__name__)

_URL_SCHEMES = {"rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt"}
# Network streams: give up on an unreachable or silent server instead of hanging.
_NETWORK_TIMEOUT_MS = 5000
_MJPG = cv2.VideoWriter_fourcc(*"MJPG")


@dataclass(frozen=True)
class _Target:
    kind: str  # "device", "url" or "file"
    value: int | str
    label: str


class OpenCVSource(ThreadedSource):
    """Frames from ``cv2.VideoCapture``; live inputs are read as fast as they come and
    thinned to ``fps``, video files are played at ``fps``."""

    kind = "opencv"

    def __init__(
        self,
        input: str,
        *,
        fps: float = 15.0,
        size: tuple[int, int] | None = None,
        quality: int = 80,
        hflip: bool = False,
        vflip: bool = False,
        loop: bool = False,
    ) -> None:
        self.target = _parse_input(input)
        # A file is played at fps by the worker; live inputs pace themselves (see _Reader).
        super().__init__(fps if self.target.kind == "file" else None)
        self.frame_interval = 1.0 / fps
        self.size = size
        self.quality = quality
        self.flip = _flip_code(hflip, vflip)
        self.loop = loop
        # Passing JPEG bytes through cannot flip them.
        self.passthrough = self.flip is None

    @classmethod
    def from_config(cls, camera: CameraConfig) -> OpenCVSource:
        """Build from a camera's settings; errors name the camera and its input."""
        if camera.input is None:
            raise ConfigError(f"camera {camera.id!r}: source 'opencv' needs --input")
        try:
            return cls(
                camera.input,
                fps=camera.fps,
                size=camera.size,
                quality=camera.quality,
                hflip=camera.hflip,
                vflip=camera.vflip,
                loop=camera.loop,
            )
        except ConfigError as exc:
            raise ConfigError(f"camera {camera.id!r}: {exc}") from None

    def open_reader(self, stop: threading.Event) -> FrameReader:
        """Open the capture (blocking: device negotiation or a network connect)."""
        return _Reader(self, stop)


class _Reader:
    """One open VideoCapture; used only on the source's worker thread."""

    def __init__(self, source: OpenCVSource, stop: threading.Event) -> None:
        self._source = source
        self._stop = stop
        self._target = source.target
        self._params = [cv2.IMWRITE_JPEG_QUALITY, source.quality]
        self._next_at = time.monotonic()
        self._checked_passthrough = False
        self._cap, self._passthrough = self._open(source.passthrough)

    def read(self) -> bytes | None:
        while not self._stop.is_set():
            frame = self._next_frame()
            if frame is None:
                return None
            jpeg = self._to_jpeg(frame)
            if jpeg is not None:
                return jpeg
        return None

    def close(self) -> None:
        self._cap.release()

    # -- private ----------------------------------------------------------------

    def _open(self, passthrough: bool) -> tuple[cv2.VideoCapture, bool]:
        target = self._target
        if target.kind == "device":
            cap = cv2.VideoCapture(target.value, cv2.CAP_V4L2)
        elif target.kind == "url":
            cap = cv2.VideoCapture(
                target.value,
                cv2.CAP_FFMPEG,
                [
                    cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                    _NETWORK_TIMEOUT_MS,
                    cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                    _NETWORK_TIMEOUT_MS,
                ],
            )
        else:
            cap = cv2.VideoCapture(target.value, cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            raise SourceUnavailable(f"cannot open {target.label}")
        if target.kind == "device":
            passthrough = self._setup_device(cap, passthrough)
        elif passthrough:
            # FFmpeg hands over undecoded packets; they are JPEGs only for MJPEG input,
            # which the first packet tells (see _to_jpeg).
            passthrough = cap.set(cv2.CAP_PROP_FORMAT, -1)
        return cap, passthrough

    def _setup_device(self, cap: cv2.VideoCapture, passthrough: bool) -> bool:
        source = self._source
        # Ask for MJPG even when re-encoding: it is what lets USB 2 carry large frames.
        cap.set(cv2.CAP_PROP_FOURCC, _MJPG)
        if source.size:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, source.size[0])
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, source.size[1])
        cap.set(cv2.CAP_PROP_FPS, 1.0 / source.frame_interval)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not one from 4 buffers ago
        fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little")
        if not passthrough or fourcc != b"MJPG":
            if passthrough:
                log.info("%s delivers %r, not MJPG: re-encoding", self._target.label, fourcc)
            return False
        # set() may claim success without effect; only the read-back value counts.
        cap.set(cv2.CAP_PROP_CONVERT_RGB, 0)
        if cap.get(cv2.CAP_PROP_CONVERT_RGB) != 0:
            cap.set(cv2.CAP_PROP_CONVERT_RGB, 1)
            return False
        return True

    def _next_frame(self) -> np.ndarray | None:
        if self._target.kind == "file":
            ok, frame = self._cap.read()
            if not ok and self._source.loop:
                # Reopening is the one rewind that works in raw-packet mode too.
                self._cap.release()
                self._cap, self._passthrough = self._open(self._passthrough)
                ok, frame = self._cap.read()
                if not ok:
                    raise SourceError(f"{self._target.label}: no frames after rewinding")
            return frame if ok else None
        # Live input: keep draining it so no stale frame waits in a buffer, and
        # decode/encode only the frames that are due.
        interval = self._source.frame_interval
        while True:
            if not self._cap.grab():
                raise SourceUnavailable(f"{self._target.label}: no more frames")
            now = time.monotonic()
            # A quarter interval of slack keeps a 30 fps camera at 15 fps, not 10.
            if now >= self._next_at - interval / 4:
                self._next_at = max(self._next_at + interval, now - interval)
                break
            if self._stop.is_set():
                return None
        ok, frame = self._cap.retrieve()
        if not ok:
            raise SourceUnavailable(f"{self._target.label}: cannot retrieve a frame")
        return frame

    def _to_jpeg(self, frame: np.ndarray) -> bytes | None:
        if self._passthrough:
            jpeg = complete_jpeg(frame.tobytes())
            if jpeg is not None:
                self._checked_passthrough = True
                return jpeg
            if self._checked_passthrough:
                log.debug("%s: skipped an incomplete JPEG", self._target.label)
                return None
            # The very first packet is not a JPEG: not MJPEG input, decode instead.
            log.info("%s is not MJPEG: re-encoding", self._target.label)
            self._cap.release()
            self._cap, self._passthrough = self._open(passthrough=False)
            return None
        source = self._source
        if source.size and (frame.shape[1], frame.shape[0]) != source.size:
            frame = cv2.resize(frame, source.size, interpolation=cv2.INTER_AREA)
        if source.flip is not None:
            frame = cv2.flip(frame, source.flip)
        ok, buf = cv2.imencode(".jpg", frame, self._params)
        if not ok:
            raise SourceError(f"{self._target.label}: cv2.imencode failed")
        return buf.tobytes()


def _parse_input(text: str) -> _Target:
    if text.isdigit():
        return _Target("device", int(text), f"video device {text}")
    if text.startswith("/dev/"):
        return _Target("device", text, text)
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme.lower() not in _URL_SCHEMES or not parts.hostname:
            raise ConfigError(
                f"input {text!r}: bad URL (expected {', '.join(sorted(_URL_SCHEMES))} with a host)"
            )
        # The label goes to logs: keep any password out of it.
        return _Target("url", text, f"{parts.scheme}://{parts.hostname}{parts.path}")
    path = Path(text).expanduser()
    if not path.is_file():
        raise ConfigError(f"input {text!r}: no such video file")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"input {text!r}: cannot read: {exc.strerror}") from None
    return _Target("file", str(path), str(path))


def _flip_code(hflip: bool, vflip: bool) -> int | None:
    if hflip and vflip:
        return -1
    if hflip:
        return 1
    if vflip:
        return 0
    return None
