"""End to end presence: two Daphne processes sharing one Redis, kill -9, a Redis restart.

Measured figures are printed (run with -s); bounds are asserted.
"""

import asyncio
import json
import os
import shutil
import subprocess
import time

import pytest
import redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from heartbeat_app.options import anonymous_token
from heartbeat_app.stores.redis import RedisStore
from tests.servers import ServerProcess, free_port, scaled, server_env, until, wait_for_port

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

INSTANCE_TTL, REAP_INTERVAL, TICK = 1.5, 0.5, 0.1
# From kill -9 to the leave broadcast: the instance must be seen silent for its
# TTL, then a reaper pass (every REAP_INTERVAL) removes it, then one tick broadcasts.
KILL_BOUND = INSTANCE_TTL + REAP_INTERVAL + TICK
SLACK = 0.5


def presence_env(database_url, redis_url, prefix):
    return {
        **server_env(database_url),
        "REDIS_URL": redis_url,
        "PRESENCE_KEY_PREFIX": prefix,
        "PRESENCE_INSTANCE_TTL": str(INSTANCE_TTL),
        "PRESENCE_REAP_INTERVAL": str(REAP_INTERVAL),
        "PRESENCE_TTL": "3",
        "PRESENCE_LEAVE_GRACE": "0.3",
        "HEARTBEAT_TICK": str(TICK),
    }


class View:
    """A client's picture of a room, kept from presence_state and presence_diff.

    Each view presents the anonymous token of the id ``tab``, as a client does with the
    token the server issued it (docs/protocol.md#identity), so its member key is
    ``anon:<tab>`` and the tests can name it.
    """

    def __init__(self, server, tab, room="lobby"):
        self.url = f"{server.url}/ws/rooms/{room}/?tab={tab}&anon={anonymous_token(tab)}"
        self.origin = server.origin
        self.metas: dict[str, dict] = {}  # ref -> meta
        self.leaves: list[tuple[float, str, str]] = []  # (time, key, reason)
        self.pongs = 0
        self.closed = None
        self.hello = None
        self.state_count = 0
        self.task = None

    def members(self):
        self.check()
        keys = {}
        for meta in self.metas.values():
            keys.setdefault(meta["key"], []).append(meta)
        return keys

    def apply(self, message):
        if message["type"] == "presence_state":
            self.state_count += 1
            self.metas = {m["ref"]: {**m, "key": k}
                          for k, v in message["members"].items() for m in v["metas"]}
        elif message["type"] == "presence_diff":
            for key, value in message["joins"].items():
                for meta in value["metas"]:
                    self.metas[meta["ref"]] = {**meta, "key": key}
            for key, value in message["leaves"].items():
                for meta in value["metas"]:
                    self.metas.pop(meta["ref"], None)
                    self.leaves.append((time.monotonic(), key, meta["reason"]))
        elif message["type"] == "pong":
            self.pongs += 1
        elif message["type"] == "hello":
            self.hello = message

    def check(self):
        """Raise what broke the reader, if anything did: a test must not wait on a dead view."""
        if self.task is not None and self.task.done() and not self.task.cancelled():
            error = self.task.exception()
            if error is not None:
                raise error

    async def run(self, ws, ping_every=0.2):
        async def pinger():
            n = 0
            while True:
                await asyncio.sleep(ping_every)
                n += 1
                await ws.send(json.dumps({"type": "ping", "id": n}))

        task = asyncio.create_task(pinger())
        try:
            async for raw in ws:
                message = json.loads(raw)
                if message["type"] == "ping":
                    await ws.send(json.dumps({"type": "pong", "id": message["id"]}))
                self.apply(message)
        except ConnectionClosed:
            pass  # the end of the connection; anything else is a bug and fails the test
        finally:
            task.cancel()
            self.closed = ws.close_code


async def open_view(server, tab, room="lobby"):
    view = View(server, tab, room)
    ws = await connect(view.url, origin=view.origin, ping_interval=None)
    view.ws = ws
    view.task = asyncio.create_task(view.run(ws))
    return view


@pytest.fixture
def prefix():
    return f"hbe2e-{os.urandom(4).hex()}"


@pytest.fixture
def shared_redis_url(redis_url):
    url = redis_url.rsplit("/", 1)[0] + "/14"
    redis.Redis.from_url(url).flushdb()
    yield url
    redis.Redis.from_url(url).flushdb()


@pytest.fixture
def two_servers(migrated_db, shared_redis_url, prefix, tmp_path):
    env = presence_env(migrated_db, shared_redis_url, prefix)
    a = ServerProcess(tmp_path, env, name="A").start()
    b = ServerProcess(tmp_path, env, name="B").start()
    yield a, b
    a.stop()
    b.stop()


async def test_two_processes_see_the_same_members_and_leaves(two_servers):
    a, b = two_servers
    on_a = await open_view(a, "tab-a")
    on_b = await open_view(b, "tab-b")
    both = {"anon:tab-a", "anon:tab-b"}
    assert await until(
        lambda: set(on_a.members()) == both and set(on_b.members()) == both, scaled(5))
    await on_a.ws.close(code=1000)
    assert await until(lambda: set(on_b.members()) == {"anon:tab-b"}, scaled(5))
    assert ("anon:tab-a", "closed") in [(k, r) for _, k, r in on_b.leaves]
    await on_b.ws.close()


async def test_kill_9_of_a_worker_leaves_no_ghost(two_servers, shared_redis_url, prefix):
    a, b = two_servers
    _victims = [await open_view(a, f"a{i}") for i in range(5)]  # held open on A until it dies
    survivor = await open_view(b, "b0")
    expected = {f"anon:a{i}" for i in range(5)} | {"anon:b0"}
    assert await until(lambda: set(survivor.members()) == expected, scaled(5))
    a.kill9()
    killed = time.monotonic()
    assert await until(lambda: set(survivor.members()) == {"anon:b0"}, scaled(KILL_BOUND + 5))
    last_leave = max(t for t, key, _ in survivor.leaves if key.startswith("anon:a"))
    elapsed = last_leave - killed
    reasons = {r for _, key, r in survivor.leaves if key.startswith("anon:a")}
    print(f"\n[presence] kill -9 of A -> last leave on B after {elapsed:.3f} s "
          f"(bound {KILL_BOUND} s); reasons {sorted(reasons)}")
    assert reasons <= {"instance_lost", "expired"}
    assert elapsed <= KILL_BOUND + SLACK
    # Nothing of A remains: not in presence, not in any channel-layer group.
    store = RedisStore(shared_redis_url, prefix=prefix)
    try:
        members = await store.members("lobby")
        assert set(members) == {"anon:b0"}
    finally:
        await store.close()
    raw = redis.Redis.from_url(shared_redis_url)
    # Only B's instance is still known to the store: A's beat, key and info are gone.
    assert len(raw.zrange(f"{prefix}:i", 0, -1)) == len(raw.hkeys(f"{prefix}:instinfo")) == 1
    channels_left = set()
    for key in raw.scan_iter(match="asgi:group:*"):
        channels_left |= set(raw.zrange(key, 0, -1))
    survivor_prefix = {c.split(b"!")[0] for c in channels_left}
    assert len(survivor_prefix) == 1, f"channels of the dead worker remain: {channels_left}"
    await survivor.ws.close()


@pytest.fixture
def own_redis(tmp_path):
    """A Redis server of the test's own, on a free port, that the test may kill."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed (scripts/system-deps.sh installs it)"
    port = free_port()

    def start():
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        assert wait_for_port("127.0.0.1", port, time.monotonic() + scaled(10))
        return proc

    holder = {"proc": start(), "start": start, "url": f"redis://127.0.0.1:{port}/0"}
    yield holder
    holder["proc"].kill()
    holder["proc"].wait()


async def test_redis_restart_pings_answered_and_presence_rebuilt(own_redis, migrated_db, prefix,
                                                                 tmp_path):
    server = ServerProcess(tmp_path, presence_env(migrated_db, own_redis["url"], prefix)).start()
    try:
        one = await open_view(server, "one")
        two = await open_view(server, "two")
        assert await until(lambda: set(one.members()) == {"anon:one", "anon:two"}, scaled(5))
        states_before = one.state_count
        own_redis["proc"].kill()
        own_redis["proc"].wait()
        down_at = one.pongs
        await asyncio.sleep(2.0)
        pongs_during = one.pongs - down_at
        assert pongs_during >= 5, "pings must be answered while Redis is down"
        assert one.closed is None and two.closed is None
        own_redis["proc"] = own_redis["start"]()  # back, and empty
        assert await until(lambda: one.state_count > states_before, scaled(10)), server.log()
        assert await until(lambda: set(one.members()) == {"anon:one", "anon:two"}, scaled(5))
        store = RedisStore(own_redis["url"], prefix=prefix)
        try:
            assert set(await store.members("lobby")) == {"anon:one", "anon:two"}
        finally:
            await store.close()
        log = server.log()
        print(f"\n[presence] Redis down 2 s: {pongs_during} pongs answered meanwhile; "
              f"presence rebuilt after restart")
        assert log.count("presence store unavailable") == 1
        assert "Traceback" not in log
        await one.ws.close()
        await two.ws.close()
    finally:
        server.stop()


async def test_storm_of_1000_connects_fails_no_handshake(migrated_db, shared_redis_url, prefix,
                                                         tmp_path):
    """1,000 connects, 100 in flight, into 10 rooms: every handshake succeeds."""
    env = presence_env(migrated_db, shared_redis_url, prefix)
    env["PRESENCE_BROADCAST_INTERVAL"] = "1.0"
    env["HEARTBEAT_INTERVAL"] = "25"
    env["HEARTBEAT_TIMEOUT"] = "10"
    server = ServerProcess(tmp_path, env).start()
    gate = asyncio.Semaphore(100)
    opened, failures, states = [], [], 0

    async def one(i):
        nonlocal states
        async with gate:
            try:
                ws = await connect(f"{server.url}/ws/rooms/r{i % 10}/?tab=s{i}",
                                   origin=server.origin, ping_interval=None,
                                   open_timeout=scaled(30))
                hello = json.loads(await asyncio.wait_for(ws.recv(), scaled(30)))
                state = json.loads(await asyncio.wait_for(ws.recv(), scaled(30)))
            except Exception as exc:
                failures.append(repr(exc))
                return
        assert hello["type"] == "hello"
        states += state["type"] == "presence_state"
        opened.append(ws)

    try:
        started = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(1000)))
        took = time.monotonic() - started
        print(f"\n[presence] 1,000 connects (100 in flight, 10 rooms) in {took:.1f} s: "
              f"{len(failures)} failed")
        assert failures == []
        assert len(opened) == 1000 and states == 1000
        store = RedisStore(shared_redis_url, prefix=prefix)
        try:
            assert await until_async(lambda: store.rooms(), {f"r{i}": 100 for i in range(10)},
                                      scaled(10))
        finally:
            await store.close()
        assert "Traceback" not in server.log()
    finally:
        await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)
        server.stop()


async def until_async(read, expected, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await read() == expected:
            return True
        await asyncio.sleep(0.1)
    return await read() == expected
