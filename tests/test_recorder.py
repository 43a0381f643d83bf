"""Session rows: plain values on the loop, one upsert per tick (tests/test_admin.py counts it)."""

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from heartbeat_app.models import Session
from heartbeat_app.protocol import CloseReason
from heartbeat_app.recorder import Recorder
from heartbeat_app.state import SessionState

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def recorder(settings, make_runtime):
    settings.HEARTBEAT_RECORD_SESSIONS = True
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
