"""The tracker's tick walks only the sessions it has work for (heartbeat_app/tracker.py):
the refreshes due, in the order of their last refresh, and the sessions in their leave
grace; not every local session at every tick. The memory store, stepped by hand."""

import pytest
from channels.layers import InMemoryChannelLayer

from heartbeat_app import tracker
from heartbeat_app.protocol import LeaveReason
from heartbeat_app.state import SessionState
from heartbeat_app.stores import MemoryStore, StoreUnavailable


class Sessions(dict):
    """The tracker's local sessions, counting the passes over all of them."""

    walks = 0

    def values(self):
        Sessions.walks += 1
        return super().values()


class Refreshes(MemoryStore):
    """Records the sessions of every refresh call; fails them while ``down``."""

    def __init__(self, clock):
        super().__init__(clock=clock)
        self.refreshed: list[set[str]] = []
        self.down = False

    async def refresh(self, instance, instance_ttl_ms, ttl_ms, entries, info=None, now_ms=None):
        if self.down:
            raise StoreUnavailable("down")
        self.refreshed.append({session for _, session in entries})
        return await super().refresh(instance, instance_ttl_ms, ttl_ms, entries, info, now_ms)


async def send(frame):
    pass


def refreshed_in(store) -> set[str]:
    """The sessions refreshed since the last look (the reaper's beats carry none)."""
    seen = set().union(*store.refreshed)
    store.refreshed.clear()
    return seen


@pytest.fixture
async def ticking(make_runtime, settings):
    settings.PRESENCE_TTL = 30.0  # a refresh every 10 s
    settings.PRESENCE_LEAVE_GRACE = 3.0
    runtime = make_runtime()
    store = Refreshes(runtime.clock)
    active = runtime.replace(tracker.Tracker(runtime, store))
    active.local = Sessions()
    layer = InMemoryChannelLayer()

    async def join(n):
        state = SessionState(tab=f"t{n}", interval=None, timeout=None, user_key=f"k{n}",
                             channel=await layer.new_channel())
        await active.join(state, ["lobby"], {}, layer=layer, send=send)
        return state

    return runtime, store, active, join


async def test_each_refresh_comes_due_in_its_turn_without_a_walk_of_every_session(ticking):
    runtime, store, active, join = ticking
    early = [await join(n) for n in range(200)]
    runtime.fake_clock.advance(4.0)
    late = [await join(n) for n in range(200, 400)]
    await active.step()  # the rooms are counted: a walk, once in ROOMS_EVERY
    store.refreshed.clear()
    Sessions.walks = 0
    runtime.fake_clock.advance(6.0)  # 10 s after the first joins, 6 s after the others
    await active.step()
    assert refreshed_in(store) == {s.id for s in early}
    runtime.fake_clock.advance(4.0)
    await active.step()
    first = refreshed_in(store)  # the share of 4 s of a 10 s period: 160 of the 400
    assert len(first) == 160 and first < {s.id for s in late}
    runtime.fake_clock.advance(tracker.ROOMS_EVERY - 4.0 - 0.1)
    await active.step()
    assert refreshed_in(store) == {s.id for s in late} - first, "the rest at the next tick"
    # Three ticks over 4.9 s: the rooms counted once (at 10 s, ROOMS_EVERY after the
    # last count), and no other pass over every session.
    assert Sessions.walks == 1
    assert active.room_count == 1


async def test_a_gone_session_is_not_refreshed_and_its_entry_is_dropped(ticking):
    runtime, store, active, join = ticking
    kept, gone = await join(1), await join(2)
    await active.leave(gone, LeaveReason.CLOSED, grace=False)
    runtime.fake_clock.advance(10.0)
    await active.step()
    assert refreshed_in(store) == {kept.id}
    for _ in range(3):
        runtime.fake_clock.advance(10.0)
        await active.step()
        assert refreshed_in(store) == {kept.id}
    assert len(active._refresh_order) == 1, "the gone session's entry was dropped"


async def test_refreshes_a_failed_beat_held_back_are_due_at_the_next_tick(ticking):
    runtime, store, active, join = ticking
    states = [await join(n) for n in range(5)]
    runtime.fake_clock.advance(10.0)
    store.down = True
    await active.step()
    store.down = False
    await active.step()
    assert refreshed_in(store) == {s.id for s in states}


async def test_only_the_sessions_in_their_grace_are_looked_at_for_their_leave(ticking):
    runtime, store, active, join = ticking
    states = [await join(n) for n in range(50)]
    await active.step()
    leaving = states[:3]
    for state in leaving:
        await active.leave(state, LeaveReason.CLOSED, grace=True)
    Sessions.walks = 0
    runtime.fake_clock.advance(2.0)
    await active.step()
    assert len(active.local) == 50, "still in their grace"
    runtime.fake_clock.advance(1.5)
    await active.step()
    assert set(active.local) == {s.id for s in states[3:]}
    members = await store.members("lobby")
    assert len(members) == 47
    assert Sessions.walks == 0


async def test_a_burst_of_joins_is_refreshed_spread_over_a_period_and_stays_spread(ticking):
    runtime, store, active, join = ticking
    states = [await join(n) for n in range(1000)]  # all at once: due at once
    await active.step()
    refreshed_in(store)
    seen: dict[str, list[float]] = {s.id: [] for s in states}
    per_tick = []
    for _ in range(30):
        runtime.fake_clock.advance(1.0)
        await active.step()
        done = refreshed_in(store)
        per_tick.append(len(done))
        for session in done:
            seen[session].append(runtime.fake_clock.now)
    assert max(per_tick) == 100, "a tenth of them a tick (a period is 10 ticks), not all"
    start = runtime.fake_clock.now - 30
    for times in seen.values():
        # First refreshed 10 to 19 s after its join (under the TTL of 30 s), then every 10 s.
        assert 10 <= times[0] - start < 20
        assert [b - a for a, b in zip(times, times[1:], strict=False)] == [10.0] * (
            len(times) - 1)
