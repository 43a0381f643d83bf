"""The heartbeat scheduler, driven step by step with an injected clock (no sleeping).

Every test but one builds a scheduler on a runtime with the suite's fake clock and no
background task, sets the fake time and awaits ``scheduler.step()`` by hand, as the
background task would each tick.
"""

import asyncio
import logging
import random
import time

import pytest

from heartbeat_app.runtime import Runtime, get_runtime, install
from heartbeat_app.scheduler import SLICES, Scheduler, get_scheduler
from heartbeat_app.state import SessionState

TICK = 0.5
INTERVAL = 25.0
TIMEOUT = 10.0


class Recorder:
    """Session callbacks that record when (on the fake clock) they were called."""

    def __init__(self, clock):
        self.clock = clock
        self.probes: list[tuple[float, str]] = []
        self.zombies: list[tuple[float, float]] = []

    async def on_probe(self, probe_id: str) -> None:
        self.probes.append((self.clock.now, probe_id))

    async def on_zombie(self, silence: float) -> None:
        self.zombies.append((self.clock.now, silence))

    @property
    def probe_times(self) -> list[float]:
        return [at for at, _ in self.probes]

    @property
    def zombie_times(self) -> list[float]:
        return [at for at, _ in self.zombies]


@pytest.fixture
def clock(fake_clock):
    fake_clock.now = 0.0
    return fake_clock


def make_scheduler(clock, rng=lambda: 0.0) -> Scheduler:
    """A scheduler on a runtime of its own, stepped by hand."""
    return Scheduler(Runtime(clock, rng=rng, autostart=False))


@pytest.fixture
def scheduler(clock) -> Scheduler:
    return make_scheduler(clock)


def new_session(clock, interval=INTERVAL, timeout=TIMEOUT, recorder=None, **callbacks):
    recorder = recorder or Recorder(clock)
    session = SessionState(
        tab="t",
        interval=interval,
        timeout=timeout,
        on_probe=callbacks.get("on_probe", recorder.on_probe),
        on_zombie=callbacks.get("on_zombie", recorder.on_zombie),
    )
    return session, recorder


async def settle() -> None:
    """Let the zombie closes that step() hands to ensure_future run."""
    for _ in range(3):
        await asyncio.sleep(0)


async def step_at(scheduler: Scheduler, clock, at: float, **kwargs) -> None:
    clock.now = at
    await scheduler.step(**kwargs)
    await settle()


async def run_until(scheduler, clock, until: float, every: float = TICK, on_step=None) -> None:
    """Step every ``every`` seconds of fake time, after now and up to ``until`` inclusive."""
    start, n = clock.now, 1
    while (at := round(start + n * every, 6)) <= until + 1e-9:
        await step_at(scheduler, clock, at)
        if on_step is not None:
            on_step(at)
        n += 1


# Probes and closes ----------------------------------------------------------------------


async def test_probe_is_sent_at_the_first_step_where_silence_reaches_the_interval(scheduler, clock):
    session, rec = new_session(clock)
    scheduler.add(session)
    assert scheduler.next_due() == INTERVAL

    await run_until(scheduler, clock, INTERVAL - TICK)
    assert rec.probes == []
    await run_until(scheduler, clock, INTERVAL)
    assert rec.probes == [(INTERVAL, "s1")]
    assert session.probe_id == "s1" and session.probes_sent == 1
    assert session.probe_outstanding


async def test_probe_waits_for_the_phase_too(clock):
    scheduler = make_scheduler(clock, rng=lambda: 0.5)
    session, rec = new_session(clock)
    scheduler.add(session)
    assert session.phase == 0.5 * TIMEOUT / 4  # 1.25 s

    await run_until(scheduler, clock, 26.0)
    assert rec.probes == []
    await run_until(scheduler, clock, 30.0)
    assert rec.probe_times == [26.5]  # the first step at or after 25 + 1.25


async def test_silent_session_is_closed_at_the_first_step_past_interval_plus_timeout(
    scheduler, clock
):
    session, rec = new_session(clock)
    scheduler.add(session)

    await run_until(scheduler, clock, INTERVAL + TIMEOUT - TICK)
    assert rec.zombies == []
    assert session in scheduler.sessions
    await run_until(scheduler, clock, INTERVAL + TIMEOUT)
    assert rec.zombies == [(35.0, 35.0)]  # closed at 35 s after 35 s of silence
    assert session.zombie_at == 35.0
    assert session not in scheduler.sessions
    assert rec.probe_times == [INTERVAL]  # probed once, before the close

    await run_until(scheduler, clock, 100.0)
    assert len(rec.zombies) == 1 and len(rec.probes) == 1


async def test_answer_to_the_probe_prevents_the_close_and_reschedules(scheduler, clock):
    session, rec = new_session(clock)
    scheduler.add(session)
    await run_until(scheduler, clock, INTERVAL)
    assert rec.probe_times == [INTERVAL]

    clock.now = 27.0  # the pong
    scheduler.touch(session)
    assert not session.probe_outstanding

    await run_until(scheduler, clock, 51.5)
    assert rec.zombies == []
    assert rec.probe_times == [INTERVAL]
    await run_until(scheduler, clock, 52.0)
    assert rec.probe_times == [INTERVAL, 52.0]  # 25 s after the pong
    await run_until(scheduler, clock, 61.5)
    assert rec.zombies == []
    await run_until(scheduler, clock, 62.0)
    assert rec.zombie_times == [62.0]


async def test_answer_in_the_same_clock_reading_as_the_probe_counts_as_an_answer(scheduler, clock):
    """A pong read at the very instant the probe was sent was heard *after* the probe
    (the probe was decided on an older ``last_heard``), so it answers it.

    With ``>=`` instead of ``>`` in ``probe_outstanding`` the probe stayed outstanding
    when both readings were equal (a coarse clock, or a fast answer), and the session
    was closed at 60 s without the second probe at 50 s.
    """
    session, rec = new_session(clock)
    scheduler.add(session)
    await run_until(scheduler, clock, INTERVAL)
    scheduler.touch(session)  # the pong, same clock reading as the probe

    await run_until(scheduler, clock, 60.0)
    assert rec.probe_times == [INTERVAL, 50.0], (
        f"probes at {rec.probe_times}, closed at {rec.zombie_times}"
    )
    # Silent since 25 s, so closed at 25 + interval + timeout, after the second probe.
    assert [t for t, _ in rec.zombies] == [60.0]


async def test_the_phase_also_delays_the_probe_after_a_frame(clock):
    scheduler = make_scheduler(clock, rng=lambda: 0.8)
    session, rec = new_session(clock)
    scheduler.add(session)
    assert session.phase == 2.0
    clock.now = 1.0
    scheduler.touch(session)  # heard at 1 s: the probe is due at 1 + 25 + 2

    await run_until(scheduler, clock, 27.5)
    assert rec.probes == []
    await run_until(scheduler, clock, 28.0)
    assert rec.probe_times == [28.0]


async def test_any_frame_before_the_interval_prevents_the_probe(scheduler, clock):
    session, rec = new_session(clock)
    scheduler.add(session)
    await run_until(scheduler, clock, 20.0)
    scheduler.touch(session)  # a user frame

    await run_until(scheduler, clock, 44.5)
    assert rec.probes == [] and rec.zombies == []
    await run_until(scheduler, clock, 45.0)
    assert rec.probe_times == [45.0]


async def test_a_session_that_keeps_talking_is_never_probed(scheduler, clock):
    session, rec = new_session(clock)
    scheduler.add(session)

    def talk(at):
        if at % 20 == 0:  # a frame every 20 s, under the 25 s interval
            scheduler.touch(session)

    await run_until(scheduler, clock, 300.0, on_step=talk)
    assert rec.probes == [] and rec.zombies == []
    assert session in scheduler.sessions


async def test_without_timeout_a_silent_session_is_probed_once_an_interval_and_never_closed(
    scheduler, clock
):
    session, rec = new_session(clock, timeout=None)
    scheduler.add(session)
    await run_until(scheduler, clock, 110.0)
    assert rec.probe_times == [25.0, 50.0, 75.0, 100.0]
    assert [probe_id for _, probe_id in rec.probes] == ["s1", "s2", "s3", "s4"]
    assert rec.zombies == []
    assert session in scheduler.sessions


async def test_without_interval_a_session_is_never_scheduled(scheduler, clock):
    clock.now = 3.0
    session, rec = new_session(clock, interval=None, timeout=None)
    scheduler.add(session)
    assert session.last_heard == 3.0
    assert session not in scheduler.sessions
    assert scheduler.next_due() is None
    await run_until(scheduler, clock, 200.0, every=5.0)
    assert rec.probes == [] and rec.zombies == []


async def test_removed_session_is_neither_probed_nor_closed(scheduler, clock):
    kept, kept_rec = new_session(clock)
    gone, gone_rec = new_session(clock)
    scheduler.add(kept)
    scheduler.add(gone)
    await run_until(scheduler, clock, 10.0)
    scheduler.remove(gone)

    await run_until(scheduler, clock, 60.0)
    assert gone_rec.probes == [] and gone_rec.zombies == []
    assert kept_rec.probe_times == [25.0] and kept_rec.zombie_times == [35.0]


async def test_closed_session_is_neither_probed_nor_closed(scheduler, clock):
    session, rec = new_session(clock)
    scheduler.add(session)
    session.closed = True
    await run_until(scheduler, clock, 60.0)
    assert rec.probes == [] and rec.zombies == []


async def test_only_due_sessions_are_probed(scheduler, clock):
    early, early_rec = new_session(clock)
    late, late_rec = new_session(clock)
    scheduler.add(early)
    await run_until(scheduler, clock, 10.0)
    scheduler.add(late)

    await run_until(scheduler, clock, 25.0)
    assert early_rec.probe_times == [25.0]
    assert late_rec.probes == [] and late.probes_sent == 0
    assert scheduler.next_due() == 35.0

    await run_until(scheduler, clock, 50.0)
    assert late_rec.probe_times == [35.0]
    assert early_rec.zombie_times == [35.0] and late_rec.zombie_times == [45.0]


async def test_a_step_before_anything_is_due_leaves_the_heap_alone(scheduler, clock):
    sessions = [new_session(clock)[0] for _ in range(5)]
    for session in sessions:
        scheduler.add(session)
    heap_before = list(scheduler._heap)
    await step_at(scheduler, clock, 24.5)
    assert scheduler._heap == heap_before
    assert scheduler.metrics.ticks.value() == 1 and scheduler.metrics.probes.value() == 0


# Phases --------------------------------------------------------------------------------


async def test_default_phases_spread_over_a_quarter_of_the_timeout(clock):
    scheduler = make_scheduler(clock, rng=random.random)  # the default rng
    phases = []
    for _ in range(1000):
        session, _ = new_session(clock)
        scheduler.add(session)
        phases.append(session.phase)

    spread = TIMEOUT / 4
    assert all(0 <= phase < spread for phase in phases)
    assert min(phases) < 0.1 and max(phases) > 2.4
    buckets = [0] * 10
    for phase in phases:
        buckets[int(phase / spread * 10)] += 1
    assert sum(count >= 50 for count in buckets) >= 8, buckets


@pytest.mark.parametrize(
    ("timeout", "phase_spread", "expected"),
    [
        (10.0, 100.0, 2.5),  # capped at timeout / 4 (with a tick <= timeout / 4, a probe
        (10.0, 5.0, 2.5),  # then always has half the timeout to be answered)
        (10.0, 2.5, 2.5),
        (10.0, 1.0, 1.0),
        (10.0, 0.0, 0.0),
        (None, 100.0, 100.0),  # nothing to answer in time: no cap
        (None, None, INTERVAL / 4),  # the default without a timeout
    ],
)
async def test_explicit_phase_spread_is_capped_at_a_quarter_of_the_timeout(
    clock, timeout, phase_spread, expected
):
    scheduler = make_scheduler(clock, rng=lambda: 1.0)
    session, _ = new_session(clock, timeout=timeout)
    scheduler.add(session, phase_spread=phase_spread)
    assert session.phase == expected
    assert scheduler.next_due() == INTERVAL + expected


async def test_sessions_opened_together_are_probed_at_different_steps(clock):
    scheduler = make_scheduler(clock, rng=random.Random(7).random)
    recorder = Recorder(clock)
    sessions = [new_session(clock, recorder=recorder)[0] for _ in range(50)]
    for session in sessions:
        scheduler.add(session)

    await run_until(scheduler, clock, 28.0, every=0.05)
    times = recorder.probe_times
    assert len(times) == 50
    assert min(times) >= INTERVAL and max(times) < INTERVAL + TIMEOUT / 4 + 0.05
    assert len(set(times)) >= 30  # spread over many steps
    assert max(times.count(at) for at in times) <= 5  # no step probes a crowd
    assert max(times) - min(times) >= 2.0


@pytest.mark.parametrize("tick", [0.5, 1.0, 2.5])
@pytest.mark.parametrize("rng_value", [0.0, 0.4, 0.96, 1.0])
@pytest.mark.parametrize("offset", [0.0, 0.3])
async def test_a_silent_session_is_closed_within_interval_plus_timeout_plus_one_tick(
    clock, tick, rng_value, offset
):
    scheduler = make_scheduler(clock, rng=lambda: rng_value)
    clock.now = offset  # the steps fall at offset + k * tick, not on the session's dues
    session, rec = new_session(clock)
    scheduler.add(session)
    await run_until(scheduler, clock, offset + 60.0, every=tick)

    (probe_at,) = rec.probe_times
    (zombie_at,) = rec.zombie_times
    assert offset + INTERVAL + session.phase <= probe_at
    assert offset + INTERVAL + TIMEOUT <= zombie_at <= offset + INTERVAL + TIMEOUT + tick + 1e-9
    assert zombie_at - probe_at >= TIMEOUT / 2


# Overload safety --------------------------------------------------------------------------


async def test_a_loop_stall_is_credited_and_closes_nobody(scheduler, clock):
    recorder = Recorder(clock)
    talkers = [new_session(clock, recorder=recorder)[0] for _ in range(3)]
    silent, silent_rec = new_session(clock)
    for session in [*talkers, silent]:
        scheduler.add(session)
    await run_until(scheduler, clock, 10.0)

    # The loop freezes for 100 s: the tick planned at 10.5 runs at 110.5.
    await step_at(scheduler, clock, 110.5, planned=10.5)
    assert scheduler.stalled == pytest.approx(100.0 - scheduler.stall_tolerance())
    assert scheduler.now() == pytest.approx(10.5 + scheduler.stall_tolerance())
    assert recorder.probes == recorder.zombies == []
    assert silent_rec.probes == silent_rec.zombies == []

    # The frames queued during the stall are read, and the clients keep talking.
    def talk(at):
        if at % 10 == 0.5:
            for session in talkers:
                scheduler.touch(session)

    talk(110.5)
    await run_until(scheduler, clock, 400.0, on_step=talk)
    assert recorder.probes == recorder.zombies == []
    assert all(session in scheduler.sessions for session in talkers)
    # The silent one is judged on the stall-free clock: 25 s and 35 s of its own silence.
    assert silent_rec.probe_times == [125.0]
    assert [(at, pytest.approx(silence)) for at, silence in silent_rec.zombies] == [
        (135.0, 35.0 + scheduler.stall_tolerance())]


async def test_a_late_tick_without_planned_time_is_not_credited(scheduler, clock):
    await step_at(scheduler, clock, 50.0)
    assert scheduler.stalled == 0.0
    await step_at(scheduler, clock, 51.0, planned=51.0)
    assert scheduler.stalled == 0.0
    await step_at(scheduler, clock, 52.0, planned=53.0)  # early: no negative stall
    assert scheduler.stalled == 0.0
    # A step late by the timer's ordinary jitter is no stall either.
    await step_at(scheduler, clock, 54.004, planned=54.0)
    assert scheduler.stalled == 0.0


async def test_a_late_probe_still_gets_half_the_timeout_to_be_answered(scheduler, clock):
    session, rec = new_session(clock)
    scheduler.add(session)
    # No tick ran (and none is credited) until 34 s: the probe goes out 9 s late.
    await step_at(scheduler, clock, 34.0)
    assert rec.probe_times == [34.0]
    assert scheduler.next_due() == 34.0 + TIMEOUT / 2  # not 35: that would leave 1 s

    await run_until(scheduler, clock, 38.5)
    assert rec.zombies == []
    await run_until(scheduler, clock, 39.0)
    assert rec.zombie_times == [39.0]
    assert rec.zombie_times[0] - rec.probe_times[0] >= TIMEOUT / 2


async def test_a_probe_sent_very_late_is_answered_in_time(scheduler, clock):
    session, rec = new_session(clock)
    scheduler.add(session)
    await step_at(scheduler, clock, 80.0)  # far past interval + timeout
    assert rec.probe_times == [80.0] and rec.zombies == []
    clock.now = 84.0
    scheduler.touch(session)  # answered within timeout / 2
    await run_until(scheduler, clock, 100.0)
    assert rec.zombies == []


async def test_a_pong_read_while_the_steps_probes_go_out_saves_a_judged_zombie(scheduler, clock):
    """Judged silent, then heard before its close runs: a live client, not a zombie."""
    silent, rec = new_session(clock)
    scheduler.add(silent)
    await run_until(scheduler, clock, 25.0)
    assert rec.probe_times == [25.0]

    async def probe_and_let_a_frame_in(probe_id):
        scheduler.touch(silent)  # the loop ran while this probe went out: the pong was read

    other, _ = new_session(clock, on_probe=probe_and_let_a_frame_in)
    clock.now = 35.0 - INTERVAL
    scheduler.add(other)  # due for its probe at 35, in the step that judges `silent`
    await step_at(scheduler, clock, 35.0)
    assert rec.zombies == [], "heard before its close: not closed"
    assert scheduler.metrics.zombies.value() == 0
    assert silent in scheduler.sessions
    # It stays watched: silent from 35 on, it is probed and then closed as usual.
    await run_until(scheduler, clock, 70.0)
    assert rec.probe_times == [25.0, 60.0] and rec.zombie_times == [70.0]
    assert rec.zombies[0][1] == pytest.approx(35.0), "its silence counts from the pong"


async def test_a_pong_read_after_the_step_before_the_close_runs_saves_it(scheduler, clock):
    session, rec = new_session(clock)
    scheduler.add(session)
    await run_until(scheduler, clock, 34.5)
    clock.now = 35.0
    await scheduler.step()  # judged a zombie; its close is a task not yet run
    scheduler.touch(session)
    await settle()
    assert rec.zombies == [] and session in scheduler.sessions


async def test_a_probe_is_timed_from_when_it_left_not_from_its_judgement(scheduler, clock):
    async def slow_probe(probe_id):
        clock.now += 8.0  # a send that held the loop: the probes after it leave later

    slow, _ = new_session(clock, on_probe=slow_probe)
    later, rec = new_session(clock)
    scheduler.add(slow)
    scheduler.add(later)
    await step_at(scheduler, clock, 25.0)
    assert later.probe_sent_at == pytest.approx(33.0)
    # Silent for interval + timeout at 35, but its probe has half the timeout from 33,
    # when it left, not from 25: closed at 38, not 35.
    await run_until(scheduler, clock, 37.5)
    assert rec.zombies == []
    await run_until(scheduler, clock, 38.0)
    assert rec.zombie_times == [38.0]


async def test_now_is_the_clock_less_the_stalls(scheduler, clock):
    await step_at(scheduler, clock, 40.0, planned=10.0)
    await step_at(scheduler, clock, 47.5, planned=45.0)
    assert scheduler.stalled == pytest.approx(32.5 - 2 * scheduler.stall_tolerance())
    clock.now = 200.0
    assert scheduler.now() == clock.now - scheduler.stalled
    session, _ = new_session(clock)
    scheduler.touch(session)
    assert session.last_heard == scheduler.now()


# Stats and failing callbacks --------------------------------------------------------------


async def test_stats_count_ticks_probes_and_zombies(scheduler, clock):
    recorder = Recorder(clock)
    for _ in range(2):
        scheduler.add(new_session(clock, recorder=recorder)[0])
    metrics = scheduler.metrics
    counts = lambda: (metrics.ticks.value(), metrics.probes.value(),  # noqa: E731
                      metrics.zombies.value())
    assert counts() == (0, 0, 0)
    await run_until(scheduler, clock, 25.0)
    assert counts() == (50, 2, 0)
    await run_until(scheduler, clock, 35.0)
    assert counts() == (70, 2, 2)
    assert len(recorder.zombies) == 2


async def test_a_failing_probe_is_logged_and_the_others_are_still_sent(scheduler, clock, caplog):
    async def broken_probe(probe_id):
        raise ConnectionResetError("gone")

    recorder = Recorder(clock)
    first, _ = new_session(clock, recorder=recorder)
    broken, _ = new_session(clock, recorder=recorder, on_probe=broken_probe)
    last, _ = new_session(clock, recorder=recorder)
    for session in (first, broken, last):
        scheduler.add(session)

    with caplog.at_level(logging.ERROR, logger="heartbeat_app.scheduler"):
        await run_until(scheduler, clock, 25.0)
    assert len(recorder.probes) == 2  # first and last, in the same step as the broken one
    assert scheduler.metrics.probes.value() == 3
    (record,) = [r for r in caplog.records if r.name == "heartbeat_app.scheduler"]
    assert broken.id in record.getMessage() and record.exc_info is not None


async def test_a_failing_zombie_close_does_not_break_the_scheduler(scheduler, clock, caplog):
    async def broken_close(silence):
        raise RuntimeError("close failed")

    recorder = Recorder(clock)
    broken, _ = new_session(clock, recorder=recorder, on_zombie=broken_close)
    other, _ = new_session(clock, recorder=recorder)
    scheduler.add(broken)
    scheduler.add(other)

    with caplog.at_level(logging.ERROR, logger="heartbeat_app.scheduler"):
        await run_until(scheduler, clock, 35.0)
    assert recorder.zombie_times == [35.0]
    assert scheduler.metrics.zombies.value() == 2
    assert any(broken.id in r.getMessage() for r in caplog.records)

    later, later_rec = new_session(clock)
    scheduler.add(later)
    await run_until(scheduler, clock, 80.0)
    assert later_rec.probe_times == [60.0] and later_rec.zombie_times == [70.0]


# The real background task ---------------------------------------------------------------


async def test_background_task_probes_then_closes_a_silent_session_and_stops(settings):
    probed, closed = asyncio.Event(), asyncio.Event()
    events = []

    async def on_probe(probe_id):
        events.append(("probe", time.monotonic()))
        probed.set()

    async def on_zombie(silence):
        events.append(("zombie", time.monotonic()))
        closed.set()

    settings.HEARTBEAT_TICK = 0.01
    scheduler = Scheduler(Runtime())  # the real clock, autostart
    session = SessionState(
        tab="t", interval=0.05, timeout=0.1, on_probe=on_probe, on_zombie=on_zombie
    )
    start = time.monotonic()
    try:
        scheduler.add(session)
        assert scheduler._task is not None and not scheduler._task.done()
        await asyncio.wait_for(closed.wait(), timeout=1.0)
        assert probed.is_set()
        assert [kind for kind, _ in events] == ["probe", "zombie"]
        assert events[0][1] - start >= 0.05  # not probed before the interval
        assert events[1][1] - start >= 0.15  # not closed before interval + timeout
        assert events[1][1] - start < 1.0
        # No sessions left: the background task ends by itself.
        await asyncio.wait_for(asyncio.shield(scheduler._task), timeout=1.0)
        assert scheduler._task.done() and scheduler._task.exception() is None
        assert scheduler.sessions == set()
        assert scheduler.metrics.probes.value() == scheduler.metrics.zombies.value() == 1
    finally:
        await scheduler.stop()


# One scheduler per loop -----------------------------------------------------------------


async def test_get_scheduler_returns_one_scheduler_per_loop():
    first = get_scheduler()
    assert isinstance(first, Scheduler)
    assert get_scheduler() is first

    async def from_another_loop():
        return get_scheduler()

    other = await asyncio.to_thread(asyncio.run, from_another_loop())
    assert isinstance(other, Scheduler) and other is not first
    assert get_scheduler() is first


async def test_an_installed_runtime_brings_its_scheduler_and_clock(clock):
    mine = Runtime(clock, autostart=False)
    try:
        install(mine)
        assert get_runtime() is mine
        assert get_scheduler() is mine.service(Scheduler)
        assert get_scheduler().clock is clock
    finally:
        install(None)
    replacement = get_scheduler()
    assert replacement.runtime is not mine
    assert replacement.clock.monotonic() == pytest.approx(time.monotonic(), abs=1.0)
    install(None)


async def test_the_probes_of_a_tick_go_out_spread_over_it_not_in_one_burst(settings):
    """The background task steps SLICES times a tick, so probes leave by their phases."""
    settings.HEARTBEAT_TICK = 1.0
    scheduler = Scheduler(Runtime(rng=random.Random(3).random))  # the real clock, autostart
    assert scheduler.period() == 1.0 / SLICES
    sent: list[float] = []
    done = asyncio.Event()

    async def on_probe(probe_id):
        sent.append(time.monotonic())
        if len(sent) == 100:
            done.set()

    sessions = [SessionState(tab=f"t{i}", interval=0.2, timeout=4.0, on_probe=on_probe)
                for i in range(100)]
    try:
        for session in sessions:
            scheduler.add(session)  # phases spread over timeout / 4 = 1 s
        await asyncio.wait_for(done.wait(), timeout=5.0)
    finally:
        await scheduler.stop()
    bursts = {round(at - sent[0], 1) for at in sent}
    # One tick of 1 s would send all 100 at once; SLICES steps a tick send them in many.
    assert len(bursts) >= 5, sorted(bursts)
