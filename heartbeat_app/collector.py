"""The process's garbage collector, tuned once when the heartbeat starts serving.

A server holding thousands of WebSocket sessions has a large heap of long-lived objects,
and every full collection walks all of it: with Python's own thresholds, (700, 10, 10),
one Daphne process at 5,000 sessions stopped its event loop for 0.3–1.9 s at a time
(issue #12). ``HEARTBEAT_GC_THRESHOLD`` decides what the first session of a process does
about it, once:

- ``"auto"`` (the default): one collection, then ``gc.freeze()`` and thresholds raised to
  at least ``SERVER_THRESHOLD``;
- a tuple: exactly those thresholds, nothing else;
- ``None``: the collector is left as it is.

Whatever the setting, every collection's pause is timed into the
``heartbeat_gc_pause_seconds`` histogram of one runtime of the process. docs/deployment.md
weighs what "auto" costs (memory held between collections) against the pauses it saves, as
``bench/collector.py`` measured them.
"""

from __future__ import annotations

import gc
import logging
import time
import weakref
from typing import Any

from . import conf

logger = logging.getLogger(__name__)

AUTO = "auto"
# What "auto" raises the thresholds to (it never lowers one). A young collection every
# 10,000 net allocations of containers instead of 700: the temporaries of a handshake or a
# frame die before one runs instead of being promoted to older generations, where only a
# rarer, longer collection frees them. Middle and full collections keep Python's ratios, 10
# and 10: a middle one walks at most ~100,000 young objects, and Python's own rule (a full
# collection waits until the long-lived objects grew by a quarter) still bounds the cyclic
# garbage a long-lived process holds. (50000, 20, 100), the value of the capacity
# benchmarks, runs no full collection in a short run, but its young and middle collections
# walk up to 50,000 and 1,000,000 objects, and a full one waits for 100 million net
# allocations: until then the cyclic garbage of closed sessions stays in memory
# (bench/collector.py measures both; docs/deployment.md).
SERVER_THRESHOLD = (10000, 10, 10)


class _Process:
    """What this process did to its collector, and where its pauses are counted."""

    def __init__(self):
        self.tuned = False
        self.metrics: weakref.ref | None = None  # the Metrics of the runtime that counts
        self.collecting_since = 0.0


_process = _Process()


def start(runtime: Any) -> None:
    """Tune the collector as HEARTBEAT_GC_THRESHOLD says, once per process; time its pauses.

    The scheduler calls it for each session it adds: after the first, two attribute reads
    and a weak reference's call. The pauses are counted in ``runtime``'s metrics until that
    runtime is gone, then in the next one's to start: one runtime at a time, so adding up
    the runtimes of several event loops counts no collection twice.
    """
    process = _process
    if not process.tuned:
        process.tuned = True
        tune(conf.get("HEARTBEAT_GC_THRESHOLD"))
    if process.metrics is None or process.metrics() is None:
        process.metrics = weakref.ref(runtime.metrics)
        if _time_collection not in gc.callbacks:
            # After tune(): its deliberate collection is logged, not counted as a pause.
            gc.callbacks.append(_time_collection)


def tune(setting: Any) -> None:
    """Apply a HEARTBEAT_GC_THRESHOLD value to this process's collector now, and log it."""
    if setting is None:
        return
    if setting == AUTO:
        _tune_for_a_server()
        return
    before = gc.get_threshold()
    gc.set_threshold(*setting)
    logger.info("garbage collector thresholds set to %s (were %s) by HEARTBEAT_GC_THRESHOLD",
                gc.get_threshold(), before)


def _tune_for_a_server() -> None:
    before = gc.get_threshold()
    if not gc.isenabled() or before[0] == 0:
        logger.info("garbage collector left alone (HEARTBEAT_GC_THRESHOLD is \"auto\"): "
                    "automatic collection is off in this process")
        return
    started = time.perf_counter()
    # Garbage of the start-up is freed now: frozen, it would be kept for ever.
    gc.collect()
    collected = time.perf_counter() - started
    # Django, the apps, the modules and whatever else the start-up made are long-lived:
    # in the permanent generation, full collections stop walking them. Reference counting
    # still frees them; only a cycle among them that becomes garbage later stays.
    gc.freeze()
    threshold = tuple(max(old, new) for old, new in zip(before, SERVER_THRESHOLD, strict=True))
    gc.set_threshold(*threshold)
    logger.info("garbage collector tuned for a server (HEARTBEAT_GC_THRESHOLD is \"auto\"): "
                "%d objects of the start-up frozen after a collection of %.0f ms, thresholds "
                "%s (were %s)", gc.get_freeze_count(), collected * 1000, gc.get_threshold(),
                before)


def _time_collection(phase: str, info: dict) -> None:
    # Runs inside every collection, in whichever thread set it off: it allocates next to
    # nothing and cannot raise.
    process = _process
    if phase == "start":
        process.collecting_since = time.perf_counter()
        return
    ref = process.metrics
    metrics = ref() if ref is not None else None
    if metrics is not None:
        metrics.gc_pause.observe(time.perf_counter() - process.collecting_since)
