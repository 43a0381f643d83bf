"""Presence driven while connected, across two Daphne processes sharing one Redis.

A client on A moves into a room held by an observer on B, sets its state, types, leaves.
"""

import asyncio
import json
import os

import pytest
import redis
from websockets.asyncio.client import connect

from tests.servers import ServerProcess, scaled, server_env

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


class Peer:
    """A websockets client that keeps every message it receives."""

    def __init__(self, ws):
        self.ws = ws
        self.messages: list[dict] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self):
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                if message["type"] == "ping":
                    await self.ws.send(json.dumps({"type": "pong", "id": message["id"]}))
                self.messages.append(message)
        except Exception as exc:  # noqa: BLE001 (kept for the assertion below)
            self.error = exc

    async def send(self, message):
        await self.ws.send(json.dumps(message))

    async def wait_for(self, predicate, timeout=None):
        timeout = scaled(10.0) if timeout is None else timeout
        deadline = asyncio.get_running_loop().time() + timeout
        seen = 0
        while asyncio.get_running_loop().time() < deadline:
            for message in self.messages[seen:]:
                if predicate(message):
                    return message
            seen = len(self.messages)
            await asyncio.sleep(0.02)
        raise AssertionError(f"not received in {timeout} s; got {self.messages[-5:]}")


def servers_on_redis(migrated_db, redis_url, tmp_path, prefix, **settings):
    """Two Daphne processes sharing one Redis (database 10), stopped and flushed after."""
    url = redis_url.rsplit("/", 1)[0] + "/10"
    redis.Redis.from_url(url).flushdb()
    env = server_env(migrated_db, REDIS_URL=url, HEARTBEAT_TICK="0.1",
                     PRESENCE_KEY_PREFIX=f"{prefix}-{os.urandom(3).hex()}",
                     HEARTBEAT_INTERVAL="5", HEARTBEAT_TIMEOUT="5", **settings)
    a = ServerProcess(tmp_path, env, name="A").start()
    b = ServerProcess(tmp_path, env, name="B").start()
    yield a, b
    a.stop()
    b.stop()
    redis.Redis.from_url(url).flushdb()


@pytest.fixture
def two(migrated_db, redis_url, tmp_path):
    yield from servers_on_redis(migrated_db, redis_url, tmp_path, "hblive")


async def peer(server, room, tab):
    ws = await connect(f"{server.url}/ws/rooms/{room}/?tab={tab}", origin=server.origin,
                       ping_interval=None)
    return Peer(ws)


def joined(room, key=None):
    def match(message):
        return (message["type"] == "presence_diff" and message["room"] == room
                and (key is None or key in message["joins"]))
    return match


async def test_join_update_broadcast_and_leave_across_two_processes(two):
    a, b = two
    observer = await peer(b, "hall", "obs")
    obs_state = await observer.wait_for(lambda m: m["type"] == "presence_state")
    mover = await peer(a, "lobby", "mov")
    hello = await mover.wait_for(lambda m: m["type"] == "hello")
    await mover.wait_for(lambda m: m["type"] == "presence_state")
    # Join while connected: the state of the new room, and the observer on B sees the join.
    await mover.send({"type": "join", "room": "hall"})
    state = await mover.wait_for(lambda m: m["type"] == "presence_state" and m["room"] == "hall")
    assert state["count"] == 2 and len(state["members"]) == 2
    diff = await observer.wait_for(
        lambda m: m["type"] == "presence_diff" and m["room"] == "hall" and any(
            meta["session"] == hello["session"]
            for v in m["joins"].values() for meta in v["metas"]))
    key = next(k for k, v in diff["joins"].items()
               if any(meta["session"] == hello["session"] for meta in v["metas"]))
    # A live state, seen on B.
    await mover.send({"type": "presence_update", "room": "hall", "state": {"status": "busy"}})
    diff = await observer.wait_for(lambda m: m["type"] == "presence_diff" and any(
        meta.get("state") == {"status": "busy"} for meta in m["joins"].get(key, {"metas": []})
        ["metas"]))
    assert diff["leaves"][key]["metas"][0]["reason"] == "update"
    # A typing signal reaches B at once, tagged with the sender's member key; not its sender.
    await mover.send({"type": "broadcast", "room": "hall", "event": "typing", "data": {"on": 1}})
    signal = await observer.wait_for(lambda m: m["type"] == "broadcast")
    assert signal == {"type": "broadcast", "room": "hall", "event": "typing", "from": key,
                      "data": {"on": 1}}
    # Leaving: reason left, and the mover hears no more of the room.
    await mover.send({"type": "leave", "room": "hall"})
    diff = await observer.wait_for(lambda m: m["type"] == "presence_diff" and any(
        meta["reason"] == "left" for meta in m["leaves"].get(key, {"metas": []})["metas"]))
    count = len(mover.messages)
    await observer.send({"type": "presence_update", "room": "hall", "state": {"n": 1}})
    await asyncio.sleep(0.5)
    assert not [m for m in mover.messages[count:] if m.get("room") == "hall"]
    assert obs_state["count"] == 1
    # Each process numbered its own diffs of the hall, and none went missing on the way:
    # from the observer's state on, every origin's seq follows the one before.
    hall = [m for m in observer.messages if m["type"] == "presence_diff" and m["room"] == "hall"]
    last = dict(obs_state["seqs"])
    for diff in hall:
        assert diff["seq"] <= last.get(diff["origin"], diff["seq"] - 1) + 1, (diff, last)
        last[diff["origin"]] = max(diff["seq"], last.get(diff["origin"], 0))
    assert len({diff["origin"] for diff in hall}) == 2, "one sequence from A, one from B"
    await mover.ws.close()
    await observer.ws.close()


@pytest.fixture
def two_big(migrated_db, redis_url, tmp_path):
    """Two processes on which a room of two members is big (PRESENCE_FULL_LIST_MAX 1), with
    a fan-out budget of 4 frames a second: passes wait, and their signals pile up."""
    yield from servers_on_redis(migrated_db, redis_url, tmp_path, "hbbig",
                                PRESENCE_FULL_LIST_MAX="1", PRESENCE_SIGNAL_FANOUT="4")


def signals(peer, room="big"):
    """Every signal a peer got in ``room``, batches taken apart: (sender number, n, frame type)."""
    found = []
    for m in peer.messages:
        if m.get("room") != room or m["type"] not in ("broadcast", "broadcasts"):
            continue
        for s in m["signals"] if m["type"] == "broadcasts" else [m]:
            found.append((s["data"]["s"], s["data"]["n"], m["type"]))
    return found


async def test_a_big_rooms_signals_cross_both_processes_batched_and_never_back_to_their_sender(
        two_big):
    a, b = two_big
    senders = [await peer(a, "big", f"s{i}") for i in (1, 2)]
    readers = [await peer(b, "big", f"r{i}") for i in (1, 2)]
    for p in (*senders, *readers):
        await p.wait_for(lambda m: m["type"] == "presence_state")
    await readers[0].wait_for(lambda m: m.get("room") == "big" and m.get("count") == 4)
    last = 10
    for n in range(1, last + 1):  # 1 s of typing, at 20 a second from each
        for i, sender in enumerate(senders, 1):
            await sender.send({"type": "broadcast", "room": "big", "event": "typing",
                               "data": {"s": i, "n": n}})
        await asyncio.sleep(0.05)
    async def until_latest(p, of):
        deadline = asyncio.get_running_loop().time() + scaled(10)
        while not all((i, last) in [x[:2] for x in signals(p)] for i in of):
            assert asyncio.get_running_loop().time() < deadline, (of, signals(p))
            await asyncio.sleep(0.05)

    for reader in readers:  # the latest of each sender arrives on the other process
        await until_latest(reader, (1, 2))
    for i, sender in enumerate(senders, 1):  # and at the other sender, never its own
        await until_latest(sender, (3 - i,))
        assert {s for s, _, _ in signals(sender)} == {3 - i}
    got = [x for reader in readers for x in signals(reader)]
    assert any(kind == "broadcasts" for _, _, kind in got), "a pass carried several signals"
    # Throttled to PRESENCE_SIGNAL_RATE (10 a second) and the latest winning: fewer arrive
    # than were sent, in order per sender.
    for reader in readers:
        for i in (1, 2):
            ns = [n for s, n, _ in signals(reader) if s == i]
            assert ns == sorted(ns) and len(ns) < last
    print(f"\n[big room] reader frames: "
          f"{[m['type'] for m in readers[0].messages if m.get('room') == 'big']}")
    for p in (*senders, *readers):
        await p.ws.close()
