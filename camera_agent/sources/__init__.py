"""Frame sources. ``open_source`` imports only the kind it is asked for, so a Pi
without OpenCV extras, or a server without picamera2, loads just what it uses."""

from __future__ import annotations

from ..config import CameraConfig, ConfigError
from .base import FrameCallback, FrameSource, SourceError, SourceUnavailable

__all__ = [
    "FrameCallback",
    "FrameSource",
    "SourceError",
    "SourceUnavailable",
    "open_source",
]

# Settings every source understands; the rest apply to the kinds listed here.
_COMMON = {"id", "source", "fps", "always_on", "idle_grace", "stall_timeout", "max_bad_frames"}
_APPLIES = {
    "picamera2": {"size", "quality", "camera_num", "hflip", "vflip", "brightness", "contrast"},
    "opencv": {"input", "size", "quality", "hflip", "vflip", "loop"},
    "synthetic": {"size", "quality"},
    "files": {"input", "watch", "watch_method", "watch_poll_interval"},
}


def open_source(camera: CameraConfig) -> FrameSource:
    """Build the source for ``camera``; raise ConfigError for settings that cannot work."""
    _reject_unused(camera)
    if camera.source == "synthetic":
        from .synthetic import SyntheticSource

        width, height = camera.size or (640, 480)
        return SyntheticSource(camera.id, width, height, camera.fps, camera.quality)
    if camera.source == "opencv":
        from .opencv import OpenCVSource

        return OpenCVSource.from_config(camera)
    if camera.source == "files":
        from .files import FilesSource

        return FilesSource.from_config(camera)
    if camera.source == "picamera2":
        from .picamera import PicameraSource

        return PicameraSource.from_config(camera)
    raise ConfigError(f"camera {camera.id!r}: unknown source {camera.source!r}")


def _reject_unused(camera: CameraConfig) -> None:
    applies = _COMMON | _APPLIES.get(camera.source, set())
    defaults = CameraConfig(id=camera.id, source=camera.source)
    for key, value in vars(camera).items():
        if key not in applies and value != getattr(defaults, key):
            raise ConfigError(
                f"camera {camera.id!r}: {key}={value!r} does not apply to source {camera.source!r}"
            )
