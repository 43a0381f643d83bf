"""The runtimes' metrics in Prometheus exposition, through ``prometheus_client``.

Needs the optional extra (``pip install django-heartbeat-app[metrics]``); the view
imports this module only when a scrape comes in, so nothing else depends on it.

One process (Daphne, uvicorn without ``--workers``): ``HeartbeatCollector`` reads
``runtime.snapshot()`` at each scrape; nothing is counted twice.

Several workers of one server (``uvicorn --workers N``, gunicorn): prometheus_client's
documented multiprocess mode, chosen by ``PROMETHEUS_MULTIPROC_DIR``. A custom
collector cannot work there (a scrape reaches one worker, which knows only its own
values), so each worker mirrors its snapshot into prometheus_client's own metric
objects, which write to per-process files in that directory, and a scrape merges
every worker's files with ``MultiProcessCollector``. The mirror runs once a second
on each worker's event loop, from its first session or its first scrape.

``HEARTBEAT_METRICS = False``: the runtimes count nothing, no mirror runs, and a scrape
has no heartbeat_* series (not zeros, which would read as a quiet server); the text
format says why in a comment.
"""

from __future__ import annotations

import asyncio
import atexit
import glob
import logging
import os
import re
import threading
from collections.abc import Iterator
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import REGISTRY, Collector
from prometheus_client.utils import floatToGoString

from . import runtime
from .metrics import Histogram, Metrics, is_enabled
from .protocol import CloseReason
from .runtime import Service

logger = logging.getLogger(__name__)

# Seconds between two copies of a worker's values into the multiprocess files: the
# values a scrape sees are at most this old (plus the scrape's own worker, copied fresh).
MIRROR_PERIOD = 1.0

# Label values that exist before anything is counted, so the first increment of each is a
# visible step (Prometheus's rate() and increase() miss a series' first sample).
# instance_lost is recorded on rows by another process's reaper, never counted here.
KNOWN_LABELS: dict[str, tuple[tuple[str, ...], ...]] = {
    "heartbeat_sessions_closed_total": tuple(
        (reason.value,) for reason in CloseReason if reason is not CloseReason.INSTANCE_LOST),
}

# How a gauge of several workers adds up: the workers alive now, summed.
GAUGE_MODE = "livesum"

# First line of a scrape in the text format when HEARTBEAT_METRICS is False (OpenMetrics
# allows no free comment: there the heartbeat_* families are just absent).
OFF_NOTE = (b"# heartbeat_app metrics are off (HEARTBEAT_METRICS = False): this process "
            b"counts nothing and exports no heartbeat_* series.\n")


def declared() -> dict[str, Any]:
    """Every metric the package declares (names, kinds, labels, buckets), without values."""
    return Metrics(enabled=True).registry.metrics


def multiprocess_dir() -> str | None:
    """The directory of prometheus_client's multiprocess mode, or None in one process."""
    return (os.environ.get("PROMETHEUS_MULTIPROC_DIR")
            or os.environ.get("prometheus_multiproc_dir") or None)


def _zero_keys(metric) -> tuple[tuple[str, ...], ...]:
    if not metric.labels:
        return ((),)
    return KNOWN_LABELS.get(metric.name, ())


def _le(bound: float) -> str:
    return floatToGoString(bound)


# One process: a custom collector over the snapshot ------------------------------------


def families(snapshot: dict[str, dict]) -> Iterator[Metric]:
    """The metric families of a ``runtime.snapshot()``, every declared metric included."""
    for name, metric in declared().items():
        values = dict.fromkeys(_zero_keys(metric))
        values.update(snapshot.get(name, {}).get("values", {}))
        labels = list(metric.labels)
        if metric.kind == "counter":
            family = CounterMetricFamily(name, metric.help, labels=labels)
            for key, value in sorted(values.items()):
                family.add_metric(list(key), value or 0)
        elif metric.kind == "gauge":
            family = GaugeMetricFamily(name, metric.help, labels=labels)
            for key, value in sorted(values.items()):
                family.add_metric(list(key), value or 0)
        elif metric.kind == "histogram":
            family = HistogramMetricFamily(name, metric.help, labels=labels)
            for key, value in sorted(values.items()):
                family.add_metric(list(key), *_histogram_samples(metric, value))
        else:  # a kind this exporter does not know: say so once per scrape, skip it
            logger.warning("metric %s of kind %s is not exported", name, metric.kind)
            continue
        yield family


def _histogram_samples(metric: Histogram, value: dict | None) -> tuple[list, float]:
    if value is None:
        return [(_le(b), 0) for b in metric.buckets] + [("+Inf", 0)], 0.0
    buckets = [(_le(bound), n) for bound, n in value["buckets"]]
    return buckets + [("+Inf", value["count"])], value["sum"]


class HeartbeatCollector(Collector):
    """Yields the metrics of every runtime of this process at each scrape."""

    def collect(self) -> Iterator[Metric]:
        if not is_enabled():
            return iter(())
        return families(runtime.snapshot())

    def describe(self) -> Iterator[Metric]:
        return families({})


_collector: HeartbeatCollector | None = None
_collector_lock = threading.Lock()


def register(registry: CollectorRegistry = REGISTRY) -> HeartbeatCollector:
    """Add the collector to prometheus_client's default registry, once per process."""
    global _collector
    with _collector_lock:
        if _collector is None:
            collector = HeartbeatCollector()
            registry.register(collector)
            _collector = collector
        return _collector


# Several workers: mirrored into prometheus_client's metrics ----------------------------


class Mirror:
    """This process's values copied into prometheus_client metrics (multiprocess files).

    prometheus_client's counters and histograms only go up by an amount, so each
    sync adds what grew since the last one; gauges are set.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._metrics: dict[str, Any] = {}
        self._seen: dict[tuple[str, tuple[str, ...]], Any] = {}
        for name, metric in declared().items():
            made = self._make(metric)
            if made is None:
                continue
            self._metrics[name] = made
            for key in _zero_keys(metric):
                if key:  # the series exists, at zero, in this process's file
                    made.labels(*key)

    @staticmethod
    def _make(metric) -> Any:
        labels = list(metric.labels)
        if metric.kind == "counter":
            return prometheus_client.Counter(metric.name, metric.help, labels, registry=None)
        if metric.kind == "gauge":
            return prometheus_client.Gauge(metric.name, metric.help, labels, registry=None,
                                           multiprocess_mode=GAUGE_MODE)
        if metric.kind == "histogram":
            return prometheus_client.Histogram(metric.name, metric.help, labels, registry=None,
                                               buckets=metric.buckets)
        logger.warning("metric %s of kind %s is not exported", metric.name, metric.kind)
        return None

    def sync(self, snapshot: dict[str, dict] | None = None) -> None:
        """Bring the prometheus_client metrics up to ``snapshot`` (default: this process's)."""
        with self._lock:
            if snapshot is None:
                snapshot = runtime.snapshot()
            for name, target in self._metrics.items():
                metric = snapshot.get(name)
                if metric is None:
                    continue
                for key, value in metric["values"].items():
                    child = target.labels(*key) if key else target
                    if metric["kind"] == "counter":
                        self._add_counter(name, key, child, value)
                    elif metric["kind"] == "gauge":
                        child.set(value)
                    else:
                        self._add_histogram(name, key, child, value)

    def _add_counter(self, name: str, key: tuple, child, value: float) -> None:
        grown = value - self._seen.get((name, key), 0)
        self._seen[(name, key)] = value
        # Below zero only when a runtime (an event loop) went away: nothing to add.
        if grown > 0:
            child.inc(grown)

    def _add_histogram(self, name: str, key: tuple, child, value: dict) -> None:
        counts, below = [], 0
        for _, cumulative in value["buckets"]:
            counts.append(cumulative - below)
            below = cumulative
        counts.append(value["count"] - below)  # above the last bound: the +Inf bucket
        previous = self._seen.get((name, key))
        self._seen[(name, key)] = (counts, value["sum"])
        if previous is None:
            previous = ([0] * len(counts), 0.0)
        grown = [n - p for n, p in zip(counts, previous[0], strict=True)]
        if any(n < 0 for n in grown):
            return  # a runtime went away (see _add_counter)
        # prometheus_client's Histogram takes one observation at a time; several
        # thousand a second would cost more than the counting. Its buckets and sum
        # are value objects that take an amount: the same writes observe() makes.
        for bucket, n in zip(child._buckets, grown, strict=True):
            if n:
                bucket.inc(n)
        if value["sum"] != previous[1]:
            child._sum.inc(value["sum"] - previous[1])


_mirror: Mirror | None = None
_mirror_lock = threading.Lock()


def get_mirror() -> Mirror:
    """This process's mirror, made on first use."""
    global _mirror
    with _mirror_lock:
        if _mirror is None:
            _mirror = Mirror()
            atexit.register(_last_sync)
        return _mirror


def _last_sync() -> None:
    # What a worker counted in its last second, its closes at shutdown included.
    try:
        if _mirror is not None:
            _mirror.sync()
    except Exception:
        logger.exception("last copy of the metrics failed")


class MirrorService(Service):
    """Service: copies the process's values into the multiprocess files every second."""

    name = "metrics"

    def period(self) -> float:
        return MIRROR_PERIOD

    async def step(self, planned: float | None = None) -> None:
        get_mirror().sync()

    async def stop(self) -> None:
        get_mirror().sync()
        await super().stop()


def ensure_mirroring() -> None:
    """Start the mirror on the running loop's runtime (multiprocess mode, metrics on)."""
    if multiprocess_dir() is None or not is_enabled():
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return  # a sync caller: the workers' own loops run their mirrors
    runtime.get_runtime().service(MirrorService).ensure_running()


async def _on_session_opened(sender, **kwargs) -> None:
    ensure_mirroring()


def install() -> bool:
    """In multiprocess mode, start each worker's mirror with its first session."""
    if multiprocess_dir() is None or not is_enabled():
        return False
    from .signals import session_opened

    session_opened.connect(_on_session_opened, weak=False,
                           dispatch_uid="heartbeat_app.prometheus.mirror")
    return True


# Exposition -------------------------------------------------------------------------

_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def forget_dead_workers(path: str) -> list[int]:
    """Drop the live gauges of workers that are gone; return their pids.

    prometheus_client leaves this to the server's child-exit hook (gunicorn's
    ``child_exit``); uvicorn has none, so each scrape does it. Counters and
    histograms of dead workers stay: totals never go back.
    """
    dead = set()
    for file in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        match = _LIVE_GAUGE_FILE.search(file)
        if match and not _alive(int(match.group(1))):
            dead.add(int(match.group(1)))
    for pid in dead:
        multiprocess.mark_process_dead(pid, path)
    return sorted(dead)


def exposition(accept: str = "") -> tuple[bytes, str]:
    """The scrape's body and content type, in the format ``accept`` asks for."""
    encoder, content_type = choose_encoder(accept)
    on = is_enabled()
    note = OFF_NOTE if not on and content_type.startswith("text/plain") else b""
    path = multiprocess_dir()
    if path is None:
        register()
        return note + encoder(REGISTRY), content_type
    if on:
        ensure_mirroring()
        get_mirror().sync()  # this worker's values as of now, not a second ago
    forget_dead_workers(path)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path)
    return note + encoder(registry), content_type
