"""Named counters, gauges and histograms of one runtime, read by exporters and the admin.

No dependency: a registry holds plain numbers that a Prometheus exporter (or a
test, or a management command) reads with ``snapshot()``. Labels are bounded by
construction: only a close reason, a store operation or a refusal cause, never
a room, a user or a session.

With ``HEARTBEAT_METRICS = False`` a runtime's metrics are null objects, bound when
the runtime is made: every ``inc()`` and ``observe()`` returns at once, nothing is
declared in the registry, and the snapshot is empty.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from . import conf

# Upper bounds (seconds) of the histograms' buckets: round trips, tick lateness, store calls.
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0)


def is_enabled() -> bool:
    """Whether runtimes made from now on count (HEARTBEAT_METRICS)."""
    return bool(conf.get("HEARTBEAT_METRICS"))


class Metric:
    """One named series, optionally split by a fixed set of label names."""

    kind = "untyped"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()):
        self.name = name
        self.help = help
        self.labels = tuple(labels)

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        # Called on every increment: no sets built, the one-label case without a loop.
        names = self.labels
        if len(labels) == len(names):
            try:
                if len(names) == 1:
                    return (str(labels[names[0]]),)
                return tuple([str(labels[name]) for name in names])
            except KeyError:
                pass
        raise ValueError(f"{self.name} takes the labels {self.labels}, not {tuple(labels)}")


class Counter(Metric):
    """A count that only goes up."""

    kind = "counter"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()):
        super().__init__(name, help, labels)
        self._total = 0.0  # the count of an unlabelled counter: one addition per inc()
        self._by_key: dict[tuple[str, ...], float] = {}

    def inc(self, amount: float = 1, **labels: str) -> None:
        if labels or self.labels:
            key = self._key(labels)
            self._by_key[key] = self._by_key.get(key, 0) + amount
        else:
            self._total += amount

    def value(self, **labels: str) -> float:
        if labels or self.labels:
            return self._by_key.get(self._key(labels), 0)
        return self._total

    @property
    def values(self) -> dict[tuple[str, ...], float]:
        if self.labels:
            return dict(self._by_key)
        return {(): self._total} if self._total else {}


class Gauge(Metric):
    """A value that goes up and down, or is read from a function when sampled."""

    kind = "gauge"

    def __init__(self, name: str, help: str):
        super().__init__(name, help)
        self._value = 0.0
        self._function: Callable[[], float] | None = None

    def inc(self, amount: float = 1) -> None:
        self._value += amount

    def dec(self, amount: float = 1) -> None:
        self._value -= amount

    def set_function(self, function: Callable[[], float]) -> None:
        """Read the value from ``function`` at each sample."""
        self._function = function

    def value(self) -> float:
        return float(self._function()) if self._function is not None else self._value

    @property
    def values(self) -> dict[tuple[str, ...], float]:
        return {(): self.value()}


class Histogram(Metric):
    """Observations counted into cumulative buckets, with their count and sum."""

    kind = "histogram"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = (),
                 buckets: tuple[float, ...] = SECONDS_BUCKETS):
        super().__init__(name, help, labels)
        self.buckets = tuple(buckets)
        # key -> [counts per bucket and one above the last bound, sum, max]; an
        # unlabelled histogram's one series is made here, so observe() looks nothing up.
        self._series: dict[tuple[str, ...], list] = {}
        self._plain = None if self.labels else self._new_series(())

    def _new_series(self, key: tuple[str, ...]) -> list:
        series = self._series[key] = [[0] * (len(self.buckets) + 1), 0.0, 0.0]
        return series

    def observe(self, value: float, **labels: str) -> None:
        series = self._plain
        if series is None or labels:
            key = self._key(labels)
            series = self._series.get(key) or self._new_series(key)
        series[0][bisect_left(self.buckets, value)] += 1
        series[1] += value
        if value > series[2]:
            series[2] = value

    def count(self, **labels: str) -> int:
        series = self._series.get(self._key(labels))
        return 0 if series is None else sum(series[0])

    @property
    def values(self) -> dict[tuple[str, ...], dict[str, Any]]:
        out = {}
        for key, (counts, total, top) in list(self._series.items()):
            cumulative, running = [], 0
            for bound, n in zip(self.buckets, counts[:-1], strict=True):
                running += n
                cumulative.append((bound, running))
            count = running + counts[-1]
            if count:  # a series appears with its first observation
                out[key] = {"buckets": cumulative, "count": count, "sum": total, "max": top}
        return out


# HEARTBEAT_METRICS = False: the same attributes, recording nothing -------------------


class NullCounter(Counter):
    """A counter that counts nothing."""

    def inc(self, amount: float = 1, **labels: str) -> None:
        pass

    def value(self, **labels: str) -> float:
        return 0


class NullGauge(Gauge):
    """A gauge that stays at 0 and calls no function."""

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def set_function(self, function: Callable[[], float]) -> None:
        pass


class NullHistogram(Histogram):
    """A histogram that observes nothing."""

    def observe(self, value: float, **labels: str) -> None:
        pass

    def count(self, **labels: str) -> int:
        return 0


class Registry:
    """The metrics of one runtime, by name; with ``enabled=False`` null ones, undeclared."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.metrics: dict[str, Metric] = {}

    def _add(self, metric: Metric) -> Any:
        if metric.name in self.metrics:
            raise ValueError(f"metric {metric.name} is already declared")
        if self.enabled:
            self.metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str, labels: tuple[str, ...] = ()) -> Counter:
        return self._add((Counter if self.enabled else NullCounter)(name, help, labels))

    def gauge(self, name: str, help: str) -> Gauge:
        return self._add((Gauge if self.enabled else NullGauge)(name, help))

    def histogram(self, name: str, help: str, labels: tuple[str, ...] = (),
                  buckets: tuple[float, ...] = SECONDS_BUCKETS) -> Histogram:
        kind = Histogram if self.enabled else NullHistogram
        return self._add(kind(name, help, labels, buckets))

    def __getitem__(self, name: str) -> Metric:
        return self.metrics[name]

    def snapshot(self) -> dict[str, dict]:
        """Every metric's values, keyed by name then by label values."""
        return {name: {"kind": m.kind, "help": m.help, "labels": m.labels,
                       "values": dict(m.values)}
                for name, m in self.metrics.items()}


class Metrics:
    """The package's metrics, declared once per runtime, as attributes.

    ``enabled`` None reads HEARTBEAT_METRICS; False binds null metrics that record nothing.
    """

    def __init__(self, enabled: bool | None = None):
        self.enabled = is_enabled() if enabled is None else bool(enabled)
        r = self.registry = Registry(self.enabled)
        self.sessions = r.gauge("heartbeat_sessions", "Sessions open in this process.")
        self.opened = r.counter("heartbeat_sessions_opened_total", "Sessions opened.")
        self.closed = r.counter("heartbeat_sessions_closed_total",
                                "Sessions ended, by recorded close reason.", ("reason",))
        self.pings = r.counter("heartbeat_pings_total", "Client pings answered.")
        self.probes = r.counter("heartbeat_probes_total", "Server probes sent.")
        self.zombies = r.counter("heartbeat_zombies_total", "Sessions closed as zombies.")
        self.ticks = r.counter("heartbeat_ticks_total", "Scheduler steps run (40 a tick).")
        self.rtt = r.histogram("heartbeat_rtt_seconds", "Round trips of answered probes.")
        self.loop_lag = r.histogram("heartbeat_loop_lag_seconds",
                                    "How late the background ticks ran.")
        self.gc_pause = r.histogram("heartbeat_gc_pause_seconds",
                                    "Garbage collections of the process, each one's pause.")
        self.store_seconds = r.histogram("heartbeat_presence_store_seconds",
                                         "Presence store calls, by operation.", ("op",))
        self.store_calls_late = r.counter(
            "heartbeat_presence_store_late_total",
            "Store calls that timed out while the event loop lagged (not outages).")
        self.outages = r.counter("heartbeat_presence_outages_total",
                                 "Presence store outages begun.")
        self.broadcasts = r.counter("heartbeat_presence_broadcasts_total",
                                    "presence_diff broadcasts sent to a room's group.")
        self.rooms = r.gauge("heartbeat_presence_rooms", "Rooms with sessions of this process.")
        self.signals = r.counter("heartbeat_presence_signals_total",
                                 "Ephemeral signals (broadcast messages) sent to a room.")
        self.signal_frames = r.counter(
            "heartbeat_presence_signal_frames_total",
            "Signal frames this process sent to its members of the rooms.")
        self.signals_replaced = r.counter(
            "heartbeat_presence_signals_replaced_total",
            "Signals replaced by a newer one of the same sender while they waited for the "
            "fan-out budget (PRESENCE_SIGNAL_FANOUT).")
        self.refused = r.counter("heartbeat_handshakes_refused_total",
                                 "Handshakes refused, by cause.", ("why",))
        self.row_writes = r.counter("heartbeat_session_row_writes_total",
                                    "Bulk writes of session rows to the database.")
        self.row_failures = r.counter("heartbeat_session_row_failures_total",
                                      "Bulk writes of session rows that failed (retried).")


def merge(snapshots: list[dict[str, dict]]) -> dict[str, dict]:
    """Add up the snapshots of several runtimes (several event loops of one process)."""
    out: dict[str, dict] = {}
    for snap in snapshots:
        for name, metric in snap.items():
            into = out.setdefault(name, {**metric, "values": {}})
            for key, value in metric["values"].items():
                if metric["kind"] == "histogram":
                    old = into["values"].get(key)
                    if old is None:
                        into["values"][key] = {**value, "buckets": list(value["buckets"])}
                    else:
                        old["buckets"] = [(b, n + m) for (b, n), (_, m)
                                          in zip(old["buckets"], value["buckets"], strict=True)]
                        old["count"] += value["count"]
                        old["sum"] += value["sum"]
                        old["max"] = max(old["max"], value["max"])
                else:
                    into["values"][key] = into["values"].get(key, 0) + value
    return out
