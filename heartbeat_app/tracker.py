"""The presence tracker: one per event loop, between the consumers and the store.

It joins sessions to rooms, and batches everything else into one tick: metas
whose visibility changed, leaves whose grace ran out, one refresh call for all
local sessions plus the instance beat, the reaper when this process holds the
lease, and at most one ``presence_diff`` per room. Nothing here runs on the
ping->pong path.

Consumers talk to it through what they hand over when joining: their channel
name, their channel layer and a ``send`` callable for the frames meant for
their client. When the store is unreachable, pings keep being answered; a
warning is logged once per outage, and when the store answers again every local
session is put back and sent a fresh ``presence_state``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from channels.layers import get_channel_layer

from . import conf, protocol
from .instance import instance_id, started_at
from .layers import group_name
from .protocol import LeaveReason
from .reaper import Reaper
from .runtime import Runtime, Service, get_runtime
from .signals import member_joined, member_left
from .state import SessionState
from .stores import BaseStore, Change, StoreUnavailable, get_store, new_ref

logger = logging.getLogger(__name__)

# Loop lag (seconds) above which presence broadcasts are spaced out.
LAGGING = 0.1
MAX_BROADCAST_BACKOFF = 16
# Rooms broadcast before the tick yields to the event loop once.
BROADCAST_BATCH = 64

Send = Callable[[dict[str, Any]], Awaitable[Any]]


class _Local:
    """A session of this process that takes part in presence."""

    __slots__ = ("send", "layer", "state", "metas", "refreshed", "leave_at", "reason")

    def __init__(self, send: Send, layer, state: SessionState, metas: dict[str, dict]):
        self.send = send
        self.layer = layer
        self.state = state
        self.metas = metas
        self.refreshed = 0.0
        self.leave_at: float | None = None  # set while in its leave grace
        self.reason = LeaveReason.CLOSED


class Tracker(Service):
    """Presence of every session on one event loop."""

    name = "tracker"

    def __init__(self, runtime: Runtime, store: BaseStore | None = None):
        super().__init__(runtime)
        self.store = store or get_store()
        self.instance = instance_id()
        self.started_ms = int(started_at() * 1000)
        self.local: dict[str, _Local] = {}
        self.dirty: set[str] = set()
        self.diffs: dict[str, dict[str, dict]] = {}
        self.unsynced_leaves: list[tuple[str, str, str]] = []
        self.unsynced_joins: set[str] = set()
        self.degraded = False
        self.rebuild_needed = False
        self.reaper = Reaper(self.store, self.instance, call=self._call, queue=self._queue)
        self.last_broadcast = 0.0
        self.broadcast_backoff = 1
        self._joining: list[tuple[_Local, asyncio.Future]] = []
        self._join_task: asyncio.Task | None = None
        self.metrics.rooms.set_function(
            lambda: len({room for local in self.local.values() for room in local.metas}))

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

    async def _call(self, op: str, coro):
        started = self.clock.monotonic()
        try:
            result = await asyncio.wait_for(coro, conf.get("PRESENCE_STORE_TIMEOUT"))
        except TimeoutError as exc:
            if self.runtime.lag > LAGGING:
                # The event loop is behind, not the store: the call just could not
                # be served in time. Retry later without declaring an outage, whose
                # recovery would re-join every session of an already busy process.
                self.metrics.store_calls_late.inc()
                raise StoreUnavailable("presence store call late: the event loop lags") \
                    from exc
            self._outage(exc)
            raise StoreUnavailable(str(exc)) from exc
        except (StoreUnavailable, ConnectionError, OSError) as exc:
            self._outage(exc)
            raise StoreUnavailable(str(exc)) from exc
        finally:
            self.metrics.store_seconds.observe(self.clock.monotonic() - started, op=op)
        if self.degraded:
            self.degraded = False
            self.rebuild_needed = True
            logger.warning("presence store is back: rebuilding presence from live sessions")
        return result

    def _outage(self, exc: Exception) -> None:
        if not self.degraded:
            self.degraded = True
            self.metrics.outages.inc()
            logger.warning("presence store unavailable, presence degraded: %s", exc)

    # Called by consumers -----------------------------------------------------

    async def join(self, state: SessionState, rooms: list[str], extra: dict[str, Any], *,
                   layer, send: Send) -> None:
        """Join a session to its rooms; returns once its presence_state went out.

        Joins queue up and one task sends them all to the store in one round
        trip, reads each room once for all its joiners and sends their states.
        Under a storm the batches grow by themselves (every handshake of a loop
        iteration lands in the same one), and no handshake holds a pool
        connection of its own. The handshake itself is over by then (accept went
        first); only the rest of the consumer's connect() waits.
        """
        metas = {room: self._meta(state, extra) for room in rooms}
        local = self.local[state.id] = _Local(send, layer, state, metas)
        local.refreshed = self.clock.monotonic()
        self.ensure_running()
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._joining.append((local, done))
        if self._join_task is None or self._join_task.done():
            self._join_task = loop.create_task(self._join_batches())
        await done

    async def _join_batches(self) -> None:
        await asyncio.sleep(0)  # the joins of this loop iteration come along
        while self._joining:
            batch, self._joining = self._joining, []
            try:
                await self._join_batch([local for local, _ in batch])
            except Exception:
                logger.exception("a presence join batch failed")
            finally:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)

    async def _join_batch(self, batch: list[_Local]) -> None:
        live = [local for local in batch if self._still_joining(local)]
        for local in live:
            for room in local.metas:
                await local.layer.group_add(group_name(room), local.state.channel)
        entries = [(room, meta) for local in live if self._still_joining(local)
                   for room, meta in local.metas.items()]
        try:
            self._queue(await self._call("join", self.store.join_many(entries, self.ttl_ms())))
            rooms = {room for room, _ in entries}
            members = {room: await self._call("members", self.store.members(room))
                       for room in sorted(rooms)}
        except StoreUnavailable:
            # Joined (and sent their state) at a later tick, or by the rebuild
            # when the store comes back from an outage.
            self.unsynced_joins.update(local.state.id for local in live)
            return
        for local in live:
            if not self._still_joining(local):
                # It ended while its join was on the way: the leave found nothing to
                # remove, so undo the join now that it has landed.
                for room in local.metas:
                    self._queue(await self._call("leave", self.store.leave(
                        room, local.state.id, local.reason)))
                continue
            for room in local.metas:
                await local.send(protocol.presence_state(
                    room, protocol.public_members(members[room])))

    def _still_joining(self, local: _Local) -> bool:
        return local.leave_at is None and self.local.get(local.state.id) is local

    def _meta(self, state: SessionState, extra: dict[str, Any]) -> dict[str, Any]:
        return {**extra, "session": state.id, "key": state.user_key, "tab": state.tab,
                "visible": state.visible if state.visible is not None else True,
                "online_at": int(state.opened_at * 1000), "instance": self.instance,
                "channel": state.channel, "ref": new_ref()}

    async def leave(self, state: SessionState, reason: LeaveReason, grace: bool) -> None:
        """A session ended: leave its rooms now, or after the leave grace."""
        local = self.local.get(state.id)
        if local is None or local.leave_at is not None:
            return
        for room in local.metas:
            try:
                await local.layer.group_discard(group_name(room), state.channel)
            except Exception as exc:
                logger.warning("could not leave the group of room %s: %r", room, exc)
        local.reason = reason
        delay = conf.get("PRESENCE_LEAVE_GRACE") if grace else 0
        if delay:
            local.leave_at = self.clock.monotonic() + delay
            return
        local.leave_at = self.clock.monotonic()
        await self._finish_leave(local)

    def visibility_changed(self, state: SessionState) -> None:
        """Mark a session's metas for an update at the next tick."""
        if state.id in self.local:
            self.dirty.add(state.id)
            self.ensure_running()

    # The tick ----------------------------------------------------------------

    async def step(self, planned: float | None = None) -> None:
        """One tick of presence work."""
        now = self.clock.monotonic()
        try:
            await self._refresh(now)
            if self.rebuild_needed:
                await self._rebuild()
            await self._flush_joins()
            await self._flush_updates()
            await self._flush_leaves(now)
            await self.reaper.maybe_reap(now)
        except StoreUnavailable:
            pass
        await self._broadcast(now)

    async def _refresh(self, now: float) -> None:
        # Every local session is refreshed once a third of the TTL: one call per
        # tick at most, whatever the number of sessions.
        every = conf.get("PRESENCE_TTL") / 3
        due = [local for local in self.local.values() if now - local.refreshed >= every]
        entries = [(room, local.state.id) for local in due for room in local.metas]
        missing = await self._call("refresh", self.store.refresh(
            self.instance, self.instance_ttl_ms(), self.ttl_ms(), entries, self.info()))
        for local in due:
            local.refreshed = now
        for room, session in missing:
            local = self.local.get(session)
            if local is not None and local.leave_at is None:
                # Reaped while this process was away (a stall): put it back.
                local.metas[room] = {**local.metas[room], "ref": new_ref()}
                self._queue(await self._call("join", self.store.join(
                    room, local.metas[room], self.ttl_ms())))

    async def _send_state(self, local: _Local, room: str) -> None:
        members = await self._call("members", self.store.members(room))
        await local.send(protocol.presence_state(room, protocol.public_members(members)))

    def _live(self) -> list[_Local]:
        return [local for local in self.local.values() if local.leave_at is None]

    async def _rebuild(self) -> None:
        self.rebuild_needed = False
        self.unsynced_joins.clear()  # every live session is joined again below
        for room, session, reason in self.unsynced_leaves[:]:
            self._queue(await self._call("leave", self.store.leave(room, session, reason)))
            self.unsynced_leaves.remove((room, session, reason))
        for local in self._live():
            for room, meta in local.metas.items():
                self._queue(await self._call("join", self.store.join(
                    room, meta, self.ttl_ms())))
        for local in self._live():
            for room in local.metas:
                await self._send_state(local, room)

    async def _flush_joins(self) -> None:
        for session_id in list(self.unsynced_joins):
            local = self.local.get(session_id)
            if local is not None and local.leave_at is None:
                for room, meta in local.metas.items():
                    self._queue(await self._call("join", self.store.join(
                        room, meta, self.ttl_ms())))
                    await self._send_state(local, room)
            self.unsynced_joins.discard(session_id)

    async def _flush_updates(self) -> None:
        while self.dirty:
            local = self.local.get(self.dirty.pop())
            if local is None or local.leave_at is not None:
                continue
            for room, meta in local.metas.items():
                local.metas[room] = {**meta, "visible": bool(local.state.visible),
                                     "ref": new_ref()}
                self._queue(await self._call("update", self.store.update(
                    room, local.metas[room], self.ttl_ms())))

    async def _flush_leaves(self, now: float) -> None:
        for local in [x for x in self.local.values() if x.leave_at is not None]:
            if local.leave_at <= now:
                await self._finish_leave(local)

    async def _finish_leave(self, local: _Local) -> None:
        self.local.pop(local.state.id, None)
        self.dirty.discard(local.state.id)
        for room in local.metas:
            try:
                self._queue(await self._call("leave", self.store.leave(
                    room, local.state.id, local.reason)))
            except StoreUnavailable:
                self.unsynced_leaves.append((room, local.state.id, local.reason))

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
            self.ensure_running()

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
        lag = self.runtime.lag
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
        for count, (room, diff) in enumerate(diffs.items(), 1):
            if count % BROADCAST_BATCH == 0:
                await asyncio.sleep(0)  # many rooms: let other traffic in between
            # Filtered once per room here, not once per recipient.
            message = protocol.presence_diff(room, protocol.public_members(diff["joins"]),
                                             protocol.public_members(diff["leaves"]))
            try:
                await layer.group_send(group_name(room), {**message, "type": "presence.diff"})
                self.metrics.broadcasts.inc()
            except Exception as exc:  # the layer is down too: the rebuild resends state
                logger.warning("presence_diff of room %s not broadcast: %r", room, exc)


def get_tracker() -> Tracker:
    """The tracker of the running event loop's runtime, made on first use."""
    runtime = get_runtime()
    tracker = runtime.service(Tracker)
    if tracker.store is not get_store():  # the settings changed the store
        tracker = runtime.replace(Tracker(runtime))
    return tracker
