"""The per-loop runtime: one clock, one service lifecycle, one registry of metrics."""

import asyncio
import logging
import threading

import pytest

from heartbeat_app import runtime as runtime_module
from heartbeat_app.metrics import Metrics, Registry
from heartbeat_app.runtime import Runtime, Service, get_runtime, install, snapshot
from heartbeat_app.scheduler import Scheduler


class Counting(Service):
    """A service that counts its ticks and fails on the second one."""

    name = "counting"

    def __init__(self, runtime):
        super().__init__(runtime)
        self.steps = 0
        self.ticked = asyncio.Event()

    async def step(self, planned=None):
        self.steps += 1
        if self.steps == 2:
            raise RuntimeError("a broken tick")
        if self.steps >= 3:
            self.ticked.set()


async def test_a_service_ticks_survives_a_failing_tick_and_stops(settings, caplog):
    settings.HEARTBEAT_TICK = 0.01
    runtime = Runtime()
    service = runtime.service(Counting)
    assert runtime.service(Counting) is service  # one per runtime
    with caplog.at_level(logging.ERROR, logger="heartbeat_app.runtime"):
        service.ensure_running()
        task = service._task
        service.ensure_running()
        assert service._task is task  # started once
        await asyncio.wait_for(service.ticked.wait(), 2.0)
    assert "Counting tick failed" in caplog.text
    await runtime.stop()
    assert task.done()
    assert runtime.metrics.loop_lag.count() >= 3  # every tick's lateness is recorded


async def test_autostart_names_the_services_that_run_by_themselves(fake_clock):
    runtime = Runtime(fake_clock, autostart={"tracker"})
    assert runtime.starts("tracker") and not runtime.starts("scheduler")
    service = runtime.service(Counting)
    service.ensure_running()
    assert service._task is None
    assert Runtime(autostart=False).starts("tracker") is False


def test_loop_lag_is_smoothed_and_counted():
    runtime = Runtime()
    runtime.note_lag(1.0)
    runtime.note_lag(-0.5)  # early ticks count as on time
    assert runtime.lag == pytest.approx(0.3 * 0.7)
    observed = runtime.metrics.loop_lag.values[()]
    assert observed["count"] == 2 and observed["max"] == 1.0


async def test_install_gives_the_loop_its_runtime_and_every_service_its_clock(make_runtime):
    runtime = make_runtime()
    assert get_runtime() is runtime
    scheduler = runtime.service(Scheduler)
    assert scheduler.clock is runtime.clock is runtime.fake_clock
    runtime.fake_clock.advance(5.0)
    assert scheduler.now() == runtime.fake_clock.monotonic()


def test_a_sync_caller_reads_every_runtimes_metrics_without_a_loop():
    before = snapshot().get("heartbeat_pings_total", {}).get("values", {}).get((), 0)
    done = []

    def serve(pings):
        async def main():
            runtime = install(Runtime())
            runtime.metrics.pings.inc(pings)
            done.append(runtime)  # keeps the loop's runtime alive for the snapshot
        loop = asyncio.new_event_loop()
        loop.run_until_complete(main())
        done.append(loop)

    threads = [threading.Thread(target=serve, args=(n,)) for n in (2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert snapshot()["heartbeat_pings_total"]["values"][()] == before + 5
    for item in done:
        if isinstance(item, asyncio.AbstractEventLoop):
            runtime_module._runtimes.pop(item, None)
            item.close()


def test_metrics_refuse_unknown_labels_and_duplicate_names():
    metrics = Metrics()
    metrics.closed.inc(reason="timeout")
    assert metrics.closed.value(reason="timeout") == 1
    with pytest.raises(ValueError, match="labels"):
        metrics.closed.inc(room="lobby")
    with pytest.raises(ValueError, match="already declared"):
        metrics.registry.counter("heartbeat_pings_total", "again")


def test_histogram_buckets_are_cumulative():
    registry = Registry()
    histogram = registry.histogram("h_seconds", "test", buckets=(0.1, 1.0))
    for value in (0.05, 0.5, 0.7, 5.0):
        histogram.observe(value)
    series = registry.snapshot()["h_seconds"]["values"][()]
    assert series["buckets"] == [(0.1, 1), (1.0, 3)]
    assert series["count"] == 4 and series["sum"] == pytest.approx(6.25)
