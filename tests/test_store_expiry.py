"""The reaper's global expiry index: a pass reads what expired, not every room (issue #11)."""

import uuid

import pytest
import redis

from heartbeat_app.stores import redis as redis_store
from heartbeat_app.stores.redis import RedisStore

from .test_store import EXPIRED, T0, TTL, meta, store, summary  # noqa: F401 (fixture)

ROOMS = 300


def script_calls(url: str, command: str) -> int:
    """How many times Redis has run ``command`` so far, scripts included (INFO commandstats)."""
    stats = redis.Redis.from_url(url).info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


@pytest.fixture
async def rstore(redis_url):
    client = RedisStore(redis_url, prefix=f"hbtest-{uuid.uuid4().hex[:8]}")
    yield client
    await client.flush()
    await client.close()


async def test_a_reap_pass_reads_what_expired_not_every_room(rstore, redis_url):
    await rstore.join_many([(f"room-{i}", meta(f"s{i}", key=str(i))) for i in range(ROOMS)],
                          TTL, T0)
    await rstore.join("short", meta("gone", key="x"), 1_000, T0)
    await rstore.reap(10_000_000, T0)  # the first pass indexes what came before, if anything
    before = {c: script_calls(redis_url, c) for c in ("zrangebyscore", "zrange", "zscore")}
    result = await rstore.reap(10_000_000, T0 + 2_000)
    assert summary(result.changes) == [(False, "x", "gone", EXPIRED, True)]
    spent = {c: script_calls(redis_url, c) - n for c, n in before.items()}
    # The room scan read each of the 300 rooms' sorted sets: 301 ZRANGEBYSCOREs a pass.
    # With the index: one for the lost instances, one for the index, one ZSCORE for "gone".
    # The counts are the whole server's, so a margin leaves room for another client's few.
    assert spent["zrangebyscore"] < ROOMS // 10, spent
    assert spent["zrange"] < ROOMS // 10 and spent["zscore"] < ROOMS // 10, spent
    assert await rstore.count("room-7") == 1


async def test_rooms_written_before_the_index_are_indexed_then_reaped(rstore, redis_url):
    await rstore.join("old", meta("s1", key="1"), TTL, T0)
    await rstore.join("old", meta("s2", key="2"), TTL, T0)
    # As a release before the index left them: no P:x, no P:xv.
    redis.Redis.from_url(redis_url).delete(f"{rstore.prefix}:x", f"{rstore.prefix}:xv")
    assert summary((await rstore.reap(10_000_000, T0)).changes) == []
    await rstore.refresh("i1", 10_000, TTL, [("old", "s2")], now_ms=T0 + 20_000)
    result = await rstore.reap(10_000_000, T0 + TTL)
    assert summary(result.changes) == [(False, "1", "s1", EXPIRED, True)]
    assert sorted(await rstore.members("old", T0 + TTL)) == ["2"]


async def test_an_expiry_pushed_back_behind_the_index_is_kept(rstore, redis_url):
    await rstore.join("lobby", meta("s1"), TTL, T0)
    # A writer of a release before the index pushes the room's expiry alone.
    redis.Redis.from_url(redis_url).zadd(f"{rstore.prefix}:r:lobby:z", {"s1": T0 + 3 * TTL})
    assert (await rstore.reap(10_000_000, T0 + TTL)).changes == []
    assert sorted(await rstore.members("lobby", T0 + TTL)) == ["1"]
    result = await rstore.reap(10_000_000, T0 + 3 * TTL)
    assert summary(result.changes) == [(False, "1", "s1", EXPIRED, True)]


async def test_more_expired_than_one_call_takes_are_reaped_in_one_pass(
        rstore, monkeypatch):
    monkeypatch.setattr(redis_store, "REAP_BATCH", 7)
    await rstore.join_many([("lobby", meta(f"s{i}", key=str(i))) for i in range(30)], TTL, T0)
    result = await rstore.reap(10_000_000, T0 + TTL)
    assert sorted(c.meta["session"] for c in result.changes) == sorted(
        f"s{i}" for i in range(30))
    assert await rstore.count("lobby") == 0 and await rstore.rooms() == {}


async def test_refreshed_metas_outlive_their_first_expiry_and_then_go(store):  # noqa: F811
    await store.join("a", meta("s1", key="1"), TTL, T0)
    await store.join("b", meta("s2", key="2"), TTL, T0)
    for beat in (10_000, 20_000, 30_000 - 1):
        await store.refresh("i1", 10_000_000, TTL, [("a", "s1")], now_ms=T0 + beat)
    result = await store.reap(10_000_000, T0 + TTL)
    assert summary(result.changes) == [(False, "2", "s2", EXPIRED, True)]
    assert (await store.reap(10_000_000, T0 + TTL + 20_000)).changes == []
    result = await store.reap(10_000_000, T0 + 2 * TTL)
    assert summary(result.changes) == [(False, "1", "s1", EXPIRED, True)]
    assert await store.rooms() == {}


async def test_a_meta_replaced_by_its_tab_is_not_reaped_at_the_old_expiry(store):  # noqa: F811
    await store.join("lobby", meta("s1", key="1", tab="T"), TTL, T0)
    await store.join("lobby", meta("s2", key="1", tab="T"), TTL, T0 + 20_000)
    assert (await store.reap(10_000_000, T0 + TTL)).changes == []
    assert [m["session"] for m in (await store.members("lobby", T0 + TTL))["1"]["metas"]] == [
        "s2"]
    result = await store.reap(10_000_000, T0 + 20_000 + TTL)
    assert summary(result.changes) == [(False, "1", "s2", EXPIRED, True)]
