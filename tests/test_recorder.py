"""Session rows: plain values on the loop, one upsert per tick (tests/test_admin.py counts it)."""

import math

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from heartbeat_app.models import Session
from heartbeat_app.protocol import CloseReason
from heartbeat_app.recorder import Recorder
from heartbeat_app.state import SessionState

pytestmark = pytest.mark.django_db(transaction=True)

TICK, CHECKPOINT = 1.0, 5.0  # the test settings' tick; the tests' checkpoint interval
SLICES = int(CHECKPOINT / TICK)


@pytest.fixture
async def recorder(settings, make_runtime):
    settings.HEARTBEAT_RECORD_SESSIONS = True
    settings.HEARTBEAT_CHECKPOINT_INTERVAL = CHECKPOINT
    runtime = make_runtime()
    yield runtime.service(Recorder)
    await sync_to_async(connections.close_all)()


def session(tab, rooms=("lobby",)):
    state = SessionState(tab=tab, interval=10.0, timeout=5.0, user_key=f"anon:{tab}",
                         opened_at=1_800_000_000.0)
    state.rooms = list(rooms)
    return state


async def test_a_session_opened_and_closed_within_a_tick_is_written_once(recorder):
    kept = [session(f"k{i}") for i in range(20)]
    brief = session("brief")
    for state in [*kept, brief]:
        recorder.opened(state)
    brief.close_code, brief.close_reason = 1000, CloseReason.CLOSED
    recorder.closed(brief)  # opened and closed before any tick
    assert all(isinstance(row, dict) for row in recorder.closes.values())
    await recorder.step(force=True)
    rows = await sync_to_async(dict)(Session.objects.values_list("id", "close_reason"))
    assert len(rows) == 21 and rows[brief.id] == "closed"
    assert all(rows[state.id] == "" for state in kept)


async def test_a_row_closed_elsewhere_while_its_session_beats_is_reopened(recorder):
    state = session("alive")
    recorder.opened(state)
    await recorder.step(force=True)
    # Another process took this one for lost (its clock ran ahead, say) and closed the row.
    await sync_to_async(Session.objects.filter(pk=state.id).update)(
        closed_at="2026-01-01T00:00:00Z", close_code=1006, close_reason="instance_lost")
    await recorder.step(force=True)
    row = await sync_to_async(Session.objects.get)(pk=state.id)
    assert row.closed_at is None and row.close_code is None and row.close_reason == ""


async def test_a_checkpoint_writes_what_changes_and_leaves_the_rest_of_the_row(recorder):
    state = session("beating")
    recorder.opened(state)
    await recorder.step(force=True)
    # A column no checkpoint writes: a change to it stays (the update is narrow).
    await sync_to_async(Session.objects.filter(pk=state.id).update)(user_agent="edited")
    state.frames_in, state.rtt, state.rooms = 7, 0.012, ["lobby", "hall"]
    await recorder.step(force=True)
    row = await sync_to_async(Session.objects.get)(pk=state.id)
    assert (row.frames_in, row.rtt_ms, row.rooms) == (7, 12.0, "lobby hall")
    assert row.user_agent == "edited"
    # A close writes the whole row again.
    state.close_code, state.close_reason = 1000, CloseReason.CLOSED
    recorder.closed(state)
    await recorder.step(force=True)
    row = await sync_to_async(Session.objects.get)(pk=state.id)
    assert (row.close_reason, row.user_agent) == ("closed", "")


async def test_rows_of_many_rooms_are_written_whole(recorder):
    rooms = [f"room-{i:02d}-" + "x" * 70 for i in range(7)]  # 7 rooms of 80 characters
    state = session("many", rooms)
    recorder.opened(state)
    await recorder.step(force=True)
    row = await sync_to_async(Session.objects.get)(pk=state.id)
    assert row.rooms.split(" ") == rooms


async def test_last_seen_reads_the_session_history(recorder):
    from heartbeat_app import presence

    assert await presence.alast_seen("anon:nobody") is None
    state = session("seen")
    recorder.opened(state)
    await recorder.step(force=True)
    first = await presence.alast_seen(state.user_key)
    assert first is not None
    state.close_code, state.close_reason = 1000, CloseReason.CLOSED
    recorder.clock.advance(30)
    recorder.closed(state)
    await recorder.step(force=True)
    assert (await presence.alast_seen(state.user_key) - first).total_seconds() >= 30


# The checkpoint's pace (issue #12) --------------------------------------------



class Writes(list):
    """The recorder's writes, the ids of their rows by kind; ``down``: they fail."""

    down = False


@pytest.fixture
def writes(monkeypatch):
    """Every write of the recorder, recorded, then passed on to the database."""
    import heartbeat_app.recorder as recorder_module

    seen = Writes()
    real = recorder_module.write

    def spy(opens, updates, closes, *args, **kwargs):
        seen.append({"opens": [r["id"] for r in opens], "updates": [r["id"] for r in updates],
                     "closes": [r["id"] for r in closes], "sweep": kwargs.get("sweep")})
        if seen.down:
            raise ConnectionError("database down")
        return real(opens, updates, closes, *args, **kwargs)

    monkeypatch.setattr(recorder_module, "write", spy)
    return seen


async def ticks(recorder, count):
    """Step the recorder once a tick, ``count`` times."""
    for _ in range(count):
        recorder.clock.advance(TICK)
        await recorder.step()


@pytest.mark.parametrize("n", [23, 1200])  # not multiples of the slices; 1,200 > ROW_BATCH
async def test_each_row_is_checkpointed_once_an_interval_a_slice_at_each_tick(
        recorder, writes, n):
    states = [session(f"p{i}") for i in range(n)]
    for state in states:
        recorder.opened(state)
    await recorder.step()
    assert len(writes[-1]["opens"]) == n and writes[-1]["updates"] == []
    for interval in range(3):
        del writes[:]
        await ticks(recorder, SLICES)
        assert len(writes) == SLICES  # a write, and so a beat, at every tick
        written = [sid for w in writes for sid in w["updates"]]
        assert sorted(written) == sorted(state.id for state in states), interval
        assert max(len(w["updates"]) for w in writes) <= math.ceil(n / SLICES)


async def test_a_step_writes_its_slice_plus_the_opens_and_closes_of_the_tick(recorder, writes):
    n = 40
    states = [session(f"s{i}") for i in range(n)]
    for state in states:
        recorder.opened(state)
    await recorder.step()
    await ticks(recorder, 2)
    for k in range(12):
        recorder.opened(session(f"new{k}"))
        gone = states.pop()
        gone.close_code, gone.close_reason = 1000, CloseReason.CLOSED
        recorder.closed(gone)
        brief = session(f"brief{k}")  # opened and closed within the tick: one row
        recorder.opened(brief)
        brief.close_code, brief.close_reason = 1000, CloseReason.CLOSED
        recorder.closed(brief)
        await ticks(recorder, 1)
        w = writes[-1]
        assert len(w["opens"]) == 1 and sorted(w["closes"]) == sorted([gone.id, brief.id])
        assert brief.id not in w["opens"] + w["updates"]
        rows = len(w["opens"]) + len(w["updates"]) + len(w["closes"])
        assert rows <= math.ceil(n / SLICES) + 1 + 2
    rows = await sync_to_async(dict)(Session.objects.values_list("id", "close_reason"))
    assert len(rows) == 40 + 12 + 12 and sum(1 for r in rows.values() if r == "") == 40


async def test_no_row_waits_longer_than_an_interval(recorder, writes):
    """Churn changes each step's share; a row an interval old is written anyway."""
    states = [session(f"c{i}") for i in range(30)]
    for state in states:
        recorder.opened(state)
    await recorder.step()
    last = {state.id: recorder.clock.monotonic() for state in states}
    for k in range(20):
        # The rows just written are the ones that close: the others wait their turn.
        just = [s for s in states if s.id in writes[-1]["updates"]][:3]
        for gone in just:
            states.remove(gone)
            gone.close_code, gone.close_reason = 1000, CloseReason.CLOSED
            recorder.closed(gone)
        fresh = session(f"n{k}")
        states.append(fresh)
        recorder.opened(fresh)
        await ticks(recorder, 1)
        now = recorder.clock.monotonic()
        for sid in writes[-1]["opens"] + writes[-1]["updates"]:
            last[sid] = now
        assert all(now - last[state.id] <= CHECKPOINT for state in states
                   if state.id in last), k


async def test_the_instance_beats_once_an_interval_with_few_or_no_sessions(recorder, writes):
    from heartbeat_app.instance import instance_id
    from heartbeat_app.models import ServerInstance

    few = [session("f1"), session("f2")]  # fewer sessions than slices
    for state in few:
        recorder.opened(state)
    await recorder.step()
    del writes[:]
    await ticks(recorder, 3 * SLICES)
    assert sum(1 for w in writes if w["sweep"]) == 3  # lost processes swept once an interval
    written = [sid for w in writes for sid in w["updates"]]
    assert sorted(written) == sorted([s.id for s in few] * 3)
    for state in few:
        state.close_code, state.close_reason = 1000, CloseReason.CLOSED
        recorder.closed(state)
    await ticks(recorder, 1)
    del writes[:]
    await ticks(recorder, 2 * SLICES)
    assert len(writes) == 2  # idle: a beat once an interval
    instance = await ServerInstance.objects.aget(pk=instance_id())
    assert instance.session_count == 0 and instance.get_status() == "alive"


async def test_a_long_checkpoint_interval_still_beats_every_third_of_the_instance_ttl(
        recorder, writes, settings):
    """Rows come round once a (long) interval; the instance is beaten, and lost processes
    swept, every PRESENCE_INSTANCE_TTL / 3, so other processes never take it for lost."""
    from heartbeat_app.instance import instance_id
    from heartbeat_app.models import ServerInstance

    settings.HEARTBEAT_CHECKPOINT_INTERVAL = 60.0
    settings.PRESENCE_INSTANCE_TTL = 15.0
    states = [session(f"l{i}") for i in range(3)]  # a row due every 20 s
    for state in states:
        recorder.opened(state)
    await recorder.step()
    del writes[:]
    beats = []
    for second in range(1, 121):
        recorder.clock.advance(TICK)
        await recorder.step()
        if writes and writes[-1].get("at") is None:
            writes[-1]["at"] = second
            beats.append(second)
    gaps = [b - a for a, b in zip([0, *beats], beats, strict=False)]
    assert max(gaps) <= 5, gaps  # 15 s / 3
    assert sum(1 for w in writes if w["sweep"]) == 24  # 120 s / 5 s
    written = [sid for w in writes for sid in w["updates"]]
    assert sorted(written) == sorted([s.id for s in states] * 2)  # once a minute each
    instance = await ServerInstance.objects.aget(pk=instance_id())
    assert instance.session_count == 3 and instance.get_status() == "alive"


async def test_during_an_outage_everything_stays_queued_and_catches_up(recorder, writes):
    states = [session(f"o{i}") for i in range(20)]
    for state in states:
        recorder.opened(state)
    await recorder.step()
    writes.down = True
    late = session("late")
    recorder.opened(late)
    gone = states.pop()
    gone.close_code, gone.close_reason = 1000, CloseReason.CLOSED
    recorder.closed(gone)
    await ticks(recorder, 3 * SLICES)
    assert recorder.metrics.row_failures.value() == 3 * SLICES
    writes.down = False
    del writes[:]
    await ticks(recorder, 1)
    (w,) = writes
    assert w["opens"] == [late.id] and w["closes"] == [gone.id]
    assert sorted(w["updates"]) == sorted(state.id for state in states)  # all owed rows
    await ticks(recorder, SLICES)
    assert max(len(w["updates"]) for w in writes[1:]) <= math.ceil(20 / SLICES)


async def test_a_forced_step_writes_every_row(recorder, writes):
    states = [session(f"d{i}") for i in range(17)]
    for state in states:
        recorder.opened(state)
    await recorder.step()
    await ticks(recorder, 2)
    await recorder.step(force=True, final=True)
    assert sorted(writes[-1]["updates"]) == sorted(state.id for state in states)
    assert writes[-1]["sweep"] is True


async def test_a_session_closed_while_its_open_row_was_queued_is_written_once(
        recorder, writes):
    """An upsert may touch a row once (PostgreSQL): the close replaces the queued open."""
    state = session("outage")
    writes.down = True
    recorder.opened(state)
    await recorder.step()
    state.close_code, state.close_reason = 1001, CloseReason.CLOSED
    recorder.closed(state)
    writes.down = False
    await ticks(recorder, 1)
    assert writes[-1]["opens"] == [] and writes[-1]["closes"] == [state.id]
    row = await Session.objects.aget(pk=state.id)
    assert row.close_code == 1001


async def test_one_write_takes_a_session_in_two_lists_once(recorder):
    """A session that closed while its row was built: open and close in one upsert."""
    from heartbeat_app.recorder import write

    state = session("twice")
    recorder.local[state.id] = state
    opened = recorder._row(state)
    closed = dict(opened, closed_at=opened["last_seen_at"], close_code=1000,
                  close_reason="closed")
    await sync_to_async(write)([opened], [], [closed], 0, opened["last_seen_at"])
    row = await Session.objects.aget(pk=state.id)
    assert (row.close_code, row.close_reason) == (1000, "closed")


# Clock skew (issue #11): beats and the lost cut-off on the database's clock ------

def other_process(offset, monkeypatch, name="other-host:1:abc"):
    """A recorder of another process, its wall clock ``offset`` seconds off."""
    import contextlib
    import time

    import heartbeat_app.recorder as recorder_module
    from heartbeat_app.runtime import Runtime
    from heartbeat_app.testing import FakeClock

    other = Recorder(Runtime(clock=FakeClock(wall=time.time() + offset), autostart=False))

    @contextlib.asynccontextmanager
    async def acting():
        with monkeypatch.context() as patch:
            patch.setattr(recorder_module, "instance_id", lambda: name)
            yield other

    other.acting = acting
    return other


def heard(recorder, state):
    from heartbeat_app.scheduler import Scheduler

    state.last_heard = recorder.runtime.service(Scheduler).now()
    return state


@pytest.fixture
def skewed(settings, make_runtime):
    """This process's recorder with its wall clock ``offset`` seconds off."""
    import time

    from heartbeat_app.testing import FakeClock

    settings.HEARTBEAT_RECORD_SESSIONS = True
    settings.HEARTBEAT_CHECKPOINT_INTERVAL = CHECKPOINT

    def make(offset):
        return make_runtime(FakeClock(wall=time.time() + offset)).service(Recorder)

    return make


async def test_a_process_whose_clock_runs_ahead_closes_no_live_rows_of_others(
        skewed, monkeypatch):
    other = other_process(0, monkeypatch)
    theirs = heard(other, session("theirs"))
    async with other.acting():
        other.opened(theirs)
        await other.step(force=True)
    ahead = skewed(+600)  # ten minutes ahead
    ours = heard(ahead, session("ours"))
    ahead.opened(ours)
    await ahead.step(force=True)  # beats, and sweeps for lost processes
    row = await Session.objects.aget(pk=theirs.id)
    assert row.closed_at is None and row.close_reason == ""
    await sync_to_async(connections.close_all)()


async def test_a_process_whose_clock_runs_behind_is_not_taken_for_lost(skewed, monkeypatch):
    from heartbeat_app.instance import instance_id
    from heartbeat_app.models import ServerInstance

    behind = skewed(-600)  # ten minutes behind
    ours = heard(behind, session("ours"))
    behind.opened(ours)
    await behind.step(force=True)
    other = other_process(0, monkeypatch)
    async with other.acting():
        other.opened(heard(other, session("theirs")))
        await other.step(force=True)  # the other process sweeps for lost processes
    row = await Session.objects.aget(pk=ours.id)
    assert row.closed_at is None and row.close_reason == ""
    statuses = await sync_to_async(dict)(
        ServerInstance.objects.with_status().values_list("id", "status"))
    assert statuses[instance_id()] == "alive"
    # Its rows' deadlines are on its own clock, and judged on it: live, not a zombie.
    status = await sync_to_async(
        lambda: Session.objects.with_status().get(pk=ours.id).status)()
    assert status == "live"
    await sync_to_async(connections.close_all)()


async def test_a_row_is_judged_as_of_its_own_write_not_a_later_beat(skewed, writes):
    """Rows come round a slice at a time: a row near its probe stays live until rewritten."""
    from heartbeat_app.scheduler import Scheduler

    # The fake clock jumps and the database's does not: 30 s behind, the beats of the
    # ticks below still come after the deadline of the row written first.
    recorder = skewed(-30)
    near = session("near")  # silent 9 s of its 10 s interval when its row is written
    near.last_heard = recorder.runtime.service(Scheduler).now() - 9.0
    others = [heard(recorder, session(f"x{i}")) for i in range(9)]
    for state in [*others, near]:  # near comes round last
        recorder.opened(state)
    await recorder.step()
    heard(recorder, near)  # it speaks just after
    await ticks(recorder, 3)  # the instance beats with other rows; near's is not rewritten
    assert all(near.id not in w["updates"] for w in writes[1:]) and len(writes) == 4
    status = await sync_to_async(
        lambda: Session.objects.with_status().get(pk=near.id).status)()
    assert status == "live"
    await sync_to_async(connections.close_all)()
