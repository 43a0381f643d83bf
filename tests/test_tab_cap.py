"""The tab cap, counted by the store in the step that adds a meta: memory store and real Redis."""

import asyncio
import uuid

import pytest

from heartbeat_app import tracker
from heartbeat_app.limits import ERR_TOO_MANY_TABS
from heartbeat_app.state import SessionState
from heartbeat_app.stores import MemoryStore, StoreUnavailable
from heartbeat_app.stores.redis import RedisStore

TTL = 30_000


@pytest.fixture(params=["memory", "redis"])
async def store(request):
    if request.param == "memory":
        yield MemoryStore(clock=request.getfixturevalue("fake_clock"))
        return
    store = RedisStore(request.getfixturevalue("redis_url"),
                       prefix=f"hbtabs-{uuid.uuid4().hex[:8]}")
    yield store
    await store.flush()
    await store.close()


def meta(session, key, tab):
    return {"session": session, "key": key, "tab": tab, "instance": "i1", "visible": True,
            "online_at": 0, "ref": f"r-{session}"}


async def sessions(store, room, key):
    members = await store.members(room)
    return sorted(m["session"] for m in (members.get(key) or {}).get("metas", []))


async def test_a_member_at_the_cap_is_refused_in_that_room_only(store):
    for n, room in [(1, "full"), (2, "full"), (3, "half")]:
        assert await store.join(room, meta(f"s{n}", "1", f"t{n}"), TTL, tab_cap=2)
    # Another member's tabs never count.
    assert await store.join("full", meta("x1", "2", "t1"), TTL, tab_cap=2)
    assert await store.join("full", meta("x2", "2", "t2"), TTL, tab_cap=2)
    assert await store.join("full", meta("s9", "1", "t9"), TTL, tab_cap=2) == []
    assert await sessions(store, "full", "1") == ["s1", "s2"]  # nothing changed
    assert await store.join("half", meta("s8", "1", "t8"), TTL, tab_cap=2)
    assert await store.join("full", meta("s7", "1", "t7"), TTL, tab_cap=3)
    assert await store.join("full", meta("s6", "1", "t6"), TTL)  # no cap
    assert await sessions(store, "full", "1") == ["s1", "s2", "s6", "s7"]


async def test_a_reload_of_a_tab_and_the_session_itself_are_never_refused(store):
    await store.join("lobby", meta("s1", "1", "t1"), TTL, tab_cap=2)
    await store.join("lobby", meta("s2", "1", "t2"), TTL, tab_cap=2)
    reload = await store.join("lobby", meta("s3", "1", "t2"), TTL, tab_cap=2)
    assert [(c.meta["session"], c.joined) for c in reload] == [("s2", False), ("s3", True)]
    again = await store.join("lobby", meta("s3", "1", "t2"), TTL, tab_cap=2)
    assert [c.joined for c in again] == [False, True]
    assert await store.join("lobby", meta("s4", "1", "t4"), TTL, tab_cap=2) == []
    assert await sessions(store, "lobby", "1") == ["s1", "s3"]


async def test_a_leave_makes_room_for_another_tab(store):
    await store.join("lobby", meta("s1", "1", "t1"), TTL, tab_cap=1)
    assert await store.join("lobby", meta("s2", "1", "t2"), TTL, tab_cap=1) == []
    await store.leave("lobby", "s1", "closed")
    assert await store.join("lobby", meta("s2", "1", "t2"), TTL, tab_cap=1)


async def test_many_joins_at_once_never_pass_the_cap(store):
    """One batch, and batches from two stores at once, as two processes: at most the cap."""
    entries = [("lobby", meta(f"s{n}", "1", f"t{n}")) for n in range(6)]
    changes = await store.join_many(entries, TTL, tab_cap=3)
    assert sorted(c.meta["session"] for c in changes if c.joined) == ["s0", "s1", "s2"]
    if isinstance(store, RedisStore):
        other = RedisStore(store.url, prefix=store.prefix)
        try:
            more = [("busy", meta(f"p{n}", "1", f"t{n}")) for n in range(8)]
            await asyncio.gather(store.join_many(more[:4], TTL, tab_cap=3),
                                 other.join_many(more[4:], TTL, tab_cap=3))
        finally:
            await other.close()
        assert len(await sessions(store, "busy", "1")) == 3


class StoreOfBefore(MemoryStore):
    """A store subclass written before the tab cap: its join takes no ``tab_cap``."""

    async def join(self, room, meta, ttl_ms, now_ms=None):
        return await super().join(room, meta, ttl_ms, now_ms)


class ManyOfBefore(StoreOfBefore):
    """The same, with its own join_many of the old signature too."""

    async def join_many(self, entries, ttl_ms, now_ms=None):
        changes = []
        for room, entry in entries:
            changes += await self.join(room, entry, ttl_ms, now_ms)
        return changes


@pytest.mark.parametrize("kind", [StoreOfBefore, ManyOfBefore])
async def test_a_store_written_before_the_cap_still_works_and_is_capped(kind, fake_clock):
    store = kind(clock=fake_clock)
    entries = [("lobby", meta(f"s{n}", "1", f"t{n}")) for n in range(3)]
    changes = await store.join_capped(entries, TTL, 2)
    # Counted before each join from members(): the batch's own joins count as they land.
    assert sorted(c.meta["session"] for c in changes if c.joined) == ["s0", "s1"]
    reload = await store.join_capped([("lobby", meta("s9", "1", "t1"))], TTL, 2)
    assert [c.joined for c in reload] == [False, True]  # a reload is never refused
    assert await store.join_capped([("lobby", meta("s8", "1", "t8"))], TTL, None)
    assert await sessions(store, "lobby", "1") == ["s0", "s8", "s9"]


class DownStore(MemoryStore):
    """The memory store, unreachable while ``down``; ``slow``: its joins take ``slow`` s."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.down = False
        self.slow = 0.0

    async def join_many(self, entries, ttl_ms, now_ms=None, *, tab_cap=None):
        if self.down:
            raise StoreUnavailable("the store is down")
        if self.slow:
            await asyncio.sleep(self.slow)
        return await super().join_many(entries, ttl_ms, now_ms, tab_cap=tab_cap)


class Layer:
    """A channel layer that only takes group adds (the tracker's joins)."""

    async def group_add(self, group, channel):
        pass

    async def group_discard(self, group, channel):
        pass


@pytest.mark.parametrize("how", ["outage", "late"])
async def test_a_join_the_store_held_back_is_still_capped(how, make_runtime, settings):
    """A join that could not reach the store (an outage, or a call late because the loop
    lagged) is written at a later tick, and the tab cap counts there too."""
    settings.PRESENCE_MAX_TABS_PER_MEMBER = 2
    settings.PRESENCE_STORE_TIMEOUT = 0.05
    runtime = make_runtime()  # stepped by hand
    store = DownStore(clock=runtime.clock)
    active = runtime.replace(tracker.Tracker(runtime, store))
    frames = {}

    async def join(n):
        state = SessionState(tab=f"t{n}", interval=None, timeout=None, user_key="anon:one",
                             channel=f"c{n}")
        frames[state.id] = []

        async def send(frame):
            frames[state.id].append(frame)
        return state, await active.join(state, ["lobby"], {}, layer=Layer(), send=send)

    for n in range(2):
        assert (await join(n))[1] == {}
    if how == "outage":
        store.down = True
    else:
        store.slow, runtime.lag = 1.0, 1.0  # times out, no outage declared
    third, refused = await join(2)
    assert refused == {}, "held back, not refused yet"
    assert frames[third.id] == [] and third.id in active.unsynced_joins
    store.down, store.slow, runtime.lag = False, 0.0, 0.0
    await active.step()
    assert await sessions(store, "lobby", "anon:one") == sorted(
        local.state.id for local in active.local.values() if local.state.tab != "t2")
    assert [(f["type"], f.get("code")) for f in frames[third.id]] == [
        ("error", ERR_TOO_MANY_TABS)]
    assert third.rooms == [] and "lobby" not in active.local[third.id].metas
