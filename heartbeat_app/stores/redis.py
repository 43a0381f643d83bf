"""The Redis presence store: per room a sorted set scored by expiry plus hashes of metas.

Keys, under the prefix P (PRESENCE_KEY_PREFIX):

- ``P:r:<room>:z`` sorted set, session -> expiry (ms, from Redis ``TIME``)
- ``P:r:<room>:m`` hash, session -> meta (JSON)
- ``P:r:<room>:k`` hash, member key -> number of its sessions in the room
- ``P:r:<room>:t`` hash, "tab\\nmember key" -> session (a reload of the tab replaces its
  meta; the same tab id from another member is another tab)
- ``P:rooms`` set of rooms with members; ``P:u:<key>`` hash, room -> sessions of that key
- ``P:x`` sorted set, "room\\nsession" -> expiry: the global expiry index the reaper
  reads, so a pass costs what expired, not the number of rooms; ``P:xv`` says the
  rooms written before the index are in it
- ``P:i`` sorted set, instance -> last beat; ``P:i:<id>`` the instance key, with a TTL;
  ``P:i:<id>:s`` set of "room\\nsession" it holds; ``P:instinfo`` hash, instance -> info

Every multi-step change is one Lua script, so concurrent processes never see half
of it. Scripts touch keys they compute, so Redis Cluster is not supported;
a single primary, alone or behind Sentinel, is.
"""

from __future__ import annotations

import asyncio
import json
import weakref

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .base import BaseStore, Change, ReapResult, StoreUnavailable, group_members
from .redis_scripts import SCRIPTS

_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)
# Expired metas one reap script removes at most, and the calls of one pass: a pass
# removes up to 100,000 and leaves the rest to the next.
REAP_BATCH = 1000
REAP_CALLS = 100


class RedisStore(BaseStore):
    """Presence in Redis, shared by every process; one client per event loop."""

    def __init__(self, url: str | dict, prefix: str = "heartbeat", *,
                 max_connections: int = 50, timeout: float = 2.0):
        # ``url``: a redis:// URL, or a Sentinel spec as channels_redis takes it:
        # {"sentinels": [(host, port), ...], "master_name": "...", "sentinel_kwargs": {...}}.
        self.url = url
        self.prefix = prefix
        self.max_connections = max_connections
        self.timeout = timeout
        self._clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _client(self) -> tuple[aioredis.Redis, dict]:
        loop = asyncio.get_running_loop()
        entry = self._clients.get(loop)
        if entry is None:
            # A blocking pool waits for a free connection instead of raising
            # MaxConnectionsError, so a connection storm queues instead of failing.
            client = aioredis.Redis(connection_pool=self._pool())
            scripts = {name: client.register_script(src) for name, src in SCRIPTS.items()}
            entry = self._clients[loop] = (client, scripts)
        return entry

    async def _run(self, name: str, args: list, keys: list | None = None):
        _, scripts = self._client()
        try:
            return await scripts[name](keys=keys or [], args=[self.prefix, *args]
                                       if name != "lease" else args)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def _call(self, method: str, *args):
        client, _ = self._client()
        try:
            return await getattr(client, method)(*args)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(str(exc)) from exc

    @staticmethod
    def _now_arg(now_ms: int | None) -> str:
        return "" if now_ms is None else str(int(now_ms))

    def _join_changes(self, room: str, reply: list) -> list[Change]:
        if len(reply) < 5:
            return []  # not present (an update), or over the tab cap
        old_raw, reason, old_last, new_raw, first = reply
        changes = []
        new = json.loads(new_raw)
        if old_raw:
            old = json.loads(old_raw)
            changes.append(Change(room, old["key"], old, False, reason, bool(int(old_last))))
        changes.append(Change(room, new["key"], new, True, "", bool(int(first))))
        return changes

    async def join(self, room, meta, ttl_ms, now_ms=None, *, tab_cap=None):
        reply = await self._run("join", [room, json.dumps(meta), int(ttl_ms),
                                         self._now_arg(now_ms), "0", _cap_arg(tab_cap)])
        return self._join_changes(room, reply)

    async def join_many(self, entries, ttl_ms, now_ms=None, *, tab_cap=None):
        if not entries:
            return []
        client, scripts = self._client()
        try:
            # One pipeline of script calls: one round trip, one pool connection.
            async with client.pipeline(transaction=False) as pipe:
                for room, meta in entries:
                    await scripts["join"](keys=[], args=[
                        self.prefix, room, json.dumps(meta), int(ttl_ms),
                        self._now_arg(now_ms), "0", _cap_arg(tab_cap)], client=pipe)
                replies = await pipe.execute()
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(str(exc)) from exc
        changes = []
        for (room, _), reply in zip(entries, replies, strict=True):
            changes += self._join_changes(room, reply)
        return changes

    async def update(self, room, meta, ttl_ms, now_ms=None):
        reply = await self._run("join", [room, json.dumps(meta), int(ttl_ms),
                                         self._now_arg(now_ms), "1"])
        return self._join_changes(room, reply)

    async def leave(self, room, session, reason, now_ms=None):
        reply = await self._run("leave", [room, session])
        if not reply:
            return []
        meta = json.loads(reply[0])
        return [Change(room, meta["key"], meta, False, reason, bool(int(reply[1])))]

    async def refresh(self, instance, instance_ttl_ms, ttl_ms, entries, info=None,
                      now_ms=None):
        args = [instance, int(instance_ttl_ms), int(ttl_ms), self._now_arg(now_ms),
                json.dumps(info) if info else ""]
        for room, session in entries:
            args += [room, session]
        flat = await self._run("refresh", args)
        return list(zip(flat[::2], flat[1::2], strict=True))

    async def reap(self, instance_ttl_ms, now_ms=None):
        result = ReapResult()
        # Each call removes at most REAP_BATCH expired metas, so no script holds Redis
        # for long; the pass goes on while a call says more are due.
        for _ in range(REAP_CALLS):
            flat = await self._run("reap", [int(instance_ttl_ms), self._now_arg(now_ms),
                                            REAP_BATCH])
            if not self._reap_records(flat, result):
                break
        return result

    @staticmethod
    def _reap_records(flat: list, result: ReapResult) -> bool:
        """Add one reap call's records to ``result``; True if more expired metas are due."""
        i = 0
        while i < len(flat):
            if flat[i] == "M":
                return True
            if flat[i] == "I":
                info = json.loads(flat[i + 2]) if flat[i + 2] else {}
                result.lost_instances.append({"id": flat[i + 1], **info})
                i += 3
            else:
                meta = json.loads(flat[i + 2])
                result.changes.append(Change(flat[i + 1], meta["key"], meta, False,
                                             flat[i + 4], bool(int(flat[i + 3]))))
                i += 5
        return False

    async def acquire_lease(self, name, holder, ttl_ms):
        key = f"{self.prefix}:lease:{name}"
        return bool(await self._run("lease", [holder, int(ttl_ms)], keys=[key]))

    async def members(self, room, now_ms=None):
        raws = await self._run("members", [room, self._now_arg(now_ms)])
        return group_members([json.loads(raw) for raw in raws if raw])

    async def count(self, room, now_ms=None):
        return int(await self._call("hlen", f"{self.prefix}:r:{room}:k"))

    async def counts(self, rooms):
        client, _ = self._client()
        try:
            async with client.pipeline(transaction=False) as pipe:
                for room in rooms:
                    pipe.hlen(f"{self.prefix}:r:{room}:k")
                replies = await pipe.execute()
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(str(exc)) from exc
        return {room: int(n) for room, n in zip(rooms, replies, strict=True)}

    async def rooms(self):
        client, _ = self._client()
        try:
            names = sorted(await client.smembers(f"{self.prefix}:rooms"))
            async with client.pipeline(transaction=False) as pipe:
                for room in names:
                    pipe.hlen(f"{self.prefix}:r:{room}:k")
                counts = await pipe.execute()
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(str(exc)) from exc
        return {room: int(n) for room, n in zip(names, counts, strict=True) if int(n)}

    async def rooms_of(self, key):
        return sorted(await self._call("hkeys", f"{self.prefix}:u:{key}"))

    def _pool(self):
        options = {"socket_timeout": self.timeout, "socket_connect_timeout": self.timeout,
                   "decode_responses": True}
        if isinstance(self.url, dict):
            from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

            spec = self.url
            sentinel = Sentinel(spec["sentinels"], sentinel_kwargs=spec.get("sentinel_kwargs"),
                                socket_timeout=self.timeout)
            # Asks the sentinels for the primary on every new connection, so a
            # failover is followed. This pool raises when full instead of waiting:
            # size it for storms (PRESENCE_REDIS_MAX_CONNECTIONS).
            return SentinelConnectionPool(spec["master_name"], sentinel,
                                          max_connections=self.max_connections, **options)
        # A blocking pool waits for a free connection instead of raising
        # MaxConnectionsError, so a connection storm queues instead of failing.
        return aioredis.BlockingConnectionPool.from_url(
            self.url, max_connections=self.max_connections, timeout=self.timeout, **options)

    def fork(self) -> RedisStore:
        """A store with clients of its own, for one-shot use from sync code."""
        return RedisStore(self.url, self.prefix, max_connections=self.max_connections,
                          timeout=self.timeout)

    async def close(self):
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        entry = self._clients.pop(loop, None)
        if entry is not None:
            await entry[0].aclose()
            await entry[0].connection_pool.disconnect()

    async def flush(self) -> None:
        """Delete every key under the prefix (tests and resets only)."""
        client, _ = self._client()
        keys = [key async for key in client.scan_iter(match=f"{self.prefix}:*", count=500)]
        if keys:
            await client.delete(*keys)


def _cap_arg(tab_cap: int | None) -> str:
    return "" if tab_cap is None else str(int(tab_cap))
