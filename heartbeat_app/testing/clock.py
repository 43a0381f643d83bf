"""Fake time for tests: ``FakeClock``, and ``HeartbeatClock``, which also runs what came due.

``FakeClock`` only moves when told to (monotonic and wall time together); a test
that steps services by hand uses it. ``HeartbeatClock`` is a FakeClock for the
whole process: every event loop it meets gets a runtime on it whose services run
no background task, and ``await clock.advance(seconds)`` runs the scheduler at
each moment a probe or a zombie close falls due and the tracker on every tick,
as the background tasks would have, without sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import weakref
from collections.abc import Awaitable, Callable

from django.test.utils import override_settings

from .. import conf
from ..clock import Clock
from ..runtime import Runtime, get_runtime, install
from .errors import HeartbeatTestError

logger = logging.getLogger(__name__)

MONOTONIC_START = 1000.0
WALL_START = 1_800_000_000.0

# A check due this close after the new time runs too: float sums (interval + timeout
# added in another order) must not move a close to the next advance().
EPSILON = 1e-9
# Loop iterations given after each step, so frames reach their consumers and the
# communicators' answers (pongs to probes) reach the server before the next check.
YIELDS = 20
# Seconds (real) allowed for what one step started (a zombie close, signals) to end.
SETTLE_TIMEOUT = 5.0
# Steps one advance() may take before it gives up: a sign of a check that never ends.
MAX_STEPS = 100_000


class FakeClock(Clock):
    """A clock that moves only when told to; monotonic and wall time move together."""

    def __init__(self, monotonic: float = MONOTONIC_START, wall: float = WALL_START):
        self._monotonic = self._start = monotonic
        self._wall = wall

    def monotonic(self) -> float:
        return self._monotonic

    def wall(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        """Move both clocks forward."""
        self._move(seconds)

    def _move(self, seconds: float) -> None:
        self._monotonic += seconds
        self._wall += seconds

    @property
    def now(self) -> float:
        """The monotonic reading; setting it moves the wall clock by as much."""
        return self._monotonic

    @now.setter
    def now(self, value: float) -> None:
        self._move(value - self._monotonic)

    @property
    def elapsed(self) -> float:
        """Seconds since the clock was made; setting it moves both clocks there."""
        return self._monotonic - self._start

    @elapsed.setter
    def elapsed(self, value: float) -> None:
        self.now = self._start + value


_active: dict[str, HeartbeatClock | None] = {"clock": None}


def active_clock() -> HeartbeatClock | None:
    """The HeartbeatClock activated for the process (by a fixture or a test case), or None."""
    return _active["clock"]


class HeartbeatClock(FakeClock):
    """A FakeClock for the whole process that runs the heartbeat services when time moves.

    ``activate()`` makes it the process's clock (the ``heartbeat_clock`` fixture and
    ``HeartbeatTestMixin`` do it): each event loop the kit meets then gets a runtime
    on this clock, with no background task, and a presence store of its own for the
    test. ``await advance(seconds)`` is the only way time moves with consequences;
    setting ``now`` or ``elapsed`` moves it without running anything.
    """

    def __init__(self, monotonic: float = MONOTONIC_START, wall: float = WALL_START, *,
                 rng: Callable[[], float] = lambda: 0.0):
        super().__init__(monotonic, wall)
        # The runtime's random source: 0 puts every probe exactly at the interval.
        self.rng = rng
        self._runtimes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._next_tick: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._settings: override_settings | None = None

    # The process ---------------------------------------------------------------

    def activate(self) -> HeartbeatClock:
        """Make this the process's clock, with a presence store of its own; returns self."""
        if _active["clock"] is not None:
            raise HeartbeatTestError("A HeartbeatClock is active already: deactivate() it first.")
        # A key prefix of its own: on Redis, a test sees no other test's presence (nor
        # another process's reaper lease), and its keys are deleted at the end.
        prefix = f"{conf.get('PRESENCE_KEY_PREFIX')}:test:{secrets.token_hex(4)}"
        self._settings = override_settings(PRESENCE_KEY_PREFIX=prefix)
        self._settings.enable()  # the store is rebuilt on first use, under the prefix
        _active["clock"] = self
        return self

    def deactivate(self) -> None:
        """Stop being the process's clock: runtimes removed, the test's presence deleted."""
        self._deactivate(delete=True)

    def _deactivate(self, delete: bool) -> None:
        if _active["clock"] is self:
            _active["clock"] = None
        for loop in list(self._runtimes):
            # A loop that lives on (a module-scoped one) must not keep a fake runtime.
            if not loop.is_closed() and not loop.is_running():
                loop.run_until_complete(self._uninstall())
        self._runtimes.clear()
        if self._settings is not None:
            if delete:
                _delete_presence()
            self._settings.disable()
            self._settings = None

    async def __aenter__(self) -> HeartbeatClock:
        self.activate()
        self.install()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self._uninstall()
        await _adelete_presence()
        self._deactivate(delete=False)

    # The runtime of each loop ------------------------------------------------------

    def install(self) -> Runtime:
        """The runtime on this clock for the running loop, installed on first use."""
        loop = asyncio.get_running_loop()
        runtime = self._runtimes.get(loop)
        current = get_runtime()
        if runtime is not None:
            if current is not runtime:
                raise HeartbeatTestError(
                    "Another runtime was installed on this event loop after the heartbeat "
                    "clock's: use one or the other in a test.")
            return runtime
        if current.closers:
            raise HeartbeatTestError(
                "Sessions were opened on this event loop before the heartbeat clock was "
                "installed, so they run on the real clock. Connect with HeartbeatCommunicator, "
                "or call heartbeat_clock.install() before connecting.")
        runtime = Runtime(clock=self, rng=self.rng, autostart=False)
        install(runtime)
        self._runtimes[loop] = runtime
        self._next_tick[runtime] = self._monotonic + conf.tick()
        return runtime

    @property
    def runtime(self) -> Runtime:
        """The runtime this clock drives on the running loop."""
        return self.install()

    def drives(self) -> bool:
        """Whether this clock drives the runtime of the running loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        runtime = self._runtimes.get(loop)
        return runtime is not None and get_runtime() is runtime

    async def _uninstall(self) -> None:
        runtime = self._runtimes.pop(asyncio.get_running_loop(), None)
        if runtime is None:
            return
        await runtime.stop()
        if get_runtime() is runtime:
            install(None)
        from ..stores import get_store

        await get_store().close()  # this loop's Redis client, if the store has one

    # Time -------------------------------------------------------------------------

    async def advance(self, seconds: float) -> None:  # type: ignore[override]
        """Move time forward, running every check and tick that falls due on the way.

        The scheduler runs at the very moment each probe or zombie close is due, the
        tracker on every HEARTBEAT_TICK and once more at the new time; after each
        step, what the step started (closes, signals, frames to the communicators)
        is let finish.
        """
        if seconds < 0:
            raise ValueError("advance() moves time forward: seconds must be 0 or more.")
        runtime = self.install()
        target = self._monotonic + seconds
        for _ in range(MAX_STEPS):
            when, step = self._next_step(runtime, target)
            if step is None:
                break
            if when > self._monotonic:
                self._move(when - self._monotonic)
            await self._run(step)
        else:
            raise HeartbeatTestError(f"advance({seconds}) took more than {MAX_STEPS} steps.")
        if target > self._monotonic:
            self._move(target - self._monotonic)
        await self.flush()

    async def flush(self) -> None:
        """Run the tracker's tick now, without moving time: presence work queued goes out.

        Joins, visibility changes and leaves already due are written and broadcast;
        nothing that waits for time (a leave's grace, a probe) happens early.
        """
        from ..tracker import Tracker

        tracker = self.install().existing(Tracker)
        if tracker is not None:
            await self._run(tracker.step)
        else:
            await _yield()

    def _next_step(self, runtime: Runtime, target: float):
        from ..scheduler import Scheduler
        from ..tracker import Tracker

        steps = []
        scheduler = runtime.existing(Scheduler)
        if scheduler is not None and scheduler.sessions:
            due = scheduler.next_due()
            if due is not None and due + scheduler.stalled <= target + EPSILON:
                steps.append((max(due + scheduler.stalled, self._monotonic), 0, scheduler.step))
        tick = self._next_tick.get(runtime)
        if tick is not None and tick <= target + EPSILON:
            tracker = runtime.existing(Tracker)
            steps.append((max(tick, self._monotonic), 1, self._tick(runtime, tracker)))
        if not steps:
            return None, None
        when, _, step = min(steps, key=lambda item: item[:2])
        return when, step

    def _tick(self, runtime: Runtime, tracker) -> Callable[[], Awaitable[None]]:
        async def tick() -> None:
            # As the background loop plans it: one tick after this one ran, late or not.
            self._next_tick[runtime] = self._monotonic + conf.tick()
            if tracker is not None:
                await tracker.step()

        return tick

    async def _run(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run one step, then let what it started finish (and what that started)."""
        loop = asyncio.get_running_loop()
        family = {asyncio.current_task()}
        spawned: list[asyncio.Task] = []
        previous = loop.get_task_factory()

        # Tasks are told apart by who made them: a zombie close or a signal the step
        # spawned ends, while a consumer's receive loop, made meanwhile, never does.
        def factory(loop, coro, **kwargs):
            if previous is not None:
                task = previous(loop, coro, **kwargs)
            else:
                task = asyncio.Task(coro, loop=loop, **kwargs)
            if asyncio.current_task(loop) in family:
                family.add(task)
                spawned.append(task)
            return task

        loop.set_task_factory(factory)
        try:
            await step()
            await _yield()
            while pending := [task for task in spawned if not task.done()]:
                done, late = await asyncio.wait(pending, timeout=SETTLE_TIMEOUT)
                if late:
                    logger.warning("%d tasks started by a heartbeat step did not end within "
                                   "%.0f s", len(late), SETTLE_TIMEOUT)
                    break
                await _yield()
        finally:
            loop.set_task_factory(previous)


async def _yield(times: int = YIELDS) -> None:
    for _ in range(times):
        await asyncio.sleep(0)


async def _adelete_presence() -> None:
    """Delete the keys the test's Redis store wrote (nothing for the memory store)."""
    from ..stores import get_store

    store = get_store()
    fork = getattr(store, "fork", None)
    if fork is None or not hasattr(store, "flush"):
        return
    own = fork()  # clients of its own: the test's loop may be gone
    try:
        await own.flush()
    except Exception as exc:  # Redis went away during the test
        logger.warning("presence keys of the test not deleted: %r", exc)
    finally:
        await own.close()


def _delete_presence() -> None:
    from asgiref.sync import async_to_sync

    try:
        async_to_sync(_adelete_presence)()
    except RuntimeError as exc:  # called from inside a running loop: use __aexit__
        logger.warning("presence keys of the test not deleted: %r", exc)
