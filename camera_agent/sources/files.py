"""JPEG files from a folder: a slideshow of its files, or each new file another program writes.

A watched folder is followed with file-system events (inotify, through watchfiles), or
by polling it where events cannot see the writes (a network filesystem) or do not work.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import NamedTuple

from watchfiles._rust_notify import RustNotify

from ..config import CameraConfig, ConfigError
from ..jpeg import complete_jpeg
from .base import SourceUnavailable
from .mounts import NETWORK_FILESYSTEMS, filesystem_type
from .threaded import FrameReader, ThreadedSource

__all__ = ["FilesSource"]

log = logging.getLogger(__name__)

_SUFFIXES = {".jpg", ".jpeg"}
# How watchfiles groups events: it looks every STEP ms and hands over a batch once a look
# finds nothing new, or DEBOUNCE ms after the batch began. Small, so that a program writing
# 25 files a second is followed at about that rate; each look costs microseconds.
_STEP_MS = 20
_DEBOUNCE_MS = 20
_DELETED = 3  # watchfiles.Change.deleted


class FilesSource(ThreadedSource):
    """Cycle through a folder's JPEGs (sorted by name) at ``fps``, or with ``watch``
    publish the newest JPEG that appears or changes in the folder."""

    kind = "files"
    #: How long a watched file may stay incomplete (still being written) before it is skipped.
    partial_timeout: float = 2.0

    def __init__(
        self,
        folder: str | Path,
        *,
        fps: float = 15.0,
        watch: bool = False,
        watch_method: str = "auto",
        poll_interval: float = 0.5,
    ) -> None:
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
        self.watch_method = watch_method  # "auto", "events" or "poll"; auto is decided at the first open
        self.poll_interval = poll_interval

    @classmethod
    def from_config(cls, camera: CameraConfig) -> FilesSource:
        """Build from a camera's settings; errors name the camera."""
        if camera.input is None:
            raise ConfigError(f"camera {camera.id!r}: source 'files' needs --input FOLDER")
        try:
            return cls(
                camera.input,
                fps=camera.fps,
                watch=camera.watch,
                watch_method=camera.watch_method,
                poll_interval=camera.watch_poll_interval,
            )
        except ConfigError as exc:
            raise ConfigError(f"camera {camera.id!r}: {exc}") from None

    def open_reader(self, stop: threading.Event) -> FrameReader:
        """A reader for the folder: watching starts now, the cycle's listing at the first read."""
        if self.watch:
            return _WatchReader(self, stop)
        return _CycleReader(self.folder)

    def watcher(self) -> RustNotify:
        """Start following the folder's changes, by events or by polling (see ``watch_method``)."""
        if self.watch_method == "auto":
            fstype = filesystem_type(self.folder)
            if fstype in NETWORK_FILESYSTEMS:
                log.info(
                    "%s is on %s, where file-system events miss other machines' writes: "
                    "polling it every %g s",
                    self.folder,
                    fstype,
                    self.poll_interval,
                )
                self.watch_method = "poll"
            else:
                self.watch_method = "events"
        if self.watch_method == "events":
            try:
                return self._notify(polling=False)
            except (OSError, RuntimeError) as exc:
                # Events unavailable (e.g. the inotify watch limit is reached): poll instead.
                log.warning(
                    "cannot watch %s with file-system events (%s): polling it instead", self.folder, exc
                )
                self.watch_method = "poll"
        return self._notify(polling=True)

    def _notify(self, *, polling: bool) -> RustNotify:
        try:
            # RustNotify, not watchfiles.watch(): the generator starts watching only at its
            # first next(), and a file written before that would be missed.
            return RustNotify(
                [str(self.folder)], False, polling, round(self.poll_interval * 1000), False, False
            )
        except FileNotFoundError:
            raise SourceUnavailable(f"cannot watch {self.folder}: it is gone") from None


class _File(NamedTuple):
    path: str
    mtime_ns: int


def _jpeg_files(folder: Path) -> list[_File]:
    files = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if not _wanted(entry.name):
                    continue
                try:
                    if not entry.is_file():
                        continue
                    stat = entry.stat()
                except OSError:
                    continue  # removed between listing and stat
                files.append(_File(entry.path, stat.st_mtime_ns))
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
    """Every JPEG of the folder in name order, then again; new files join the next pass.

    A file that is not a complete JPEG is returned all the same: the capture drops and
    counts it, as it does for every source's bad frames.
    """

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
            if data is None:
                continue  # gone since the listing
            if complete_jpeg(data) is not None:
                self._good_in_pass = (self._good_in_pass or 0) + 1
            else:
                # Which file it was: the capture's warning about the bad frame cannot say.
                log.debug("%s is not a complete JPEG", path)
            return data

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
    """The newest complete JPEG written to the folder since the last read; starts with
    the newest existing one. Older files of a batch are skipped: newest frame wins.

    A file still incomplete after ``partial_timeout`` is returned as it is, for the
    capture to drop and count like any source's bad frame.
    """

    def __init__(self, source: FilesSource, stop: threading.Event) -> None:
        self._source = source
        self._stop = stop
        # path -> when it was first seen incomplete, while a writer may still be busy.
        self._partial: dict[str, float] = {}
        self._notify = source.watcher()  # before the listing, so no write falls in between
        files = _jpeg_files(source.folder)
        self._first = None
        if files:
            newest = max(files, key=lambda f: f.mtime_ns).path
            data = _read(newest)
            self._first = complete_jpeg(data) if data is not None else None
            if data is not None and self._first is None:
                self._partial[newest] = time.monotonic()  # perhaps still being written

    def read(self) -> bytes | None:
        if self._first is not None:
            jpeg, self._first = self._first, None
            return jpeg
        while True:
            # While a file may still be completing, wake up to give up on it in time.
            timeout_ms = round(self._source.partial_timeout * 1000) if self._partial else 0
            try:
                changes = self._notify.watch(_DEBOUNCE_MS, _STEP_MS, timeout_ms, self._stop)
            except RuntimeError as exc:  # the watcher failed (watchfiles' internal error)
                raise SourceUnavailable(f"watching {self._source.folder} failed: {exc}") from None
            if changes == "stop":
                return None
            paths = set(self._partial)
            if isinstance(changes, set):
                paths.update(path for change, path in changes if change != _DELETED and _wanted(path))
            jpeg = self._newest_complete(paths)
            if jpeg is not None:
                return jpeg

    def close(self) -> None:
        """Stop watching the folder."""
        self._notify.close()

    def _newest_complete(self, paths: set[str]) -> bytes | None:
        dated = []
        for path in paths:
            try:
                dated.append((os.stat(path).st_mtime_ns, path))
            except OSError:
                self._partial.pop(path, None)  # removed meanwhile
        now = time.monotonic()
        for _, path in sorted(dated, reverse=True):
            data = _read(path)
            jpeg = complete_jpeg(data) if data is not None else None
            if jpeg is not None:
                self._partial.pop(path, None)
                return jpeg
            first = self._partial.setdefault(path, now)
            if now - first >= self._source.partial_timeout:
                del self._partial[path]
                if data is not None:
                    # Which file it was: the capture's warning about the bad frame cannot say.
                    log.debug("%s is still not a complete JPEG", path)
                    return data
        return None


def _wanted(path: str) -> bool:
    name = os.path.basename(path)
    # Dotfiles are writers' temporary files, by convention.
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in _SUFFIXES
