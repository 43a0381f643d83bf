"""One scheduler per event loop: probes silent sessions and closes zombies.

Sessions sit in a heap keyed by the time their next check is due. Inbound frames
only write ``last_heard`` (no heap work on the hot path); a session popped
before it is due is pushed back with its new due time, so each tick costs
O(k log n) for the k sessions actually due.

Overload safety: the scheduler keeps its own clock, ``now()``, which is the
runtime's monotonic clock minus every moment the event loop was seen stalled (a tick that
fires late, a garbage-collection pause, a burst of handshakes). Silence is
measured on that clock, so time the server itself could not run is never
counted as a client's silence. A zombie is also only declared after a probe
was actually sent and left unanswered for at least half the timeout.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging

from . import collector, conf
from .runtime import Runtime, Service, get_runtime
from .state import SessionState

logger = logging.getLogger(__name__)

# Probes sent before the tick yields to the event loop once.
PROBE_BATCH = 64
# The scheduler steps this many times a tick, so the probes due in one tick go out
# spread over it (by their phases), not in one burst that holds up other traffic: the
# answers of a step's probes come back together, and a frame of anyone else read behind
# them waits for them all. At 19,000 sessions (3,800 probes a second) ten steps a tick
# gave other traffic a p99 of 85-97 ms, forty 50 ms (docs/benchmarks.md, *19k-soak300*,
# *19k-soak300-spread*, *19k-final*).
SLICES = 40
MIN_SLICE = 0.01
# Lateness of a step up to this, or up to its period if that is longer, is the timer's
# ordinary jitter and the loop's queueing, not a stall: crediting it all would push every
# zombie close later and later, the more so the more often the scheduler steps.
STALL_TOLERANCE = 0.005


class Scheduler(Service):
    """Drives the heartbeats of every session on one event loop."""

    name = "scheduler"

    def __init__(self, runtime: Runtime):
        super().__init__(runtime)
        self.rng = runtime.rng
        self.stalled = 0.0  # seconds of loop stall credited to every session
        self.sessions: set[SessionState] = set()
        self._heap: list[tuple[float, int, SessionState]] = []
        self._seq = itertools.count()
        self._monotonic = runtime.clock.monotonic

    def now(self) -> float:
        """The scheduler's clock: the monotonic clock less the stalls seen so far."""
        return self._monotonic() - self.stalled

    def running(self) -> bool:
        return bool(self.sessions)

    def period(self) -> float:
        return max(conf.tick() / SLICES, MIN_SLICE)

    def add(self, session: SessionState, phase_spread: float | None = None) -> None:
        """Start watching a session; its silence counts from now."""
        collector.start(self.runtime)  # tuned once per process, before its sessions grow
        session.last_heard = self.now()
        if session.interval is None:
            return
        if phase_spread is None:
            base = session.timeout if session.timeout is not None else session.interval
            phase_spread = base / 4
        if session.timeout is not None:
            # With the phase at most timeout / 4 and a tick at most timeout / 4, a
            # probe always has half the timeout to be answered before the zombie
            # deadline, so a zombie is closed within interval + timeout + 1 tick.
            phase_spread = min(phase_spread, session.timeout / 4)
        session.phase = self.rng() * phase_spread
        self.sessions.add(session)
        self._push(session, session.last_heard + session.interval + session.phase)
        self.ensure_running()

    def remove(self, session: SessionState) -> None:
        """Stop watching a session (its heap entry is dropped when popped)."""
        self.sessions.discard(session)

    def touch(self, session: SessionState) -> None:
        """Record inbound traffic: the hot path, one assignment."""
        session.last_heard = self._monotonic() - self.stalled

    def stall_tolerance(self) -> float:
        """How late a step may run before the rest of its lateness counts as a stall."""
        return max(STALL_TOLERANCE, self.period())

    def credit_stall(self, seconds: float) -> None:
        """Credit time the loop could not run (past the timer's jitter), blaming nobody."""
        tolerance = self.stall_tolerance()
        if seconds > tolerance:
            self.stalled += seconds - tolerance

    def next_due(self) -> float | None:
        """When the earliest check is due, on the scheduler's clock."""
        return self._heap[0][0] if self._heap else None

    def _push(self, session: SessionState, due: float) -> None:
        heapq.heappush(self._heap, (due, next(self._seq), session))

    async def step(self, planned: float | None = None) -> None:
        """Run one tick: probe the sessions due, close the zombies.

        ``planned`` is when, on the monotonic clock, this tick should have run;
        any lateness past it is credited as a stall before silence is judged.
        """
        if planned is not None:
            self.credit_stall(self._monotonic() - planned)
        self.metrics.ticks.inc()
        now = self.now()
        probes: list[SessionState] = []
        zombies: list[SessionState] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, session = heapq.heappop(heap)
            if session.closed or session not in self.sessions:
                continue
            due = self._judge(session, now, probes, zombies)
            if due is not None:
                self._push(session, due)
        for count, session in enumerate(probes, 1):
            await self._probe(session)
            if count % PROBE_BATCH == 0:
                # Let frames in between batches: hundreds of probes sent back to
                # back would hold every other message up for the whole tick.
                await asyncio.sleep(0)
        for session in zombies:
            # A close must not hold up the tick, nor one failure stop the others.
            asyncio.ensure_future(self._close_zombie(session))

    def _judge(self, session: SessionState, now: float, probes: list, zombies: list):
        """Decide one due session; return when it is next due, or None."""
        interval, timeout = session.interval, session.timeout
        silence = now - session.last_heard
        outstanding = session.probe_outstanding
        if outstanding and timeout is not None:
            answered_for = now - session.probe_sent_at
            if silence >= interval + timeout and answered_for >= timeout / 2:
                session.zombie_at = now
                zombies.append(session)
                return None
            return max(session.last_heard + interval + timeout,
                       session.probe_sent_at + timeout / 2)
        if outstanding:
            # No timeout: keep probing once an interval, never close.
            if now - session.probe_sent_at < interval:
                return session.probe_sent_at + interval
        elif silence < interval + session.phase:
            return session.last_heard + interval + session.phase
        session.next_probe(self._monotonic())
        session.probe_sent_at = now
        probes.append(session)
        if timeout is None:
            return now + interval
        return max(session.last_heard + interval + timeout, now + timeout / 2)

    def _heard_since_judged(self, session: SessionState) -> bool:
        """True, and the session rescheduled, if a frame of it was read after its judgement.

        The probes of a step yield to the loop, and the close runs in a task of its own:
        a frame read in between (a pong held up on a saturated loop) proves the client
        there, so it is not closed.
        """
        if session.probe_outstanding or session.closed or session not in self.sessions:
            return False
        session.zombie_at = None
        self._push(session, session.last_heard + session.interval + session.phase)
        return True

    async def _close_zombie(self, session: SessionState) -> None:
        if self._heard_since_judged(session) or session not in self.sessions:
            return
        self.sessions.discard(session)
        self.metrics.zombies.inc()
        if session.on_zombie is not None:
            await self._guard(session.on_zombie(self.now() - session.last_heard), session)

    async def _probe(self, session: SessionState) -> None:
        # Its answer is timed from now, when it leaves, not from the judgement: a step's
        # probes go out a batch at a time, and a busy loop can hold the last ones up.
        session.probe_sent_at = self.now()
        self.metrics.probes.inc()
        if session.on_probe is None:
            return
        try:
            await session.on_probe(session.probe_id)
        except Exception:
            logger.exception("heartbeat probe of session %s failed", session.id)

    async def _guard(self, coro, session: SessionState) -> None:
        try:
            await coro
        except Exception:
            logger.exception("closing zombie session %s failed", session.id)


def get_scheduler() -> Scheduler:
    """The scheduler of the running event loop's runtime."""
    return get_runtime().service(Scheduler)
