"""The tracker's rebuild after a store outage: the leaves it could not write, replayed.

The memory store and a tracker stepped by hand; the outage is the store raising
StoreUnavailable, as the Redis store does when Redis is down.
"""

import json
import random

import pytest

from heartbeat_app import tracker
from heartbeat_app.protocol import Encoded, LeaveReason
from heartbeat_app.stores import MemoryStore, StoreUnavailable

TTL = 30_000
ROOMS, PER_ROOM = 40, 100  # 4,000 leaves to replay


class FlakyStore(MemoryStore):
    """The memory store; records its leaves and fails the one numbered ``fail_at``."""

    def __init__(self):
        super().__init__()
        self.left: list[tuple] = []
        self.fail_at: int | None = None
        self.on_leave = None  # called with the number of leaves so far

    async def leave(self, room, session, reason, now_ms=None):
        if self.fail_at is not None and len(self.left) == self.fail_at:
            raise StoreUnavailable("the store is down again")
        self.left.append((room, session, reason))
        if self.on_leave is not None:
            self.on_leave(len(self.left))
        return await super().leave(room, session, reason, now_ms)


def meta(room, n):
    return {"session": f"{room}-s{n}", "key": f"k{n}", "tab": f"t{n}", "instance": "gone",
            "visible": True, "online_at": 0, "ref": f"r-{room}-{n}"}


@pytest.fixture
async def outage(make_runtime):
    """A tracker back from an outage, with 4,000 leaves to replay in a shuffled order."""
    runtime = make_runtime()  # stepped by hand
    store = FlakyStore()
    active = runtime.replace(tracker.Tracker(runtime, store))
    leaves = []
    for r in range(ROOMS):
        for n in range(PER_ROOM):
            await store.join(f"room{r}", meta(f"room{r}", n), TTL)
            leaves.append((f"room{r}", f"room{r}-s{n}", LeaveReason.CLOSED))
    random.Random(11).shuffle(leaves)
    # A leave written twice and one of a session the store no longer holds: both replayed.
    leaves += [leaves[0], ("room0", "never-there", LeaveReason.LEFT)]
    active.unsynced_leaves.extend(leaves)
    active.calls.rebuild_needed = True
    return active, store, leaves


async def test_the_rebuild_replays_every_unsynced_leave_once_in_order(outage):
    active, store, leaves = outage
    await active.step()
    assert store.left == leaves
    assert active.unsynced_leaves == []
    assert await store.rooms() == {}
    assert not active.degraded and not active.calls.rebuild_needed


async def test_a_store_failing_again_keeps_exactly_the_leaves_not_replayed(outage):
    """The replayed ones are gone, the rest and those added meanwhile wait, in order."""
    active, store, leaves = outage
    late = ("room1", "room1-s7", LeaveReason.TIMEOUT)
    store.fail_at = 2500
    store.on_leave = lambda n: n == 1000 and active.unsynced_leaves.append(late)
    await active.step()
    assert store.left == leaves[:2500]
    assert active.unsynced_leaves == [*leaves[2500:], late]
    store.fail_at = store.on_leave = None
    await active.step()  # the store answers: the next rebuild replays only what is left
    assert store.left == [*leaves, late]
    assert active.unsynced_leaves == []
    assert await store.rooms() == {}


class ShiftCounter(list):
    """A list that counts the items its removals move: the cost a replay pays in memmove."""

    moved = 0

    def remove(self, value):
        index = self.index(value)
        ShiftCounter.moved += len(self) - index - 1
        super().remove(value)

    def __delitem__(self, key):
        stop = key.stop if isinstance(key, slice) and key.stop is not None else len(self)
        index = key if isinstance(key, int) else stop
        ShiftCounter.moved += max(len(self) - index - (isinstance(key, int)), 0)
        super().__delitem__(key)


async def test_the_replay_moves_each_leave_at_most_once(outage):
    """A remove() per replayed leave shifts the whole rest: n²/2 moves, 8 million for 4,000."""
    active, store, leaves = outage
    ShiftCounter.moved = 0
    active.unsynced_leaves = ShiftCounter(active.unsynced_leaves)
    await active.step()
    assert store.left == leaves and active.unsynced_leaves == []
    assert ShiftCounter.moved <= len(leaves), ShiftCounter.moved


class DownStore(MemoryStore):
    """The memory store with its joins failing while ``down``."""

    down = True

    async def join_many(self, entries, ttl_ms, now_ms=None, *, tab_cap=None):
        if self.down:
            raise StoreUnavailable("the store is down")
        return await super().join_many(entries, ttl_ms, now_ms, tab_cap=tab_cap)

    async def join(self, room, meta, ttl_ms, now_ms=None, *, tab_cap=None):
        if self.down:
            raise StoreUnavailable("the store is down")
        return await super().join(room, meta, ttl_ms, now_ms, tab_cap=tab_cap)


@pytest.mark.parametrize("back_by", ["tick", "rebuild"])
async def test_a_join_the_outage_held_back_is_in_the_rooms_group_once_written(
        make_runtime, back_by):
    """Its diffs and signals reach it after the store is back: it is in the room's group."""
    from channels.layers import InMemoryChannelLayer

    from heartbeat_app.layers import group_name
    from heartbeat_app.state import SessionState

    runtime = make_runtime()
    store = DownStore()
    active = runtime.replace(tracker.Tracker(runtime, store))
    layer = InMemoryChannelLayer()
    channel = await layer.new_channel()
    state = SessionState(tab="t1", interval=None, timeout=None, user_key="k1", channel=channel)
    sent = []

    async def send(frame):
        sent.append(frame)

    assert await active.join(state, ["lobby"], {}, layer=layer, send=send) == {}
    assert channel not in layer.groups.get(group_name("lobby"), {})  # not stored, not added
    store.down = False
    active.calls.rebuild_needed = back_by == "rebuild"
    await active.step()
    assert channel in layer.groups.get(group_name("lobby"), {})
    assert [f["type"] for f in sent] == ["presence_state"]


class ReadCountingStore(MemoryStore):
    """The memory store; counts its member reads."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.member_reads = 0

    async def members(self, room):
        self.member_reads += 1
        return await super().members(room)


async def test_the_rebuild_reads_each_room_once_whatever_its_members(make_runtime):
    """Back from an outage, each room's state is read once and sent to every local member
    of it: per member, a room of N members costs N reads of N members each."""
    from channels.layers import InMemoryChannelLayer

    from heartbeat_app.state import SessionState

    runtime = make_runtime()
    store = ReadCountingStore()
    active = runtime.replace(tracker.Tracker(runtime, store))
    layer = InMemoryChannelLayer()
    sent = {}

    def sender(frames):
        async def send(frame):
            frames.append(frame)
        return send

    for n in range(30):
        state = SessionState(tab=f"t{n}", interval=None, timeout=None, user_key=f"k{n}",
                             channel=await layer.new_channel())
        sent[state.id] = []
        await active.join(state, ["big" if n < 25 else "small"], {}, layer=layer,
                          send=sender(sent[state.id]))
    store.member_reads = 0
    active.calls.rebuild_needed = True
    await active.step()
    assert store.member_reads == 2, "one read of each room"
    states = [frames[-1] for frames in sent.values()]
    assert all(f["type"] == "presence_state" for f in states)
    assert sorted(len(f["members"]) for f in states) == [5] * 5 + [25] * 25
    # Each room's state is encoded once, for all its members, not once a member.
    assert all(type(f) is Encoded for f in states)
    assert len({id(f) for f in states}) == 2
    assert all(json.loads(f.text) == f for f in states)


async def test_a_process_never_reaps_itself_after_a_long_tick(make_runtime, settings):
    """A tick that ran longer than PRESENCE_INSTANCE_TTL (a busy process) beats before its
    reaper pass: it does not find itself lost and take its own members out."""
    from channels.layers import InMemoryChannelLayer

    from heartbeat_app.state import SessionState

    settings.PRESENCE_INSTANCE_TTL = 15.0
    settings.PRESENCE_REAP_INTERVAL = 5.0
    runtime = make_runtime()
    store = MemoryStore(clock=runtime.clock)
    active = runtime.replace(tracker.Tracker(runtime, store))
    layer = InMemoryChannelLayer()
    state = SessionState(tab="t1", interval=None, timeout=None, user_key="k1",
                         channel=await layer.new_channel())
    async def send(frame):
        pass

    await active.join(state, ["lobby"], {}, layer=layer, send=send)
    await active.step()
    runtime.fake_clock.advance(settings.PRESENCE_REAP_INTERVAL)  # a reaper pass is due
    slow = active._flush_updates

    async def long_flush():  # the tick's work after the beat takes 20 s
        runtime.fake_clock.advance(20.0)
        await slow()

    active._flush_updates = long_flush
    await active.step()
    assert await store.members("lobby"), "still a member"
    assert active.announcer.diffs == {}, "no leave of its own"


async def test_metas_reaped_while_the_process_was_away_are_put_back_in_one_call(
        make_runtime, settings):
    from channels.layers import InMemoryChannelLayer

    from heartbeat_app.state import SessionState

    class JoinCounting(MemoryStore):
        joins = 0

        async def join_many(self, entries, ttl_ms, now_ms=None, *, tab_cap=None):
            JoinCounting.joins += 1
            return await super().join_many(entries, ttl_ms, now_ms, tab_cap=tab_cap)

    runtime = make_runtime()
    store = JoinCounting(clock=runtime.clock)
    active = runtime.replace(tracker.Tracker(runtime, store))
    layer = InMemoryChannelLayer()

    async def send(frame):
        pass

    states = []
    for n in range(40):
        state = SessionState(tab=f"t{n}", interval=None, timeout=None, user_key=f"k{n}",
                             channel=await layer.new_channel())
        await active.join(state, ["lobby"], {}, layer=layer, send=send)
        states.append(state)
    for state in states:  # taken out elsewhere, as a reaper does with a process it thinks lost
        await store.leave("lobby", state.id, LeaveReason.TIMEOUT)
    JoinCounting.joins = 0
    runtime.fake_clock.advance(settings.PRESENCE_TTL / 3)  # every session's refresh is due
    await active.step()
    members = await store.members("lobby")
    assert sorted(m["metas"][0]["session"] for m in members.values()) == sorted(
        s.id for s in states)
    assert JoinCounting.joins == 1, "one store call for all of them"
