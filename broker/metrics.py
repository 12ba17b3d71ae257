"""`/metrics` in Prometheus' text format, through prometheus_client.

Nothing here runs per frame per viewer: the per-camera figures are read from counters the
broker keeps anyway (channels count frames, writers count their writes) when Prometheus
scrapes, and the only thing observed on the frame path is one histogram sample per frame.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .channel import Channel

__all__ = ["CONTENT_TYPE", "Metrics", "Rejections"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
# From a loop pass (sub-millisecond) to a saturated core fanning out to thousands.
FAN_OUT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class Rejections:
    """Requests, connections and frames refused, by reason (auth, throttled, host, origin, caps...)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def count(self, reason: str) -> None:
        """One more refusal for `reason`."""
        self.counts[reason] += 1


class Metrics:
    """The broker's registry: process metrics, the ingest-to-write histogram, and live state."""

    def __init__(
        self,
        cameras: Callable[[], Iterable[Channel]],
        connections: Callable[[], int],
        rejections: Rejections,
    ) -> None:
        self.rejections = rejections  # counted where each refusal happens
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.fan_out = Histogram(
            "framebroker_ingest_to_write_seconds",
            "Time from a frame's arrival until every viewer of its camera has been offered it",
            buckets=FAN_OUT_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_Totals(connections, rejections, cameras))
        self._cameras = cameras

    def exposition(self, may_see: Callable[[str], bool]) -> bytes:
        """The text format, with per-camera series only for cameras `may_see` allows."""
        shown = _Cameras(self._cameras, may_see)
        return generate_latest(self.registry) + generate_latest(_Only(shown))


class _Only:
    """A registry-like holder of one collector, for generate_latest."""

    def __init__(self, collector: Collector) -> None:
        self._collector = collector

    def collect(self) -> Iterator:
        return self._collector.collect()


class _Totals(Collector):
    def __init__(
        self,
        connections: Callable[[], int],
        rejections: Rejections,
        cameras: Callable[[], Iterable[Channel]],
    ) -> None:
        self._connections = connections
        self._rejections = rejections
        self._cameras = cameras

    def collect(self) -> Iterator:
        yield GaugeMetricFamily("framebroker_connections", "Open TCP connections", value=self._connections())
        rejected = CounterMetricFamily(
            "framebroker_rejected", "Requests, connections and frames refused, by reason", labels=["reason"]
        )
        counts = Counter(self._rejections.counts)
        counts["bad_frame"] += sum(channel.frames_bad for channel in self._cameras())
        for reason, count in sorted(counts.items()):
            rejected.add_metric([reason], count)
        yield rejected


class _Cameras(Collector):
    def __init__(self, cameras: Callable[[], Iterable[Channel]], may_see: Callable[[str], bool]) -> None:
        self._cameras = cameras
        self._may_see = may_see

    def collect(self) -> Iterator:
        def family(kind: type, name: str, text: str, labels: tuple[str, ...] = ()) -> CounterMetricFamily:
            return kind(name, text, labels=["camera", *labels])

        received = family(
            CounterMetricFamily, "framebroker_frames_received", "Frames accepted from publishers"
        )
        dropped = family(
            CounterMetricFamily,
            "framebroker_frames_dropped",
            "Frames replaced by a newer one before any viewer got them (ingest, newest wins)",
        )
        received_bytes = family(CounterMetricFamily, "framebroker_bytes_received", "JPEG bytes accepted")
        viewers = family(GaugeMetricFamily, "framebroker_viewers", "Viewers connected", ("kind",))
        sent = family(CounterMetricFamily, "framebroker_frames_sent", "Frames written to viewers")
        skipped = family(
            CounterMetricFamily,
            "framebroker_frames_skipped",
            "Frames a busy viewer skipped because a newer one replaced them (newest wins)",
        )
        age = family(GaugeMetricFamily, "framebroker_frame_age_seconds", "Age of the newest frame")
        publisher = family(
            GaugeMetricFamily, "framebroker_publisher_connected", "1 while a publisher is connected"
        )
        now = time.monotonic()
        for channel in self._cameras():
            camera = channel.camera
            if not self._may_see(camera):
                continue
            received.add_metric([camera], channel.frames)
            dropped.add_metric([camera], channel.frames_dropped)
            received_bytes.add_metric([camera], channel.bytes)
            for kind, count in channel.viewer_counts().items():
                viewers.add_metric([camera, kind], count)
            present = channel.viewers
            sent.add_metric([camera], channel.departed_sent + sum(v.frames_written for v in present))
            skipped.add_metric([camera], channel.departed_skipped + sum(v.frames_skipped for v in present))
            if channel.latest is not None:
                age.add_metric([camera], now - channel.latest.received_mono)
            publisher.add_metric([camera], 1 if channel.publisher is not None else 0)
        yield from (received, dropped, received_bytes, viewers, sent, skipped, age, publisher)
