"""Raspberry Pi cameras through picamera2: the ISP scales and flips, an encoder makes JPEGs.

The hardware MJPEG encoder is used where the Pi has one (VC4: Pi 4 and earlier); the
software ``JpegEncoder`` otherwise (Pi 5) and whenever the hardware one fails. Each
``FileOutput`` write is one complete JPEG, arriving on a picamera2 thread.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any

from ..config import CameraConfig, ConfigError
from .base import FrameCallback, SourceError, SourceUnavailable, import_failure
from .handoff import Handoff

__all__ = ["PicameraSource"]

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "on Raspberry Pi OS run 'sudo apt install -y python3-picamera2 --no-install-recommends' "
    "and create the venv with 'python3 -m venv --system-site-packages'"
)
# picamera2's Quality levels and the JpegEncoder q each stands for (encoders/encoder.py).
_QUALITY_LEVELS = ((25, "VERY_LOW"), (35, "LOW"), (50, "MEDIUM"), (65, "HIGH"), (80, "VERY_HIGH"))
# Above this many pixels, 6 buffers of video memory can run out (picamera2 #473).
_LARGE_FRAME = 1920 * 1080


@dataclass(frozen=True)
class _Api:
    """The picamera2/libcamera names the adapter uses, imported once."""

    Picamera2: Any
    JpegEncoder: Any
    Quality: Any
    FileOutput: Any
    Transform: Any
    HardwareMJPEGEncoder: Any | None  # None when picamera2 has no hardware encoder module


def _import_api() -> _Api:
    try:
        from libcamera import Transform
        from picamera2 import Picamera2
        from picamera2.encoders import JpegEncoder, Quality
        from picamera2.outputs import FileOutput
    except Exception as exc:  # missing, or broken (e.g. "numpy.dtype size changed"): one line
        remedy = INSTALL_HINT
        if "numpy" in str(exc) or "dtype" in str(exc):
            remedy += (
                f"; a numpy that pip put in this venv shadows Raspberry Pi OS's: remove it with "
                f"'{sys.executable} -m pip uninstall numpy'"
            )
        raise ConfigError(import_failure("picamera2", exc, remedy)) from None
    try:
        from picamera2.encoders.mjpeg_encoder import MJPEGEncoder
    except Exception:  # no hardware encoder module: the software encoder is used
        MJPEGEncoder = None
    return _Api(Picamera2, JpegEncoder, Quality, FileOutput, Transform, MJPEGEncoder)


class _Sink(io.BufferedIOBase):
    """What ``FileOutput`` writes to: each ``write()`` is one JPEG, on a picamera2 thread."""

    def __init__(self, handoff: Handoff) -> None:
        super().__init__()
        self._handoff = handoff

    def writable(self) -> bool:
        return True

    def write(self, buf: Any) -> int:
        data = bytes(buf)
        self._handoff.put(data)  # never blocks picamera2's encoder thread
        return len(data)


class PicameraSource:
    """A Raspberry Pi camera via picamera2; opening and closing run on worker threads."""

    kind = "picamera2"
    steady = True
    #: How long closing the camera may take before it is abandoned (a hung driver).
    stop_timeout: float = 5.0

    def __init__(
        self,
        *,
        camera_num: int = 0,
        size: tuple[int, int] = (1280, 720),
        fps: float = 15.0,
        quality: int = 80,
        hflip: bool = False,
        vflip: bool = False,
        brightness: float | None = None,
        contrast: float | None = None,
    ) -> None:
        if size[0] % 2 or size[1] % 2:
            raise ConfigError(f"size {size[0]}x{size[1]}: picamera2 needs even width and height")
        self._api = _import_api()
        self.camera_num = camera_num
        self.size = (int(size[0]), int(size[1]))  # picamera2 rejects lists: a tuple it is
        self.fps = fps
        self.quality = quality
        self.hflip = hflip
        self.vflip = vflip
        self.brightness = brightness
        self.contrast = contrast
        self.encoder_name: str | None = None  # which encoder the last start used
        self._hardware_failed = False  # remembered so every reopen does not retry and log it

    @classmethod
    def from_config(cls, camera: CameraConfig) -> PicameraSource:
        """Build from a camera's settings; errors name the camera."""
        try:
            return cls(
                camera_num=camera.camera_num,
                size=camera.size or (1280, 720),
                fps=camera.fps,
                quality=camera.quality,
                hflip=camera.hflip,
                vflip=camera.vflip,
                brightness=camera.brightness,
                contrast=camera.contrast,
            )
        except ConfigError as exc:
            raise ConfigError(f"camera {camera.id!r}: {exc}") from None

    async def run(self, on_frame: FrameCallback) -> None:
        """Open the camera, record JPEGs into ``on_frame`` until cancelled, then close it."""
        loop = asyncio.get_running_loop()
        handoff = Handoff(loop, on_frame)
        opening = asyncio.ensure_future(asyncio.to_thread(self._open, handoff))
        try:
            camera = await asyncio.shield(opening)
        except asyncio.CancelledError:
            handoff.close()
            # Still opening on its thread: close the camera once that finishes.
            opening.add_done_callback(self._close_when_opened)
            raise
        try:
            await loop.create_future()  # frames flow through the handoff until cancelled
        finally:
            handoff.close()
            closing = asyncio.ensure_future(asyncio.to_thread(self._shutdown, camera))
            finished, _ = await asyncio.wait({closing}, timeout=self.stop_timeout)
            if not finished:
                log.warning(
                    "camera %d did not close within %.1fs; abandoning it",
                    self.camera_num,
                    self.stop_timeout,
                )

    # -- worker threads -----------------------------------------------------------

    def _open(self, handoff: Handoff) -> Any:
        api, num = self._api, self.camera_num
        found = api.Picamera2.global_camera_info()
        if not found:
            raise SourceUnavailable(
                "no camera found: check the ribbon cable and 'rpicam-hello --list-cameras'"
            )
        if num >= len(found):
            models = ", ".join(str(c.get("Model", "?")) for c in found)
            raise SourceUnavailable(f"no camera number {num}: found {len(found)} ({models})")
        try:
            camera = api.Picamera2(num)
        except IndexError:  # picamera2 <= 0.3.36 when the camera vanished meanwhile
            raise SourceUnavailable(f"no camera number {num} found") from None
        except RuntimeError as exc:
            raise SourceUnavailable(_open_error(exc, num)) from None
        try:
            camera.configure(self._configuration(camera))
            self.encoder_name = self._start(camera, handoff)
        except (RuntimeError, ValueError, OSError) as exc:
            self._shutdown(camera)
            raise SourceError(f"camera {num}: cannot start: {exc}") from None
        log.info(
            "camera %d: %dx%d at %g fps, %s encoder",
            num,
            *self.size,
            self.fps,
            self.encoder_name,
        )
        return camera

    def _configuration(self, camera: Any) -> Any:
        advertised = camera.camera_controls
        controls: dict[str, Any] = {}
        if "FrameDurationLimits" in advertised:
            frame_us = round(1_000_000 / self.fps)
            controls["FrameDurationLimits"] = (frame_us, frame_us)
        for name, value in (("Brightness", self.brightness), ("Contrast", self.contrast)):
            if value is None:
                continue
            if name in advertised:
                controls[name] = value
            else:
                log.warning("camera %d has no %s control; ignoring it", self.camera_num, name)
        width, height = self.size
        return camera.create_video_configuration(
            # YUV420 moves less memory than RGB and both encoders take it.
            main={"size": (width, height), "format": "YUV420"},
            transform=self._api.Transform(hflip=self.hflip, vflip=self.vflip),
            controls=controls,
            buffer_count=3 if width * height > _LARGE_FRAME else 6,
        )

    def _start(self, camera: Any, handoff: Handoff) -> str:
        api = self._api
        output = api.FileOutput(_Sink(handoff))
        if api.HardwareMJPEGEncoder is not None and not self._hardware_failed:
            try:
                camera.start_recording(api.HardwareMJPEGEncoder(), output, quality=self._quality_level())
                return "hardware MJPEG"
            except (OSError, RuntimeError) as exc:
                # No hardware encoder (Pi 5) or a kernel that rejects it: encode in software.
                self._hardware_failed = True
                log.info("camera %d: hardware MJPEG unavailable (%s)", self.camera_num, exc)
                self._stop_recording(camera)
        encoder = api.JpegEncoder(num_threads=min(4, os.cpu_count() or 1), q=self.quality)
        camera.start_recording(encoder, output)
        return "software JPEG"

    def _quality_level(self) -> Any:
        name = min(_QUALITY_LEVELS, key=lambda level: abs(level[0] - self.quality))[1]
        return self._api.Quality[name]

    def _shutdown(self, camera: Any) -> None:
        self._stop_recording(camera)
        try:
            camera.close()
        except Exception as exc:
            log.warning("camera %d: close failed: %s", self.camera_num, exc)

    def _stop_recording(self, camera: Any) -> None:
        try:
            camera.stop_recording()
        except Exception as exc:
            log.debug("camera %d: stop_recording: %s", self.camera_num, exc)

    def _close_when_opened(self, opening: asyncio.Future[Any]) -> None:
        if opening.cancelled() or opening.exception() is not None:
            return
        threading.Thread(
            target=self._shutdown, args=(opening.result(),), name="picamera2-close", daemon=True
        ).start()


def _open_error(exc: RuntimeError, num: int) -> str:
    """One line for why ``Picamera2(num)`` failed: busy, missing, or something else."""
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    text = " / ".join(str(e) for e in chain)
    if "busy" in text.lower():
        return f"camera {num} is busy: another program (rpicam-*, another agent) is using it"
    if "no camera number" in text.lower():
        return f"no camera number {num} found: check 'rpicam-hello --list-cameras'"
    return f"camera {num} failed to open: {text}"
