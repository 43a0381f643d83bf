"""One runtime per event loop: the clock, the background services and the metrics.

The scheduler, the presence tracker and the session recorder are *services* of
the runtime of the loop they run on. They share one lifecycle: made on first
use, a background task started on first work (``ensure_running()``) that calls
``step()`` every HEARTBEAT_TICK, failures logged and never fatal, stopped in one
place (``Runtime.stop()``). A test installs a runtime of its own (a fake clock,
services it steps by hand) with ``install()``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import weakref
from collections.abc import Callable, Collection
from typing import TypeVar

from . import conf
from .clock import SYSTEM_CLOCK, Clock
from .metrics import Metrics, merge

logger = logging.getLogger(__name__)

S = TypeVar("S", bound="Service")

# Weight of the newest tick's lateness in the smoothed loop lag.
LAG_SMOOTHING = 0.3


class Runtime:
    """What every session of one event loop shares."""

    def __init__(self, clock: Clock | None = None, *, rng: Callable[[], float] = random.random,
                 autostart: bool | Collection[str] = True):
        self.clock = clock or SYSTEM_CLOCK
        self.rng = rng
        # True, False, or the names of the services that start their own background task
        # (tests step the others by hand).
        self.autostart = autostart
        self.metrics = Metrics()
        self.lag = 0.0  # smoothed lateness of the ticks: how far behind the loop runs
        self.draining = False  # set once by drain.drain(): no new sessions from then on
        # Open sessions: id -> a callable that closes one for a drain, with a retry hint (ms).
        self.closers: dict[str, Callable] = {}
        self._services: dict[type, Service] = {}

    def service(self, kind: type[S]) -> S:
        """The runtime's service of this class, made on first use."""
        service = self._services.get(kind)
        if service is None:
            service = self._services[kind] = kind(self)
        return service

    def existing(self, kind: type[S]) -> S | None:
        """The runtime's service of this class if one was made, else None."""
        return self._services.get(kind)

    def replace(self, service: S) -> S:
        """Put a new service in place of the one of its class (the settings changed)."""
        self._services[type(service)] = service
        return service

    def starts(self, name: str) -> bool:
        """Whether the service called ``name`` runs a background task of its own."""
        if isinstance(self.autostart, bool):
            return self.autostart
        return name in self.autostart

    def note_lag(self, late: float) -> None:
        """Record how late a tick ran."""
        late = max(0.0, late)
        self.lag += LAG_SMOOTHING * (late - self.lag)
        self.metrics.loop_lag.observe(late)

    async def stop(self) -> None:
        """Stop every service's background task."""
        for service in list(self._services.values()):
            await service.stop()


class Service:
    """A background service of a runtime: ``step()`` every ``period()`` while ``running()``."""

    name = "service"

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.clock = runtime.clock
        self.metrics = runtime.metrics
        self._task: asyncio.Task | None = None
        self._stopping = False

    def running(self) -> bool:
        """Whether the background task should keep ticking (by default, for ever)."""
        return True

    def period(self) -> float:
        """Seconds between two steps (by default HEARTBEAT_TICK)."""
        return conf.tick()

    def ensure_running(self) -> None:
        """Start the background task, unless it runs already or the runtime says not to."""
        if self._stopping or not self.runtime.starts(self.name):
            return
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def step(self, planned: float | None = None) -> None:
        """One tick of work; ``planned`` is when (monotonic) it should have run."""
        raise NotImplementedError

    async def _run(self) -> None:
        clock = self.clock
        planned = clock.monotonic() + self.period()
        while not self._stopping and self.running():
            delay = planned - clock.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.runtime.note_lag(clock.monotonic() - planned)
            try:
                await self.step(planned)
            except Exception:
                logger.exception("%s tick failed", type(self).__name__)
            planned = clock.monotonic() + self.period()

    async def stop(self) -> None:
        """End the background task, if any; the service starts no new one."""
        self._stopping = True
        task, self._task = self._task, None
        while task is not None and not task.done():
            # Cancelled again until it ends: on Python 3.11, asyncio.wait_for can
            # swallow a cancellation that lands as its inner call completes.
            task.cancel()
            await asyncio.wait([task], timeout=0.1)


_runtimes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def get_runtime() -> Runtime:
    """The runtime of the running event loop, made on first use."""
    loop = asyncio.get_running_loop()
    runtime = _runtimes.get(loop)
    if runtime is None:
        runtime = _runtimes[loop] = Runtime()
    return runtime


def install(runtime: Runtime | None) -> Runtime | None:
    """Use ``runtime`` on the running loop (None: forget it); tests do this."""
    loop = asyncio.get_running_loop()
    if runtime is None:
        _runtimes.pop(loop, None)
    else:
        _runtimes[loop] = runtime
    return runtime


def snapshot() -> dict[str, dict]:
    """The metrics of every runtime of this process, added up.

    Callable from sync code and from other threads: every value is a plain number
    a service keeps up to date (gauges that depend on live state are computed at
    the service's tick, not when read).
    """
    return merge([runtime.metrics.registry.snapshot() for runtime in list(_runtimes.values())])
