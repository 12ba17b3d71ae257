"""JPEG files from a folder: a slideshow of its files, or each new file another program writes."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import NamedTuple

from ..config import CameraConfig, ConfigError
from ..jpeg import complete_jpeg
from .base import SourceUnavailable
from .threaded import FrameReader, ThreadedSource

__all__ = ["FilesSource"]

log = logging.getLogger(__name__)

_SUFFIXES = {".jpg", ".jpeg"}


class FilesSource(ThreadedSource):
    """Cycle through a folder's JPEGs (sorted by name) at ``fps``, or with ``watch``
    publish each JPEG that appears or changes in the folder."""

    kind = "files"
    #: How often a watched folder is scanned (seconds).
    poll_interval: float = 0.1
    #: How long a watched file may stay incomplete (still being written) before it is skipped.
    partial_timeout: float = 2.0

    def __init__(self, folder: str | Path, *, fps: float = 15.0, watch: bool = False) -> None:
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise ConfigError(f"input {str(folder)!r}: not a folder")
        if not os.access(path, os.R_OK | os.X_OK):
            raise ConfigError(f"input {str(folder)!r}: folder is not readable")
        # A watched folder is quiet until someone writes: silence is not a stall.
        super().__init__(None if watch else fps)
        self.folder = path
        self.watch = watch
        self.steady = not watch

    @classmethod
    def from_config(cls, camera: CameraConfig) -> FilesSource:
        """Build from a camera's settings; errors name the camera."""
        if camera.input is None:
            raise ConfigError(f"camera {camera.id!r}: source 'files' needs --input FOLDER")
        try:
            return cls(camera.input, fps=camera.fps, watch=camera.watch)
        except ConfigError as exc:
            raise ConfigError(f"camera {camera.id!r}: {exc}") from None

    def open_reader(self, stop: threading.Event) -> FrameReader:
        """A reader for the folder; nothing is opened until the first read."""
        if self.watch:
            return _WatchReader(self, stop)
        return _CycleReader(self.folder)


class _File(NamedTuple):
    name: str
    path: str
    mtime_ns: int
    size: int


def _jpeg_files(folder: Path) -> list[_File]:
    files = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue  # writers' temporary files, by convention
                if os.path.splitext(entry.name)[1].lower() not in _SUFFIXES:
                    continue
                try:
                    if not entry.is_file():
                        continue
                    stat = entry.stat()
                except OSError:
                    continue  # removed between listing and stat
                files.append(_File(entry.name, entry.path, stat.st_mtime_ns, stat.st_size))
    except OSError as exc:
        raise SourceUnavailable(f"cannot list {folder}: {exc.strerror}") from None
    return files


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return None  # removed or replaced between listing and reading


class _CycleReader:
    """Every JPEG of the folder in name order, then again; new files join the next pass."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._pending: deque[str] = deque()
        self._good_in_pass: int | None = None  # None until the first pass starts

    def read(self) -> bytes:
        while True:
            if not self._pending:
                self._start_pass()
            path = self._pending.popleft()
            data = _read(path)
            jpeg = complete_jpeg(data) if data is not None else None
            if jpeg is not None:
                self._good_in_pass = (self._good_in_pass or 0) + 1
                return jpeg
            log.debug("skipped %s: not a complete JPEG", path)

    def close(self) -> None:
        """Nothing stays open between reads."""

    def _start_pass(self) -> None:
        if self._good_in_pass == 0:
            raise SourceUnavailable(f"no complete JPEG among the files in {self._folder}")
        paths = sorted(f.path for f in _jpeg_files(self._folder))
        if not paths:
            raise SourceUnavailable(f"no .jpg files in {self._folder}")
        self._good_in_pass = 0
        self._pending.extend(paths)


class _WatchReader:
    """New or rewritten JPEGs of the folder, oldest first; starts with the newest existing one."""

    def __init__(self, source: FilesSource, stop: threading.Event) -> None:
        self._source = source
        self._stop = stop
        self._ready: deque[bytes] = deque()
        # name -> (mtime_ns, size) of files already published or given up on.
        self._seen: dict[str, tuple[int, int]] = {}
        # name -> when it was first seen incomplete, while a writer may still be busy.
        self._partial: dict[str, float] = {}
        files = _jpeg_files(source.folder)
        self._seen = {f.name: (f.mtime_ns, f.size) for f in files}
        if files:
            data = _read(max(files, key=lambda f: f.mtime_ns).path)
            jpeg = complete_jpeg(data) if data is not None else None
            if jpeg is not None:
                self._ready.append(jpeg)

    def read(self) -> bytes | None:
        while not self._ready:
            if self._stop.wait(self._source.poll_interval):
                return None
            self._scan()
        return self._ready.popleft()

    def close(self) -> None:
        """Nothing stays open between reads."""

    def _scan(self) -> None:
        files = _jpeg_files(self._source.folder)
        present = {f.name for f in files}
        # Forget deleted files so a long-running watch does not accumulate names.
        self._seen = {n: s for n, s in self._seen.items() if n in present}
        self._partial = {n: t for n, t in self._partial.items() if n in present}
        changed = [f for f in files if self._seen.get(f.name) != (f.mtime_ns, f.size)]
        for file in sorted(changed, key=lambda f: f.mtime_ns):
            data = _read(file.path)
            jpeg = complete_jpeg(data) if data is not None else None
            if jpeg is not None:
                self._ready.append(jpeg)
            else:
                first = self._partial.setdefault(file.name, time.monotonic())
                if time.monotonic() - first < self._source.partial_timeout:
                    continue  # probably still being written: look again next scan
                log.warning("skipped %s: not a complete JPEG", file.path)
            self._seen[file.name] = (file.mtime_ns, file.size)
            self._partial.pop(file.name, None)
