"""The tab cap's count (limits.rooms_over_tab_cap) on the memory store and the real Redis."""

import uuid

import pytest

from heartbeat_app.limits import rooms_over_tab_cap
from heartbeat_app.stores import MemoryStore
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


class Calls:
    """The ``call`` the tracker hands over, recording the operations made."""

    def __init__(self):
        self.ops = []

    async def __call__(self, op, coro):
        self.ops.append(op)
        return await coro


async def over(store, rooms, key="1", tab="new", session="s-new", cap=2):
    calls = Calls()
    refused = await rooms_over_tab_cap(rooms, key, tab, session, store=store, call=calls,
                                       cap=cap)
    return refused, calls.ops


async def test_a_member_at_the_cap_is_over_it_in_that_room_only(store):
    for n, room in [(1, "full"), (2, "full"), (3, "half")]:
        await store.join(room, meta(f"s{n}", "1", f"t{n}"), TTL)
    await store.join("full", meta("x1", "2", "t1"), TTL)  # another member's tabs never count
    await store.join("full", meta("x2", "2", "t2"), TTL)
    assert await over(store, ["full", "half", "empty"]) == (
        ["full"], ["rooms_of", "members", "members"])
    # Another member, at the same room, has two tabs too.
    assert (await over(store, ["full"], key="2"))[0] == ["full"]
    assert (await over(store, ["full"], key="3"))[0] == []
    assert (await over(store, ["full"], cap=3))[0] == []


async def test_a_reload_of_a_tab_and_the_session_itself_never_count(store):
    await store.join("lobby", meta("s1", "1", "t1"), TTL)
    await store.join("lobby", meta("s2", "1", "t2"), TTL)
    assert (await over(store, ["lobby"], tab="t2"))[0] == []  # replaces t2's meta
    assert (await over(store, ["lobby"], session="s2", tab="t9"))[0] == []
    assert (await over(store, ["lobby"], tab="t3"))[0] == ["lobby"]


async def test_a_member_present_nowhere_costs_one_read_and_no_cap_costs_none(store):
    for n in range(5):
        await store.join("big", meta(f"s{n}", f"k{n}", "t"), TTL)
    assert await over(store, ["big", "other"], key="newcomer") == ([], ["rooms_of"])
    assert await over(store, ["big"], key="k1", cap=None) == ([], [])
    assert await over(store, [], key="k1") == ([], [])
