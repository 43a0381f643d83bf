"""Faults behind a live server: the database away, Redis frozen, a consumer that raises.

- The database made unavailable (its directory moved away) while sessions open and
  close: pongs and presence go on; once it is back the session rows catch up, opens
  and closes both.
- Redis frozen (SIGSTOP, as in a failover or a partition: its data survives) while a
  session leaves: pings are answered meanwhile, and once Redis answers again the leave
  reaches Redis and the other clients, so no ghost remains. Redis killed and restarted
  empty is tests/test_e2e_presence.py::test_redis_restart_pings_answered_and_presence_rebuilt.
- A worker killed with kill -9 is tests/test_e2e_presence.py::
  test_kill_9_of_a_worker_leaves_no_ghost.
- A consumer that raises: its client gets 1011, its row says server_error, its presence
  leaves, and the other sessions of the process are unaffected.

Measured figures are printed (run with -s); bounds are asserted.
"""

import asyncio
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from heartbeat_app.options import anonymous_token
from heartbeat_app.stores.redis import RedisStore
from tests.servers import ServerProcess, free_port, scaled, server_env, wait_for_port
from tests.test_e2e_presence import open_view, presence_env, until

pytestmark = pytest.mark.e2e

TICK = 0.1


def sqlite_path(database_url: str) -> Path:
    return Path(database_url.removeprefix("sqlite:///"))


def rows(path: Path, ids) -> dict[str, tuple]:
    """id -> (opened_at, closed_at, close_code, close_reason) for the sessions asked."""
    ids = list(ids)
    with sqlite3.connect(path, timeout=scaled(5)) as db:
        found = db.execute(
            "SELECT id, opened_at, closed_at, close_code, close_reason FROM heartbeat_app_session"
            f" WHERE id IN ({','.join('?' * len(ids))})", ids).fetchall()
    return {row[0]: row[1:] for row in found}


@pytest.fixture
def own_database(migrated_db, tmp_path):
    """A copy of the migrated SQLite database in a directory of its own, to move away."""
    directory = tmp_path / "db"
    directory.mkdir()
    path = directory / "faults.sqlite3"
    shutil.copy(sqlite_path(migrated_db), path)
    return path


async def test_database_away_heartbeats_and_presence_go_on_and_rows_catch_up(own_database,
                                                                            tmp_path):
    env = server_env(f"sqlite:///{own_database}", HEARTBEAT_TICK=str(TICK),
                     HEARTBEAT_INTERVAL="2", HEARTBEAT_TIMEOUT="2",
                     HEARTBEAT_CHECKPOINT_INTERVAL="0.5", PRESENCE_LEAVE_GRACE="0.2")
    server = ServerProcess(tmp_path, env, name="db").start()
    directory, away = own_database.parent, own_database.parent.with_name("db-away")
    views = []
    try:
        early = await open_view(server, "early")
        stays = await open_view(server, "stays")
        views += [early, stays]
        assert await until(lambda: early.hello and stays.hello, scaled(5))
        ids = {"early": early.hello["session"], "stays": stays.hello["session"]}
        assert await until(lambda: len(rows(own_database, ids.values())) == 2, scaled(5))

        directory.rename(away)  # the database is gone: every connection attempt fails
        outage = time.monotonic()
        try:
            pongs_before = stays.pongs
            await early.ws.close()
            brief = await open_view(server, "brief")
            late = await open_view(server, "late")
            views += [brief, late]
            assert await until(lambda: brief.hello and late.hello, scaled(5))
            ids["brief"], ids["late"] = brief.hello["session"], late.hello["session"]
            # Presence goes on: the stayer sees the newcomers and the early leaver go.
            assert await until(
                lambda: set(stays.members()) == {"anon:stays", "anon:brief", "anon:late"},
                scaled(5))
            await brief.ws.close()
            assert await until(lambda: set(stays.members()) == {"anon:stays", "anon:late"},
                               scaled(5))
            await asyncio.sleep(1.0)
            pongs_during = stays.pongs - pongs_before
            assert pongs_during >= 5, "pings must be answered while the database is away"
            assert "session rows not written, will retry" in server.log()
        finally:
            away.rename(directory)
        down_for = time.monotonic() - outage
        back = time.monotonic()

        def caught_up():
            found = rows(own_database, ids.values())
            return (len(found) == 4
                    and all(found[ids[k]][1] is not None for k in ("early", "brief"))
                    and all(found[ids[k]][1] is None for k in ("stays", "late")))

        assert await until(caught_up, scaled(10)), rows(own_database, ids.values())
        caught_up_after = time.monotonic() - back
        found = rows(own_database, ids.values())
        print(f"\n[database] away for {down_for:.2f} s: {pongs_during} pongs answered meanwhile;"
              f" rows caught up {caught_up_after:.2f} s after it was back: "
              f"{ {k: found[v][2:] for k, v in ids.items()} }")
        assert found[ids["early"]][2:] == (1000, "closed")
        assert found[ids["brief"]][2:] == (1000, "closed")
        assert found[ids["brief"]][0] is not None
        assert caught_up_after <= 5.0
        # The line is logged right after the write commits: give it a moment.
        assert server.wait_for_log("session rows written again after an outage", scaled(5))
        log = server.log()
        assert log.count("session rows not written, will retry") == 1
        assert "Traceback" not in log
    finally:
        for view in views:
            await view.ws.close()
        server.stop()


@pytest.fixture
def own_redis(tmp_path):
    """A Redis server of the test's own, on a free port, that the test may freeze."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed (scripts/system-deps.sh installs it)"
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_for_port("127.0.0.1", port, time.monotonic() + scaled(10))
    yield proc, f"redis://127.0.0.1:{port}/0"
    proc.send_signal(signal.SIGCONT)
    proc.kill()
    proc.wait()


async def test_redis_frozen_while_a_session_leaves_leaves_no_ghost(own_redis, migrated_db,
                                                                   tmp_path):
    redis_proc, redis_url = own_redis
    prefix = f"hbfault-{time.monotonic_ns() % 10**8}"
    env = presence_env(migrated_db, redis_url, prefix)
    # A presence TTL longer than the outage, so nothing just expires: the leave itself
    # must reach Redis once it answers again.
    env.update(PRESENCE_TTL="30", PRESENCE_INSTANCE_TTL="30", HEARTBEAT_INTERVAL="5",
               HEARTBEAT_TIMEOUT="5")
    server = ServerProcess(tmp_path, env, name="redis").start()
    views = []
    try:
        stays = await open_view(server, "stays")
        goes = await open_view(server, "goes")
        views += [stays, goes]
        assert await until(lambda: set(stays.members()) == {"anon:stays", "anon:goes"}, scaled(5))
        redis_proc.send_signal(signal.SIGSTOP)
        frozen = time.monotonic()
        pongs_before = stays.pongs
        await goes.ws.close()
        await asyncio.sleep(3.0)
        pongs_during = stays.pongs - pongs_before
        redis_proc.send_signal(signal.SIGCONT)
        thawed = time.monotonic()
        assert pongs_during >= 5, "pings must be answered while Redis is frozen"
        assert stays.closed is None
        assert await until(lambda: set(stays.members()) == {"anon:stays"}, scaled(20)), \
            server.log()
        gone_after = time.monotonic() - thawed
        store = RedisStore(redis_url, prefix=prefix)
        try:
            members = await store.members("lobby")
        finally:
            await store.close()
        reasons = [reason for _, key, reason in stays.leaves if key == "anon:goes"]
        print(f"\n[redis] frozen {thawed - frozen:.2f} s while a session left: "
              f"{pongs_during} pongs answered meanwhile; its leave ({reasons}) reached the "
              f"other client {gone_after:.2f} s after Redis answered again")
        assert set(members) == {"anon:stays"}
        assert reasons == ["closed"]
        assert "Traceback" not in server.log()
    finally:
        for view in views:
            await view.ws.close()
        server.stop()


class FaultAppServer(ServerProcess):
    """Daphne serving tests.fault_asgi (the demo plus a consumer that raises)."""

    def command(self):
        return [sys.executable, "-m", "daphne", "-b", self.host, "-p", str(self.port),
                "tests.fault_asgi:application"]


async def test_a_consumer_that_raises_is_recorded_server_error_and_hurts_nobody_else(
        migrated_db, tmp_path):
    env = server_env(migrated_db, HEARTBEAT_TICK=str(TICK), HEARTBEAT_INTERVAL="2",
                     HEARTBEAT_TIMEOUT="2", PRESENCE_LEAVE_GRACE="0.2")
    server = FaultAppServer(tmp_path, env, name="crash").start()
    room = f"crash{time.monotonic_ns() % 10**6}"
    views = []
    try:
        for tab in ("b1", "b2", "b3"):
            view = await open_view(server, tab, room=room)
            views.append(view)
        keys = {"anon:b1", "anon:b2", "anon:b3", "anon:victim"}
        # The server issues anonymous keys; this token is one it issued, for "anon:victim".
        victim = await connect(f"{server.url}/ws/crash/{room}/?tab=victim"
                               f"&anon={quote(anonymous_token('victim'))}",
                               origin=server.origin, ping_interval=None)
        hello = json.loads(await victim.recv())
        assert await until(lambda: all(set(v.members()) == keys for v in views), scaled(5))
        pongs_before = [v.pongs for v in views]
        await victim.send(json.dumps({"type": "crash"}))
        try:
            async with asyncio.timeout(scaled(5)):
                async for _ in victim:
                    pass
        except ConnectionClosed:
            pass
        assert victim.close_code == 1011
        assert await until(lambda: all("anon:victim" not in v.members() for v in views), scaled(5))
        await asyncio.sleep(1.0)
        path = sqlite_path(migrated_db)
        assert await until(lambda: rows(path, [hello["session"]]).get(hello["session"], (0, 0))[1]
                           is not None, scaled(5))
        row = rows(path, [hello["session"]])[hello["session"]]
        gained = [v.pongs - before for v, before in zip(views, pongs_before, strict=True)]
        print(f"\n[crash] the raising consumer's client got {victim.close_code}; its row "
              f"{row[2:]}; the other three sessions answered {gained} pongs in the next second")
        assert row[2:] == (1011, "server_error")
        assert all(g >= 3 for g in gained)
        assert all(v.closed is None for v in views)
        leave = [r for v in views for _, key, r in v.leaves if key == "anon:victim"]
        assert leave and set(leave) == {"closed"}
        # Daphne logs the exception, as it must: that is the operator's clue.
        assert "the consumer raised on purpose" in server.log()
    finally:
        for view in views:
            await view.ws.close()
        server.stop()
