"""One contract suite for every presence store: memory, and Redis on the real server."""

import asyncio
import uuid

import pytest

from heartbeat_app.protocol import LeaveReason
from heartbeat_app.stores import MemoryStore, StoreUnavailable
from heartbeat_app.stores.redis import RedisStore

EXPIRED, INSTANCE_LOST = LeaveReason.EXPIRED, LeaveReason.INSTANCE_LOST
REPLACED, UPDATE = LeaveReason.REPLACED, LeaveReason.UPDATE

T0 = 1_700_000_000_000  # an injected "now", in ms
TTL = 30_000


@pytest.fixture(params=["memory", "redis"])
async def store(request):
    if request.param == "memory":
        clock = request.getfixturevalue("fake_clock")
        clock.advance(T0 / 1000 - clock.wall())
        yield MemoryStore(clock=clock)
        return
    url = request.getfixturevalue("redis_url")
    store = RedisStore(url, prefix=f"hbtest-{uuid.uuid4().hex[:8]}")
    yield store
    await store.flush()
    await store.close()


def meta(session, key="1", tab=None, instance="i1", **extra):
    return {"session": session, "key": key, "tab": tab or f"tab-{session}",
            "instance": instance, "visible": True, "online_at": T0, "ref": f"r-{session}",
            **extra}


def summary(changes):
    return [(c.joined, c.key, c.meta["session"], c.reason, c.member_changed) for c in changes]


async def test_join_and_leave(store):
    changes = await store.join("lobby", meta("s1"), TTL, T0)
    assert summary(changes) == [(True, "1", "s1", "", True)]
    assert await store.members("lobby", T0) == {"1": {"metas": [meta("s1")]}}
    assert await store.count("lobby") == 1
    assert await store.rooms() == {"lobby": 1}
    assert await store.rooms_of("1") == ["lobby"]
    changes = await store.leave("lobby", "s1", "closed", T0)
    assert summary(changes) == [(False, "1", "s1", "closed", True)]
    assert changes[0].meta["reason"] == "closed"
    assert await store.members("lobby", T0) == {}
    assert await store.count("lobby") == 0
    assert await store.rooms() == {}
    assert await store.rooms_of("1") == []
    assert await store.leave("lobby", "s1", "closed", T0) == []


async def test_multi_tab_member_is_one_member(store):
    for session in ("a", "b", "c"):
        await store.join("lobby", meta(session, key="7"), TTL, T0)
    await store.join("lobby", meta("d", key="8"), TTL, T0)
    members = await store.members("lobby", T0)
    assert sorted(members) == ["7", "8"]
    assert sorted(m["session"] for m in members["7"]["metas"]) == ["a", "b", "c"]
    assert await store.count("lobby") == 2
    # Closing one tab is not a leave of the user.
    assert summary(await store.leave("lobby", "a", "closed", T0)) == [
        (False, "7", "a", "closed", False)]
    assert summary(await store.leave("lobby", "b", "closed", T0)) == [
        (False, "7", "b", "closed", False)]
    assert summary(await store.leave("lobby", "c", "closed", T0)) == [
        (False, "7", "c", "closed", True)]
    assert sorted(await store.members("lobby", T0)) == ["8"]


async def test_second_tab_join_is_not_a_member_join(store):
    await store.join("lobby", meta("a", key="7"), TTL, T0)
    changes = await store.join("lobby", meta("b", key="7"), TTL, T0)
    assert summary(changes) == [(True, "7", "b", "", False)]


async def test_update_replaces_the_meta_as_a_leave_and_a_join(store):
    await store.join("lobby", meta("s1"), TTL, T0)
    newer = meta("s1", visible=False, ref="r-2")
    changes = await store.update("lobby", newer, TTL, T0)
    assert summary(changes) == [(False, "1", "s1", UPDATE, False), (True, "1", "s1", "", False)]
    assert changes[0].meta["ref"] == "r-s1"
    assert changes[1].meta["ref"] == "r-2"
    assert (await store.members("lobby", T0))["1"]["metas"] == [newer]
    assert await store.count("lobby") == 1


async def test_update_of_a_gone_session_does_nothing(store):
    assert await store.update("lobby", meta("ghost"), TTL, T0) == []
    assert await store.members("lobby", T0) == {}


async def test_same_tab_rejoin_replaces_without_member_blink(store):
    """A reload: the tab's new session replaces the old one, the member never leaves."""
    await store.join("lobby", meta("old", key="5", tab="T"), TTL, T0)
    changes = await store.join("lobby", meta("new", key="5", tab="T"), TTL, T0)
    assert summary(changes) == [(False, "5", "old", REPLACED, False),
                                (True, "5", "new", "", False)]
    assert [m["session"] for m in (await store.members("lobby", T0))["5"]["metas"]] == ["new"]
    # The old session's late leave finds nothing to remove.
    assert await store.leave("lobby", "old", "closed", T0) == []
    assert await store.count("lobby") == 1


async def test_a_tab_id_is_scoped_to_its_member(store):
    """The same tab id from another member is another tab: it replaces nobody's meta."""
    await store.join("lobby", meta("victim", key="anon:V", tab="T"), TTL, T0)
    changes = await store.join("lobby", meta("thief", key="anon:X", tab="T"), TTL, T0)
    assert summary(changes) == [(True, "anon:X", "thief", "", True)]
    assert sorted(await store.members("lobby", T0)) == ["anon:V", "anon:X"]
    assert await store.count("lobby") == 2
    # A signed-in reload of an anonymous tab is another member too: both stay until each
    # session leaves on its own.
    changes = await store.join("lobby", meta("signed-in", key="9", tab="T"), TTL, T0)
    assert summary(changes) == [(True, "9", "signed-in", "", True)]
    # Within one member the tab still identifies the tab: a reload replaces its meta.
    changes = await store.join("lobby", meta("victim-2", key="anon:V", tab="T"), TTL, T0)
    assert summary(changes) == [(False, "anon:V", "victim", REPLACED, False),
                                (True, "anon:V", "victim-2", "", False)]
    # Each member's leave removes its own tab only.
    assert summary(await store.leave("lobby", "thief", "closed", T0)) == [
        (False, "anon:X", "thief", "closed", True)]
    changes = await store.join("lobby", meta("victim-3", key="anon:V", tab="T"), TTL, T0)
    assert [c.meta["session"] for c in changes if not c.joined] == ["victim-2"]
    assert {k: [m["session"] for m in v["metas"]]
            for k, v in (await store.members("lobby", T0)).items()} == {
        "anon:V": ["victim-3"], "9": ["signed-in"]}


async def test_rooms_are_independent(store):
    await store.join("a", meta("s1", key="1"), TTL, T0)
    await store.join("b", meta("s2", key="1"), TTL, T0)
    await store.join("b", meta("s3", key="2"), TTL, T0)
    assert await store.rooms() == {"a": 1, "b": 2}
    assert await store.rooms_of("1") == ["a", "b"]
    await store.leave("a", "s1", "closed", T0)
    assert await store.rooms_of("1") == ["b"]


async def test_expiry_hides_then_reaps_with_reason_expired(store):
    await store.join("lobby", meta("s1"), TTL, T0)
    await store.join("lobby", meta("s2", key="2"), TTL, T0)
    # s2 is refreshed, s1 is not.
    await store.refresh("i1", 10_000, TTL, [("lobby", "s2")], now_ms=T0 + 20_000)
    assert sorted(await store.members("lobby", T0 + TTL - 1)) == ["1", "2"]
    assert sorted(await store.members("lobby", T0 + TTL)) == ["2"]
    result = await store.reap(10_000_000, T0 + TTL)
    assert summary(result.changes) == [(False, "1", "s1", EXPIRED, True)]
    assert result.lost_instances == []
    assert await store.count("lobby") == 1
    assert await store.reap(10_000_000, T0 + TTL) == type(result)()


async def test_refresh_reports_sessions_no_longer_held(store):
    await store.join("lobby", meta("s1"), TTL, T0)
    missing = await store.refresh("i1", 10_000, TTL, [("lobby", "s1"), ("lobby", "gone")],
                                  now_ms=T0)
    assert missing == [("lobby", "gone")]


async def test_lost_instance_sessions_are_reaped(store):
    await store.join("lobby", meta("a1", key="1", instance="A"), TTL, T0)
    await store.join("lobby", meta("a2", key="2", instance="A"), TTL, T0)
    await store.join("lobby", meta("b1", key="2", instance="B"), TTL, T0)
    await store.refresh("A", 5_000, TTL, [("lobby", "a1"), ("lobby", "a2")],
                        info={"host": "h", "pid": 1}, now_ms=T0)
    await store.refresh("B", 5_000, TTL, [("lobby", "b1")], now_ms=T0)
    assert len((await store.members("lobby", T0))["1"]["metas"]) == 1
    # B keeps beating; A stops.
    await store.refresh("B", 5_000, TTL, [("lobby", "b1")], now_ms=T0 + 6_000)
    result = await store.reap(5_000, T0 + 6_000)
    assert [i["id"] for i in result.lost_instances] == ["A"]
    assert result.lost_instances[0]["host"] == "h"
    assert sorted(summary(result.changes)) == [
        (False, "1", "a1", INSTANCE_LOST, True),
        (False, "2", "a2", INSTANCE_LOST, False),  # key 2 still has b1
    ]
    assert sorted(await store.members("lobby", T0 + 6_000)) == ["2"]
    # A is gone for good: a second pass finds nothing more of it, and B is never lost.
    again = await store.reap(5_000, T0 + 6_000)
    assert again.lost_instances == [] and again.changes == []


async def test_reaper_lease_is_exclusive_and_expires(store):
    assert await store.acquire_lease("reaper", "A", 200)
    assert await store.acquire_lease("reaper", "A", 200)  # renewal
    assert not await store.acquire_lease("reaper", "B", 200)
    if isinstance(store, MemoryStore):
        store.clock.advance(1.0)
    else:
        await asyncio.sleep(0.3)
    assert await store.acquire_lease("reaper", "B", 200)
    assert not await store.acquire_lease("reaper", "A", 200)


async def test_leave_grace_by_tab_reconnect_through_the_store(store):
    """The grace itself lives in the tracker; the store's part: a rejoin of the tab wins."""
    await store.join("lobby", meta("s1", key="anon:T", tab="T"), TTL, T0)
    await store.join("lobby", meta("s2", key="anon:T", tab="T"), TTL, T0 + 1_000)
    assert await store.leave("lobby", "s1", "closed", T0 + 5_000) == []
    assert [m["session"] for m in (await store.members("lobby", T0 + 5_000))["anon:T"]["metas"]
            ] == ["s2"]


async def test_room_of_10k_metas(store):
    """A room past Lua's unpack() limit (under 8,000 values) is still read whole."""
    for i in range(0, 10_000):
        await store.join("big", meta(f"s{i}", key=str(i % 4000)), TTL, T0)
    assert await store.count("big") == 4000
    members = await store.members("big", T0)
    assert sum(len(m["metas"]) for m in members.values()) == 10_000


async def test_redis_store_reports_unavailable():
    store = RedisStore("redis://127.0.0.1:1/0", timeout=0.5)
    with pytest.raises(StoreUnavailable):
        await store.join("lobby", meta("s1"), TTL)
    with pytest.raises(StoreUnavailable):
        await store.members("lobby")
    await store.close()


@pytest.fixture
def sentinel(tmp_path):
    """A primary and a Sentinel watching it, both the test's own, on free ports."""
    import shutil
    import subprocess
    import time

    from tests.servers import free_port, wait_for_port

    binary = shutil.which("redis-server")
    primary, watcher = free_port(), free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(f"port {watcher}\nbind 127.0.0.1\ndir {tmp_path}\n"
                      f"sentinel monitor hbprimary 127.0.0.1 {primary} 1\n")
    procs = [
        subprocess.Popen([binary, "--port", str(primary), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--dir", str(tmp_path)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([binary, str(config), "--sentinel"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    try:
        for port in (primary, watcher):
            assert wait_for_port("127.0.0.1", port, time.monotonic() + 10)
        yield {"sentinels": [("127.0.0.1", watcher)], "master_name": "hbprimary"}
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


async def test_redis_store_through_sentinel(sentinel, settings):
    """The store finds the primary through Sentinel, as channels_redis hosts describe it."""
    from heartbeat_app import stores

    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                           "CONFIG": {"hosts": [sentinel]}}}
    settings.PRESENCE_REDIS_URL = None
    assert stores.redis_url(settings.CHANNEL_LAYERS["default"]) == sentinel
    store = RedisStore(sentinel, prefix="hbsentinel")
    try:
        await store.join("lobby", meta("s1"), TTL, T0)
        assert list(await store.members("lobby", T0)) == ["1"]
    finally:
        await store.close()


async def test_join_many_is_join_for_each_pair(store):
    """A batch of joins: the same changes, in order, as one join() after another."""
    await store.join("lobby", meta("old", key="1", tab="t1"), TTL, T0)
    changes = await store.join_many([
        ("lobby", meta("s2", key="2")),
        ("lobby", meta("s3", key="2")),  # the member's second tab: no member join
        ("hall", meta("s4", key="1")),
        ("lobby", meta("new", key="1", tab="t1")),  # the same tab again: replaces "old"
    ], TTL, T0)
    assert summary(changes) == [
        (True, "2", "s2", "", True),
        (True, "2", "s3", "", False),
        (True, "1", "s4", "", True),
        (False, "1", "old", REPLACED, False),
        (True, "1", "new", "", False),
    ]
    assert sorted(await store.members("lobby", T0)) == ["1", "2"]
    assert await store.join_many([], TTL, T0) == []
