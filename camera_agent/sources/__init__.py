"""Frame sources. ``open_source`` imports only the kind it is asked for, so a Pi
without OpenCV, or a server without picamera2, loads just what it uses."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..config import CameraConfig, ConfigError
from .base import FrameCallback, FrameSource, SourceError, SourceUnavailable, import_failure

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
# What a kind's module imports beyond the agent itself, and how to get it. picamera2 is
# imported (and explained) by its adapter, when the source is built.
_NEEDS = {
    "opencv": (
        "OpenCV (with numpy)",
        "install the opencv extra (pip install -e '.[opencv]' in the framebroker folder); "
        "on Raspberry Pi OS use 'sudo apt install python3-opencv' instead",
    ),
    "synthetic": ("Pillow", "pip install Pillow (on Raspberry Pi OS: sudo apt install python3-pil)"),
    "files": ("watchfiles", "pip install watchfiles"),
}


def open_source(camera: CameraConfig) -> FrameSource:
    """Build the source for ``camera``; raise ConfigError for settings that cannot work."""
    _reject_unused(camera)
    if camera.source == "synthetic":
        width, height = camera.size or (640, 480)
        source = _module(camera, "synthetic").SyntheticSource
        return source(camera.id, width, height, camera.fps, camera.quality)
    if camera.source == "opencv":
        return _module(camera, "opencv").OpenCVSource.from_config(camera)
    if camera.source == "files":
        return _module(camera, "files").FilesSource.from_config(camera)
    if camera.source == "picamera2":
        return _module(camera, "picamera").PicameraSource.from_config(camera)
    raise ConfigError(f"camera {camera.id!r}: unknown source {camera.source!r}")


def _module(camera: CameraConfig, name: str) -> ModuleType:
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except Exception as exc:  # missing, or present but broken: one line, never a traceback
        what, remedy = _NEEDS.get(camera.source, (f"the {name} source", "reinstall framebroker"))
        raise ConfigError(f"camera {camera.id!r}: {import_failure(what, exc, remedy)}") from None


def _reject_unused(camera: CameraConfig) -> None:
    applies = _COMMON | _APPLIES.get(camera.source, set())
    defaults = CameraConfig(id=camera.id, source=camera.source)
    for key, value in vars(camera).items():
        if key not in applies and value != getattr(defaults, key):
            raise ConfigError(
                f"camera {camera.id!r}: {key}={value!r} does not apply to source {camera.source!r}"
            )
