"""A fake ``picamera2`` + ``libcamera``: the real signatures (see capture.md §1.10), frames
from a background thread, the real error shapes, and a record of every call.

``install(monkeypatch)`` puts fresh modules into ``sys.modules`` and returns the rig
that drives them; nothing is shared between tests.
"""

from __future__ import annotations

import enum
import io
import sys
import threading
import types
from dataclasses import dataclass, field
from typing import Any

import pytest

from camera_agent.sources.synthetic import SyntheticSource

IMX708 = {"Model": "imx708", "Location": 2, "Rotation": 180, "Id": "/base/soc/i2c0mux/imx708@1a", "Num": 0}
# camera_controls maps a name to (min, max, default), as libcamera advertises it.
DEFAULT_CONTROLS = {
    "FrameDurationLimits": (33333, 120000, None),
    "Brightness": (-1.0, 1.0, 0.0),
    "Contrast": (0.0, 32.0, 1.0),
    "AeEnable": (False, True, None),
    "NoiseReductionMode": (0, 4, 0),
}
_STREAM_KEYS = {"format", "size", "stride", "preserve_ar"}


@dataclass
class Call:
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass
class Rig:
    """What the fake camera stack has, does and has been asked."""

    cameras: list[dict[str, Any]] = field(default_factory=lambda: [dict(IMX708)])
    present: bool = True  # False: listed by global_camera_info() but gone when opened
    old_picamera2: bool = False  # <= 0.3.36 raises IndexError for a missing camera
    busy: bool = False
    platform: str = "vc4"  # "vc4" has the hardware MJPEG encoder; "pisp" (Pi 5) has none
    hardware_error: BaseException | None = None  # raised by start_recording with hardware MJPEG
    controls: dict[str, tuple[Any, Any, Any]] = field(default_factory=lambda: dict(DEFAULT_CONTROLS))
    fps: float = 30.0
    hang_after: int | None = None  # stop delivering after this many frames (a stalled camera)
    corrupt: frozenset[int] = frozenset()  # frame numbers the encoder delivers cut short
    calls: list[Call] = field(default_factory=list)
    open_cameras: set[int] = field(default_factory=set)
    writer_threads: set[str] = field(default_factory=set)
    frames_written: int = 0
    _pattern: SyntheticSource = field(
        default_factory=lambda: SyntheticSource("pi", 160, 120, deterministic=True)
    )

    def record(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.calls.append(Call(name, args, kwargs))

    def called(self, name: str) -> list[Call]:
        return [c for c in self.calls if c.name == name]

    def frame(self, index: int) -> bytes:
        jpeg = self._pattern.render(index)
        return jpeg[: len(jpeg) // 2] if index in self.corrupt else jpeg


class _Transform:
    """libcamera.Transform(rotation=0, hflip=False, vflip=False, transpose=False)."""

    def __init__(
        self, rotation: int = 0, hflip: bool = False, vflip: bool = False, transpose: bool = False
    ) -> None:
        self.rotation = rotation
        self.hflip = bool(hflip)
        self.vflip = bool(vflip)
        self.transpose = bool(transpose)


class _Quality(enum.Enum):
    VERY_LOW = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    VERY_HIGH = 4


class _Encoder:
    rig: Rig

    def __init__(self) -> None:
        self.frame_skip_count = 1


class _JpegEncoder(_Encoder):
    def __init__(
        self,
        num_threads: int = 4,
        q: int | None = None,
        colour_space: Any = None,
        colour_subsampling: str = "420",
    ) -> None:
        super().__init__()
        self.rig.record(
            "JpegEncoder",
            num_threads=num_threads,
            q=q,
            colour_space=colour_space,
            colour_subsampling=colour_subsampling,
        )
        self.num_threads = num_threads
        self.q = q


class _HardwareMJPEGEncoder(_Encoder):
    """picamera2.encoders.mjpeg_encoder.MJPEGEncoder: the V4L2 hardware codec of VC4."""

    def __init__(self, bitrate: int | None = None) -> None:
        if self.rig.platform != "vc4":
            raise RuntimeError("Hardware MJPEG not available on this platform")
        super().__init__()
        self.rig.record("MJPEGEncoder", bitrate=bitrate)
        self.bitrate = bitrate


class _LibavMjpegEncoder(_Encoder):
    def __init__(
        self,
        bitrate: int | None = None,
        repeat: bool = True,
        iperiod: int = 30,
        framerate: float = 30,
        qp: int | None = None,
    ) -> None:
        super().__init__()
        self.rig.record("LibavMjpegEncoder", bitrate=bitrate)


class _Output:
    def __init__(self, pts: Any = None) -> None:
        self.recording = False

    def start(self) -> None:
        self.recording = True

    def stop(self) -> None:
        self.recording = False

    def outputframe(
        self,
        frame: bytes,
        keyframe: bool = True,
        timestamp: int | None = None,
        packet: Any = None,
        audio: bool = False,
    ) -> None:
        """Subclasses write the frame somewhere."""


class _FileOutput(_Output):
    def __init__(self, file: Any = None, pts: Any = None, split: Any = None) -> None:
        super().__init__(pts=pts)
        if not isinstance(file, str | io.BufferedIOBase):
            raise RuntimeError("Must pass io.BufferedIOBase")
        self.fileoutput = file

    def outputframe(
        self,
        frame: bytes,
        keyframe: bool = True,
        timestamp: int | None = None,
        packet: Any = None,
        audio: bool = False,
    ) -> None:
        if self.recording:
            self.fileoutput.write(frame)
            self.fileoutput.flush()


class _Picamera2:
    rig: Rig

    def __init__(
        self, camera_num: int = 0, verbose_console: Any = None, tuning: Any = None, allocator: Any = None
    ) -> None:
        rig = self.rig
        rig.record("Picamera2", camera_num=camera_num)
        if not rig.present or camera_num >= len(rig.cameras):
            if rig.old_picamera2:
                raise IndexError("list index out of range")
            raise RuntimeError(
                f"No camera number {camera_num} found - "
                'use "rpicam-hello --list-cameras" to check connected cameras'
            )
        if rig.busy or camera_num in rig.open_cameras:
            try:
                raise RuntimeError("Failed to acquire camera: Device or resource busy")
            except RuntimeError as cause:
                raise RuntimeError("Camera __init__ sequence did not complete.") from cause
        rig.open_cameras.add(camera_num)
        self.camera_num = camera_num
        self.options: dict[str, Any] = {"quality": 90, "compress_level": 1}
        self.camera_properties = {"Model": rig.cameras[camera_num]["Model"], "PixelArraySize": (4608, 2592)}
        self.pre_callback = None
        self.post_callback = None
        self.camera_config: dict[str, Any] | None = None
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def camera_controls(self) -> dict[str, tuple[Any, Any, Any]]:
        return dict(self.rig.controls)

    def create_video_configuration(
        self,
        main: dict | None = None,
        lores: Any = None,
        raw: Any = None,
        transform: Any = None,
        colour_space: Any = None,
        buffer_count: int = 6,
        controls: dict | None = None,
        display: str = "main",
        encode: str = "main",
        queue: bool = True,
        sensor: Any = None,
        use_case: str = "video",
    ) -> dict[str, Any]:
        main = dict(main or {})
        controls = dict(controls or {})
        self.rig.record(
            "create_video_configuration",
            main=main,
            transform=transform,
            controls=controls,
            buffer_count=buffer_count,
        )
        for key in main:
            if key not in _STREAM_KEYS:
                raise ValueError(
                    f"Bad key '{key}': valid stream configuration keys are {sorted(_STREAM_KEYS)}"
                )
        size = main.get("size", (1280, 720))
        if not isinstance(size, tuple) or len(size) != 2:
            raise RuntimeError("size in main stream should be (width, height)")
        defaults: dict[str, Any] = {"NoiseReductionMode": 1}
        if "FrameDurationLimits" in self.rig.controls:
            defaults["FrameDurationLimits"] = (33333, 33333)
        return {
            "use_case": use_case,
            "main": {"format": main.get("format", "XBGR8888"), "size": size},
            "transform": transform if transform is not None else _Transform(),
            "buffer_count": buffer_count,
            "controls": defaults | controls,
        }

    def configure(self, camera_config: dict[str, Any] | None = None) -> None:
        self.rig.record("configure", camera_config)
        assert camera_config is not None
        for name in camera_config["controls"]:
            if name not in self.rig.controls:
                raise RuntimeError(f"Control {name} is not advertised by libcamera")
        self.camera_config = camera_config

    def set_controls(self, controls: dict[str, Any]) -> None:
        self.rig.record("set_controls", controls)
        for name in controls:
            if name not in self.rig.controls:
                raise RuntimeError(f"Control {name} is not advertised by libcamera")

    def start(self, config: Any = None, show_preview: bool = False) -> None:
        self.rig.record("start")

    def stop(self) -> None:
        self.rig.record("stop")

    def start_recording(
        self,
        encoder: _Encoder,
        output: _Output,
        pts: Any = None,
        config: Any = None,
        quality: _Quality | None = None,
        name: str | None = None,
    ) -> None:
        self.rig.record("start_recording", encoder, output, quality=quality)
        if self.camera_config is None:
            self.configure(self.create_video_configuration())
        if isinstance(encoder, _HardwareMJPEGEncoder) and self.rig.hardware_error is not None:
            raise self.rig.hardware_error
        output.start()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._deliver, args=(output, self._stop), name="fake-picamera2-encoder"
        )
        self._thread.start()

    def stop_recording(self) -> None:
        self.rig.record("stop_recording")
        if self._thread is not None:
            assert self._stop is not None
            self._stop.set()
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        self.rig.record("close")
        if self._thread is not None:
            self.stop_recording()
        if not self._closed:
            self._closed = True
            self.rig.open_cameras.discard(self.camera_num)

    def __enter__(self) -> _Picamera2:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _deliver(self, output: _Output, stop: threading.Event) -> None:
        rig = self.rig
        index = 0
        while not stop.wait(1.0 / rig.fps):
            if rig.hang_after is not None and index >= rig.hang_after:
                continue
            output.outputframe(rig.frame(index), keyframe=True, timestamp=int(index * 1e6 / rig.fps))
            rig.writer_threads.add(threading.current_thread().name)
            rig.frames_written += 1
            index += 1


def _bound(cls: type, rig: Rig, **extra: Any) -> type:
    """A per-rig subclass, so no state lives on the shared classes."""
    return type(cls.__name__.lstrip("_"), (cls,), {"rig": rig, **extra})


def install(monkeypatch: pytest.MonkeyPatch, rig: Rig | None = None) -> Rig:
    """Install fresh fake picamera2/libcamera modules driven by ``rig``; returns the rig."""
    rig = rig or Rig()
    picamera2 = types.ModuleType("picamera2")
    picamera2.__path__ = []  # a package, so submodule imports resolve through sys.modules

    def global_camera_info() -> list[dict[str, Any]]:
        rig.record("global_camera_info")
        return [dict(c) for c in rig.cameras]

    picamera2.Picamera2 = _bound(_Picamera2, rig, global_camera_info=staticmethod(global_camera_info))
    encoders = types.ModuleType("picamera2.encoders")
    encoders.__path__ = []
    encoders.Encoder = _bound(_Encoder, rig)
    encoders.Quality = _Quality
    encoders.JpegEncoder = _bound(_JpegEncoder, rig)
    hardware = _bound(_HardwareMJPEGEncoder, rig)
    encoders.MJPEGEncoder = hardware if rig.platform == "vc4" else _bound(_LibavMjpegEncoder, rig)
    mjpeg_encoder = types.ModuleType("picamera2.encoders.mjpeg_encoder")
    mjpeg_encoder.MJPEGEncoder = hardware
    outputs = types.ModuleType("picamera2.outputs")
    outputs.Output = _Output
    outputs.FileOutput = _FileOutput
    libcamera = types.ModuleType("libcamera")
    libcamera.Transform = _Transform
    picamera2.encoders = encoders
    picamera2.outputs = outputs
    encoders.mjpeg_encoder = mjpeg_encoder
    for name, module in {
        "picamera2": picamera2,
        "picamera2.encoders": encoders,
        "picamera2.encoders.mjpeg_encoder": mjpeg_encoder,
        "picamera2.outputs": outputs,
        "libcamera": libcamera,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    return rig
