"""The process's garbage collector: "auto", a tuple or None, applied once per process."""

import gc
import logging
import weakref

import pytest

from heartbeat_app import collector, conf
from heartbeat_app.runtime import Runtime
from heartbeat_app.scheduler import Scheduler
from heartbeat_app.state import SessionState

PYTHONS = (700, 10, 10)


@pytest.fixture
def pristine_gc(monkeypatch, caplog):
    """Python's own thresholds and a process that has tuned nothing; all put back after."""
    threshold, enabled, frozen = gc.get_threshold(), gc.isenabled(), gc.get_freeze_count()
    callbacks = list(gc.callbacks)
    monkeypatch.setattr(collector, "_process", collector._Process())
    caplog.set_level(logging.INFO, logger="heartbeat_app.collector")
    gc.set_threshold(*PYTHONS)
    yield
    gc.set_threshold(*threshold)
    (gc.enable if enabled else gc.disable)()
    if frozen == 0:
        # What the test froze goes back to the oldest generation; a freeze of an earlier
        # test in this process is left as it was.
        gc.unfreeze()
    gc.callbacks[:] = callbacks


@pytest.fixture
def runtime() -> Runtime:
    return Runtime(autostart=False)


def records(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "heartbeat_app.collector"]


def test_the_default_is_auto():
    assert conf.DEFAULTS["HEARTBEAT_GC_THRESHOLD"] == collector.AUTO == "auto"
    assert collector.SERVER_THRESHOLD[0] > PYTHONS[0]


def test_auto_freezes_the_start_up_and_raises_the_thresholds_once_per_process(
        pristine_gc, settings, caplog, runtime):
    settings.HEARTBEAT_GC_THRESHOLD = "auto"
    frozen_before, callbacks = gc.get_freeze_count(), list(gc.callbacks)
    collector.start(runtime)
    assert gc.get_threshold() == collector.SERVER_THRESHOLD
    frozen = gc.get_freeze_count()
    assert frozen > frozen_before
    assert gc.isenabled()
    timer = collector._time_collection  # the pauses' timer, and nothing else, is added
    assert gc.callbacks.count(timer) == 1
    assert [c for c in gc.callbacks if c is not timer] == [c for c in callbacks
                                                            if c is not timer]
    (line,) = records(caplog)
    assert '"auto"' in line and f"{frozen} objects of the start-up frozen" in line
    assert f"thresholds {collector.SERVER_THRESHOLD} (were {PYTHONS})" in line

    gc.set_threshold(800, 10, 10)
    young = [{"made": i} for i in range(100)]  # would be frozen by a second freeze
    collector.start(runtime)
    collector.start(runtime)
    assert gc.get_threshold() == (800, 10, 10)
    assert gc.get_freeze_count() == frozen
    assert len(records(caplog)) == 1
    del young


def test_auto_frees_the_start_ups_garbage_before_it_freezes(pristine_gc):
    class Node:
        pass

    gc.set_threshold(10**9)  # no automatic collection before the tuning's own
    node = Node()
    node.self = node  # a cycle: only the collector frees it
    gone = weakref.ref(node)
    del node
    assert gone() is not None
    collector.tune("auto")
    assert gone() is None


def test_auto_never_lowers_a_threshold_the_process_raised_itself(pristine_gc):
    gc.set_threshold(100000, 5, 50)
    collector.tune("auto")
    assert gc.get_threshold() == (100000, collector.SERVER_THRESHOLD[1], 50)


@pytest.mark.parametrize("off", ["disabled", "threshold 0"])
def test_auto_leaves_a_collector_the_process_turned_off_alone(pristine_gc, caplog, off):
    if off == "disabled":
        gc.disable()
    else:
        gc.set_threshold(0, 10, 10)
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    collector.tune("auto")
    assert gc.get_threshold() == threshold
    assert gc.get_freeze_count() == frozen
    assert gc.isenabled() is (off != "disabled")
    assert records(caplog) == ['garbage collector left alone (HEARTBEAT_GC_THRESHOLD is '
                               '"auto"): automatic collection is off in this process']


def test_none_leaves_the_collector_alone(pristine_gc, settings, caplog, runtime):
    settings.HEARTBEAT_GC_THRESHOLD = None
    frozen = gc.get_freeze_count()
    collector.start(runtime)
    assert gc.get_threshold() == PYTHONS
    assert gc.get_freeze_count() == frozen
    assert gc.isenabled()
    assert records(caplog) == []


def test_a_tuple_sets_exactly_those_thresholds_once_and_freezes_nothing(
        pristine_gc, settings, caplog, runtime):
    settings.HEARTBEAT_GC_THRESHOLD = (12345, 11, 12)
    frozen = gc.get_freeze_count()
    collector.start(runtime)
    assert gc.get_threshold() == (12345, 11, 12)
    assert gc.get_freeze_count() == frozen
    assert records(caplog) == ["garbage collector thresholds set to (12345, 11, 12) (were "
                               "(700, 10, 10)) by HEARTBEAT_GC_THRESHOLD"]
    settings.HEARTBEAT_GC_THRESHOLD = (999, 9, 9)
    collector.start(runtime)  # once per process only
    assert gc.get_threshold() == (12345, 11, 12)


def test_a_tuple_below_pythons_is_set_as_it_is(pristine_gc):
    collector.tune([500])
    assert gc.get_threshold() == (500, 10, 10)


async def test_the_scheduler_tunes_the_collector_when_it_adds_the_first_session(
        pristine_gc, settings, make_runtime):
    """Every session counts, one the scheduler never probes (no interval) too."""
    settings.HEARTBEAT_GC_THRESHOLD = (23456, 10, 10)
    scheduler = make_runtime().service(Scheduler)
    assert gc.get_threshold() == PYTHONS
    scheduler.add(SessionState(tab="t", interval=None, timeout=None))
    assert gc.get_threshold() == (23456, 10, 10)


@pytest.mark.parametrize("setting", ["auto", None, (20000, 10, 10)])
def test_every_collection_is_timed_into_the_runtimes_metrics(
        pristine_gc, settings, runtime, setting):
    settings.HEARTBEAT_GC_THRESHOLD = setting
    collector.start(runtime)
    pauses = runtime.metrics.gc_pause
    before = pauses.count()  # "auto"'s own collection is not among them
    gc.collect()
    gc.collect(0)
    assert pauses.count() == before + 2
    (series,) = pauses.values.values()
    assert 0 < series["max"] < 5.0


def test_one_runtime_at_a_time_counts_the_pauses_then_the_next_to_start(
        pristine_gc, settings):
    settings.HEARTBEAT_GC_THRESHOLD = None
    first, other = Runtime(autostart=False), Runtime(autostart=False)
    collector.start(first)
    collector.start(other)  # the first one still counts: no collection counted twice
    gc.collect()
    assert other.metrics.gc_pause.count() == 0
    assert first.metrics.gc_pause.count() >= 1

    dropped = weakref.ref(first.metrics)
    del first
    gc.collect()
    assert dropped() is None
    collector.start(other)
    gc.collect()
    assert other.metrics.gc_pause.count() >= 1
    assert gc.callbacks.count(collector._time_collection) == 1
