"""The presence tracker: one per event loop, between the consumers and the store.

It joins sessions to rooms, and batches everything else into one tick: metas
whose visibility changed, leaves whose grace ran out, one refresh call for all
local sessions plus the instance beat, the reaper when this process holds the
lease, and at most one ``presence_diff`` per room. Nothing here runs on the
ping->pong path.

When the store is unreachable, pings keep being answered; a warning is logged
once per outage, and when the store answers again every local session is put
back and sent a fresh ``presence_state``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any

from channels.layers import get_channel_layer
from django.utils.module_loading import import_string

from . import conf
from .instance import instance_id, started_at
from .loops import PerLoop, Ticking
from .scheduler import get_scheduler
from .signals import member_joined, member_left
from .store import CLOSED, BaseStore, Change, MemoryStore, StoreUnavailable, new_ref

logger = logging.getLogger(__name__)

_store: BaseStore | None = None


def get_store() -> BaseStore:
    """The process's presence store, built from the settings on first use."""
    global _store
    if _store is None:
        _store = _build_store()
    return _store


def reset_store() -> None:
    """Forget the store (settings changed); the next call builds a new one."""
    global _store
    _store = None


def _layer_config() -> dict:
    from django.conf import settings

    return (getattr(settings, "CHANNEL_LAYERS", None) or {}).get("default") or {}


def _build_store() -> BaseStore:
    choice = conf.get("PRESENCE_STORE")
    layer = _layer_config()
    if choice is None:
        choice = "redis" if str(layer.get("BACKEND", "")).startswith("channels_redis.") \
            else "memory"
    if choice == "memory":
        return MemoryStore()
    if choice == "redis":
        from .redis_store import RedisStore

        return RedisStore(
            redis_url(layer),
            prefix=conf.get("PRESENCE_KEY_PREFIX"),
            max_connections=conf.get("PRESENCE_REDIS_MAX_CONNECTIONS"),
            timeout=conf.get("PRESENCE_STORE_TIMEOUT"),
        )
    return import_string(choice)()


def redis_url(layer: dict) -> str | dict:
    """PRESENCE_REDIS_URL, else the first host of the channels_redis layer.

    A Sentinel host of the layer is returned as its spec, which the store follows.
    """
    url = conf.get("PRESENCE_REDIS_URL")
    if url:
        return url
    hosts = (layer.get("CONFIG") or {}).get("hosts") or [("localhost", 6379)]
    host = hosts[0]
    if isinstance(host, str):
        return host
    if isinstance(host, dict) and "address" in host:
        return host["address"]
    if isinstance(host, dict) and "sentinels" in host:
        return {k: host[k] for k in ("sentinels", "master_name", "sentinel_kwargs") if k in host}
    if isinstance(host, (list, tuple)):
        return f"redis://{host[0]}:{host[1]}"
    raise ValueError("Set PRESENCE_REDIS_URL: the channel layer's first host has no address.")


# Scheduler lag (seconds) above which presence broadcasts are spaced out.
LAGGING = 0.1
MAX_BROADCAST_BACKOFF = 16


def group_name(room: str) -> str:
    """The channel-layer group of a room's presence."""
    return f"presence.{room}"


class _Local:
    """A session of this process that takes part in presence."""

    __slots__ = ("consumer", "channel", "state", "metas", "refreshed", "leave_at", "reason")

    def __init__(self, consumer, channel: str, state, metas: dict[str, dict]):
        self.consumer = consumer
        self.channel = channel
        self.state = state
        self.metas = metas
        self.refreshed = 0.0
        self.leave_at: float | None = None  # set while in its leave grace
        self.reason = CLOSED


class Tracker(Ticking):
    """Presence of every session on one event loop."""

    def __init__(self, store: BaseStore | None = None, *, clock=time.monotonic):
        self.store = store or get_store()
        self.clock = clock
        self.instance = instance_id()
        self.started_ms = int(started_at() * 1000)
        self.local: dict[str, _Local] = {}
        self.dirty: set[str] = set()
        self.diffs: dict[str, dict[str, dict]] = {}
        self.unsynced_leaves: list[tuple[str, str, str]] = []
        self.unsynced_joins: set[str] = set()
        self.degraded = False
        self.rebuild_needed = False
        self.last_reap = 0.0
        self.last_broadcast = 0.0
        self.broadcast_backoff = 1
        self.stats = {"ticks": 0, "store_calls": 0, "broadcasts": 0, "outages": 0}

    # Settings, read each time so override_settings works -------------------

    @staticmethod
    def ttl_ms() -> int:
        return int(conf.get("PRESENCE_TTL") * 1000)

    @staticmethod
    def instance_ttl_ms() -> int:
        return int(conf.get("PRESENCE_INSTANCE_TTL") * 1000)

    def info(self) -> dict[str, Any]:
        layer = get_channel_layer()
        prefix = getattr(layer, "client_prefix", None)
        return {"host": socket.gethostname(), "pid": os.getpid(), "started_ms": self.started_ms,
                "channel_prefix": f"specific.{prefix}!" if prefix else ""}

    async def _call(self, coro):
        self.stats["store_calls"] += 1
        try:
            result = await asyncio.wait_for(coro, conf.get("PRESENCE_STORE_TIMEOUT"))
        except TimeoutError as exc:
            if get_scheduler().lag > LAGGING:
                # The event loop is behind, not the store: the call just could not
                # be served in time. Retry later without declaring an outage, whose
                # recovery would re-join every session of an already busy process.
                self.stats["slow_calls"] = self.stats.get("slow_calls", 0) + 1
                raise StoreUnavailable("presence store call late: the event loop lags") \
                    from exc
            self._outage(exc)
            raise StoreUnavailable(str(exc)) from exc
        except (StoreUnavailable, ConnectionError, OSError) as exc:
            self._outage(exc)
            raise StoreUnavailable(str(exc)) from exc
        if self.degraded:
            self.degraded = False
            self.rebuild_needed = True
            logger.warning("presence store is back: rebuilding presence from live sessions")
        return result

    def _outage(self, exc: Exception) -> None:
        if not self.degraded:
                self.degraded = True
                self.stats["outages"] += 1
                logger.warning("presence store unavailable, presence degraded: %s", exc)

    # Called by consumers -----------------------------------------------------

    async def join(self, consumer, state, rooms: list[str], extra: dict[str, Any]) -> None:
        """Join a session to its rooms and send it each room's presence_state."""
        layer = consumer.channel_layer
        metas = {room: self._meta(consumer, state, room, extra) for room in rooms}
        local = self.local[state.id] = _Local(consumer, consumer.channel_name, state, metas)
        local.refreshed = self.clock()
        self._ensure_running()
        for room in rooms:
            await layer.group_add(group_name(room), consumer.channel_name)
            try:
                self._queue(await self._call(self.store.join(room, metas[room], self.ttl_ms())))
                members = await self._call(self.store.members(room))
            except StoreUnavailable:
                # Joined (and sent its state) at a later tick, or by the rebuild
                # when the store comes back from an outage.
                self.unsynced_joins.add(state.id)
                continue
            await consumer._presence_send({"type": "presence_state", "room": room,
                                           "members": members})

    def _meta(self, consumer, state, room: str, extra: dict[str, Any]) -> dict[str, Any]:
        return {**extra, "session": state.id, "key": state.user_key, "tab": state.tab,
                "visible": state.visible if state.visible is not None else True,
                "online_at": int(state.opened_at * 1000), "instance": self.instance,
                "channel": consumer.channel_name, "ref": new_ref()}

    async def leave(self, state, reason: str, grace: bool) -> None:
        """A session ended: leave its rooms now, or after the leave grace."""
        local = self.local.get(state.id)
        if local is None or local.leave_at is not None:
            return
        for room in local.metas:
            try:
                await local.consumer.channel_layer.group_discard(group_name(room), local.channel)
            except Exception as exc:
                logger.warning("could not leave the group of room %s: %r", room, exc)
        local.reason = reason
        delay = conf.get("PRESENCE_LEAVE_GRACE") if grace else 0
        if delay:
            local.leave_at = self.clock() + delay
            return
        local.leave_at = self.clock()
        await self._finish_leave(local)

    def visibility_changed(self, state) -> None:
        """Mark a session's metas for an update at the next tick."""
        if state.id in self.local:
            self.dirty.add(state.id)
            self._ensure_running()

    # The tick ----------------------------------------------------------------

    async def step(self) -> None:
        """One tick of presence work."""
        self.stats["ticks"] += 1
        now = self.clock()
        try:
            await self._refresh(now)
            if self.rebuild_needed:
                await self._rebuild()
            await self._flush_joins()
            await self._flush_updates()
            await self._flush_leaves(now)
            await self._maybe_reap(now)
        except StoreUnavailable:
            pass
        await self._broadcast(now)

    async def _refresh(self, now: float) -> None:
        # Every local session is refreshed once a third of the TTL: one call per
        # tick at most, whatever the number of sessions.
        every = conf.get("PRESENCE_TTL") / 3
        due = [local for local in self.local.values() if now - local.refreshed >= every]
        entries = [(room, local.state.id) for local in due for room in local.metas]
        missing = await self._call(self.store.refresh(
            self.instance, self.instance_ttl_ms(), self.ttl_ms(), entries, self.info()))
        for local in due:
            local.refreshed = now
        for room, session in missing:
            local = self.local.get(session)
            if local is not None and local.leave_at is None:
                # Reaped while this process was away (a stall): put it back.
                local.metas[room] = {**local.metas[room], "ref": new_ref()}
                self._queue(await self._call(
                    self.store.join(room, local.metas[room], self.ttl_ms())))

    async def _rebuild(self) -> None:
        self.rebuild_needed = False
        self.unsynced_joins.clear()  # every live session is joined again below
        for room, session, reason in self.unsynced_leaves[:]:
            self._queue(await self._call(self.store.leave(room, session, reason)))
            self.unsynced_leaves.remove((room, session, reason))
        for local in list(self.local.values()):
            if local.leave_at is not None:
                continue
            for room, meta in local.metas.items():
                self._queue(await self._call(self.store.join(room, meta, self.ttl_ms())))
        for local in list(self.local.values()):
            if local.leave_at is not None:
                continue
            for room in local.metas:
                members = await self._call(self.store.members(room))
                await local.consumer._presence_send(
                    {"type": "presence_state", "room": room, "members": members})

    async def _flush_joins(self) -> None:
        for session_id in list(self.unsynced_joins):
            local = self.local.get(session_id)
            if local is not None and local.leave_at is None:
                for room, meta in local.metas.items():
                    self._queue(await self._call(self.store.join(room, meta, self.ttl_ms())))
                    members = await self._call(self.store.members(room))
                    await local.consumer._presence_send(
                        {"type": "presence_state", "room": room, "members": members})
            self.unsynced_joins.discard(session_id)

    async def _flush_updates(self) -> None:
        while self.dirty:
            local = self.local.get(self.dirty.pop())
            if local is None or local.leave_at is not None:
                continue
            for room, meta in local.metas.items():
                local.metas[room] = {**meta, "visible": bool(local.state.visible),
                                     "ref": new_ref()}
                self._queue(await self._call(
                    self.store.update(room, local.metas[room], self.ttl_ms())))

    async def _flush_leaves(self, now: float) -> None:
        for local in [x for x in self.local.values() if x.leave_at is not None]:
            if local.leave_at <= now:
                await self._finish_leave(local)

    async def _finish_leave(self, local: _Local) -> None:
        self.local.pop(local.state.id, None)
        self.dirty.discard(local.state.id)
        for room in local.metas:
            try:
                self._queue(await self._call(
                    self.store.leave(room, local.state.id, local.reason)))
            except StoreUnavailable:
                self.unsynced_leaves.append((room, local.state.id, local.reason))

    async def _maybe_reap(self, now: float) -> None:
        if now - self.last_reap < conf.get("PRESENCE_REAP_INTERVAL"):
            return
        self.last_reap = now
        # A reaper that dies hands over within the instance TTL at the latest.
        lease_ms = min(int(conf.get("PRESENCE_REAP_INTERVAL") * 3000), self.instance_ttl_ms())
        if not await self._call(self.store.acquire_lease("reaper", self.instance, lease_ms)):
            return
        result = await self._call(self.store.reap(self.instance_ttl_ms()))
        self._queue(result.changes)
        layer = get_channel_layer()
        for change in result.changes:
            channel = change.meta.get("channel")
            if channel:
                await layer.group_discard(group_name(change.room), channel)
        for lost in result.lost_instances:
            logger.warning("server instance %s is lost: %d presence entries reaped",
                           lost["id"], sum(1 for c in result.changes
                                           if c.meta.get("instance") == lost["id"]))
            if lost.get("channel_prefix"):
                await discard_channels(layer, lost["channel_prefix"])

    # Diffs -------------------------------------------------------------------

    def _queue(self, changes: list[Change]) -> None:
        refs_in = {c.meta.get("ref") for c in changes if c.joined}
        refs_out = {c.meta.get("ref") for c in changes if not c.joined}
        # The same version leaving and coming back (a rebuild) tells nobody anything.
        unchanged = refs_in & refs_out
        for change in changes:
            if change.meta.get("ref") in unchanged:
                continue
            diff = self.diffs.setdefault(change.room, {"joins": {}, "leaves": {}})
            side = diff["joins"] if change.joined else diff["leaves"]
            side.setdefault(change.key, {"metas": []})["metas"].append(change.meta)
            if change.member_changed:
                signal = member_joined if change.joined else member_left
                asyncio.ensure_future(self._signal(signal, change))
        if self.diffs:
            self._ensure_running()

    async def _signal(self, signal, change: Change) -> None:
        kwargs = {"room": change.room, "key": change.key, "meta": change.meta}
        if not change.joined:
            kwargs["reason"] = change.reason
        for receiver, result in await signal.asend_robust(sender=Tracker, **kwargs):
            if isinstance(result, Exception):
                logger.error("receiver %r of a presence signal raised", receiver,
                             exc_info=result)

    async def _broadcast(self, now: float) -> None:
        # Under overload (a reconnect storm: the loop's ticks run late) broadcasts
        # are spaced out, up to 16 times, so the fan-out of diffs (each recipient
        # costs a dispatch and a send) does not starve handshakes and heartbeats;
        # the diffs are merged meanwhile, nothing is lost.
        lag = get_scheduler().lag
        if lag > LAGGING:
            self.broadcast_backoff = min(self.broadcast_backoff * 2, MAX_BROADCAST_BACKOFF)
        elif lag < LAGGING / 2:
            self.broadcast_backoff = max(1, self.broadcast_backoff // 2)
        interval = conf.get("PRESENCE_BROADCAST_INTERVAL")
        if self.broadcast_backoff > 1:
            interval = (interval or conf.tick()) * self.broadcast_backoff
        if interval is not None and now - self.last_broadcast < interval:
            return
        self.last_broadcast = now
        diffs, self.diffs = self.diffs, {}
        layer = get_channel_layer()
        for room, diff in diffs.items():
            try:
                await layer.group_send(group_name(room), {
                    "type": "presence.diff", "room": room, **diff})
                self.stats["broadcasts"] += 1
            except Exception as exc:  # the layer is down too: the rebuild resends state
                logger.warning("presence_diff of room %s not broadcast: %r", room, exc)


async def discard_channels(layer, channel_prefix: str) -> int:
    """Remove every channel of a lost process from every group of a channels_redis layer.

    channels_redis never discards the channels of a worker that died, so they
    linger in groups until ``group_expiry`` (a day by default).
    """
    if not hasattr(layer, "ring_size") or not hasattr(layer, "connection"):
        return 0
    removed = 0
    prefix = channel_prefix.encode()
    for index in range(layer.ring_size):
        connection = layer.connection(index)
        async for key in connection.scan_iter(match=f"{layer.prefix}:group:*", count=500):
            stale = [m for m in await connection.zrange(key, 0, -1) if m.startswith(prefix)]
            if stale:
                removed += await connection.zrem(key, *stale)
    return removed


trackers: PerLoop[Tracker] = PerLoop(Tracker)


def get_tracker() -> Tracker:
    """The tracker of the running event loop, created on first use."""
    tracker = trackers.get()
    if tracker.store is not get_store():  # the settings changed the store
        tracker = Tracker()
        trackers.set(tracker)
    return tracker
