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
import math
from collections import deque
from typing import Any

from channels.layers import get_channel_layer

from . import conf
from .announcer import Announcer, Fetch
from .conf import ms
from .instance import instance_id, instance_info
from .layers import concurrently, group_name
from .limits import ERR_TOO_MANY_TABS, over_tab_cap
from .presence_messages import ERR_ROOM_FULL
from .protocol import Encoded, LeaveReason
from .reaper import Reaper
from .rejoin import Rejoins
from .runtime import Runtime, Service, get_runtime
from .state import LocalSession, Send, SessionState
from .storecalls import StoreCalls
from .stores import BaseStore, StoreUnavailable, get_store, new_ref

logger = logging.getLogger(__name__)

# Seconds between two counts of the rooms with local sessions (a pass over every session).
ROOMS_EVERY = 5.0


class Tracker(Rejoins, Service):
    """Presence of every session on one event loop."""

    name = "tracker"

    def __init__(self, runtime: Runtime, store: BaseStore | None = None):
        super().__init__(runtime)
        self.store = store or get_store()
        self.instance = instance_id()
        self.local: dict[str, LocalSession] = {}
        # Sessions whose metas changed: the rooms whose state did, None if visibility did.
        self.dirty: dict[str, set[str | None]] = {}
        self.unsynced_leaves: list[tuple[str, str, str]] = []
        self.unsynced_joins: set[str] = set()
        self.calls = StoreCalls(runtime)
        self._call = self.calls.call
        self.announcer = Announcer(runtime, self.store, call=self._call,
                                   wake=self.ensure_running)
        self._queue = self.announcer.queue
        self.reaper = Reaper(self.store, self.instance, call=self._call, queue=self._queue,
                             beat=lambda: self._beat([]))
        self._joining: list[tuple] = []  # (local, rooms, new rooms, done)
        self._join_task: asyncio.Task | None = None
        self._beaten = False
        self._discards: list[tuple] = []  # (layer, group, channel) to leave at the next tick
        self.room_count = 0  # rooms with local sessions, counted every ROOMS_EVERY seconds
        self._rooms_at = float("-inf")
        # No pass over every session at each tick: the sessions in their leave grace, and
        # every session in the order of its last refresh, the oldest first, as (session id,
        # its refresh time). An entry whose session is gone, or refreshed or joined again
        # since, is dropped when reached, and holds nothing of the session meanwhile.
        self._leaving: dict[str, LocalSession] = {}
        self._refresh_order: deque[tuple[str, float]] = deque()
        self._refreshed_at = float("-inf")
        # A plain number: a scrape from another thread never walks self.local.
        self.metrics.rooms.set_function(lambda: self.room_count)

    @property
    def degraded(self) -> bool:
        """Whether the store is unreachable (presence degraded until it is back)."""
        return self.calls.degraded

    @property
    def diffs(self) -> dict[str, dict[str, dict]]:
        """Changes not broadcast yet, by room."""
        return self.announcer.diffs

    def pending(self) -> bool:
        """Whether sessions, their leaves or diffs still wait for a tick (a drain waits)."""
        return bool(self.local or self.announcer.diffs or self._discards)

    # Called by consumers -----------------------------------------------------

    async def join(self, state: SessionState, rooms: list[str], extra: dict[str, Any], *,
                   layer, send: Send, fetch: Fetch | None = None) -> dict[str, str]:
        """Join a session to rooms; returns once their states went out, with the rooms
        refused and why (room -> error code).

        Joins queue up and one task sends them all to the store in one round
        trip, reads each room once for all its joiners and sends their states.
        Under a storm the batches grow by themselves (every handshake of a loop
        iteration lands in the same one), and no handshake holds a pool
        connection of its own. The handshake itself is over by then (accept went
        first); only the rest of the consumer's connect() waits. A room the session
        is in already is not joined again; its state is sent again. A room at
        PRESENCE_MAX_MEMBERS is refused ``room_full``; a member's tab past
        PRESENCE_MAX_TABS_PER_MEMBER ``too_many_tabs``, counted by the store in the
        step that adds the meta.
        """
        local = self.local.get(state.id)
        if local is None or local.leave_at is not None:
            local = self.local[state.id] = LocalSession(send, layer, state, {}, fetch)
            local.refreshed = self.clock.monotonic()
            self._leaving.pop(state.id, None)
            self._refresh_order.append((state.id, local.refreshed))
        new = [room for room in rooms if room not in local.metas]
        for room in new:
            local.metas[room] = self._meta(state, extra)
        self.ensure_running()
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._joining.append((local, list(rooms), new, done))
        if self._join_task is None or self._join_task.done():
            self._join_task = loop.create_task(self._join_batches())
        return await done

    async def _join_batches(self) -> None:
        await asyncio.sleep(0)  # the joins of this loop iteration come along
        while self._joining:
            batch, self._joining = self._joining, []
            refused: dict[int, dict[str, str]] = {}
            try:
                refused = await self._join_batch([item[:3] for item in batch])
            except Exception:
                logger.exception("a presence join batch failed")
            finally:
                for local, _, _, done in batch:
                    if not done.done():
                        done.set_result(refused.get(id(local), {}))

    async def _join_batch(self, batch) -> dict[int, dict[str, str]]:
        live = [(local, rooms, new) for local, rooms, new in batch if self._still_joining(local)]
        involved = sorted({room for _, rooms, _ in live for room in rooms})
        refused: dict[int, dict[str, str]] = {}
        try:
            if not self._beaten:
                # The process beats before its first meta lands: one killed before its
                # first tick is then found lost (instance_lost), not left to expire.
                await self._beat([])
            counts = await self._call("count", self.store.counts(involved))
            cap = conf.get("PRESENCE_MAX_MEMBERS")
            for local, _, new in live:
                for room in new:
                    if cap is not None and counts[room] >= cap:
                        del local.metas[room]
                        refused.setdefault(id(local), {})[room] = ERR_ROOM_FULL
            entries = [(room, local.metas[room]) for local, _, new in live
                       for room in new if room in local.metas and self._still_joining(local)]
            changes = await self._call("join", self.store.join_capped(
                entries, ms("PRESENCE_TTL"), conf.get("PRESENCE_MAX_TABS_PER_MEMBER")))
            self._refuse_over_tab_cap(live, entries, changes, refused)
            await self._into_groups((local for local, _, _ in live if self._still_joining(local)),
                                    {id(local): new for local, _, new in live})
            self._queue(changes)
            for change in changes:
                if change.member_changed:
                    counts[change.room] += 1 if change.joined else -1
            wanted: dict[tuple[str, int], tuple[str, Fetch | None]] = {}
            for local, rooms, _ in live:
                for room in rooms:
                    if room in local.metas:
                        wanted.setdefault((room, id(local.fetch)), (room, local.fetch))
                    if local.fetch is not None:
                        self.announcer.fetchers.setdefault(room, local.fetch)
            read = await concurrently(self.announcer.room_state(room, counts[room], fetch)
                                      for room, fetch in wanted.values())
            states = dict(zip(wanted, map(Encoded, read), strict=True))
        except StoreUnavailable:
            # Joined (and sent their state) at a later tick, or by the rebuild
            # when the store comes back from an outage.
            self.unsynced_joins.update(local.state.id for local, _, _ in live)
            return refused
        for local, rooms, new in live:
            if not self._still_joining(local):
                # It ended while its join was on the way: the leave found nothing to
                # remove, so undo the join now that it has landed.
                for room in new:
                    self._queue(await self._call("leave", self.store.leave(
                        room, local.state.id, local.reason)))
                continue
            local.state.rooms = list(local.metas)
            for room in rooms:
                if room in local.metas:
                    await local.send(states[(room, id(local.fetch))])
        return refused

    def _refuse_over_tab_cap(self, live, entries, changes, refused) -> None:
        dropped = over_tab_cap(entries, changes)
        for local, room in [(lo, r) for lo, _, new in live for r in new
                            if (r, lo.state.id) in dropped]:
            del local.metas[room]
            refused.setdefault(id(local), {})[room] = ERR_TOO_MANY_TABS

    async def _into_groups(self, locals_, rooms_of: dict[int, list[str]] | None = None) -> None:
        # After the store has the metas (a refused session hears nothing of the room),
        # before the states are read; a join an outage held back, once it is written.
        await concurrently(
            local.layer.group_add(group_name(room), local.state.channel)
            for local in locals_
            for room in (local.metas if rooms_of is None else rooms_of[id(local)])
            if room in local.metas)

    def _still_joining(self, local: LocalSession) -> bool:
        return local.leave_at is None and self.local.get(local.state.id) is local

    async def leave_room(self, state: SessionState, room: str) -> bool:
        """The session leaves one room and stays connected; False if it was not in it."""
        local = self.local.get(state.id)
        if local is None or local.leave_at is not None or room not in local.metas:
            return False
        del local.metas[room]
        state.rooms = list(local.metas)
        try:
            await local.layer.group_discard(group_name(room), state.channel)
        except Exception as exc:
            logger.warning("could not leave the group of room %s: %r", room, exc)
        try:
            self._queue(await self._call("leave", self.store.leave(
                room, state.id, LeaveReason.LEFT)))
        except StoreUnavailable:
            self.unsynced_leaves.append((room, state.id, LeaveReason.LEFT))
        return True

    def update_state(self, state: SessionState, room: str, value: dict[str, Any]) -> bool:
        """Set the ``state`` of the session's meta in a room, sent at the next tick."""
        local = self.local.get(state.id)
        if local is None or local.leave_at is not None or room not in local.metas:
            return False
        local.metas[room] = {**local.metas[room], "state": value}
        self._mark(state.id, room)
        return True

    def _meta(self, state: SessionState, extra: dict[str, Any]) -> dict[str, Any]:
        return {**extra, "session": state.id, "key": state.user_key, "tab": state.tab,
                "visible": state.visible if state.visible is not None else True,
                "online_at": int(state.opened_at * 1000), "instance": self.instance,
                "channel": state.channel, "ref": new_ref()}

    async def leave(self, state: SessionState, reason: LeaveReason, grace: bool, after=0.0):
        """A session ended: leave its rooms now, or ``after`` seconds plus the leave grace."""
        local = self.local.get(state.id)
        if local is None or local.leave_at is not None:
            return
        # Out of the groups at the next tick, one after the other: thousands of sessions
        # ending at once would otherwise each take a layer connection at the same time
        # (channels_redis' pool raises MaxConnectionsError when it runs out).
        self._discards += [(local.layer, group_name(room), state.channel) for room in local.metas]
        local.reason = reason
        delay = conf.get("PRESENCE_LEAVE_GRACE") + after if grace else 0
        local.leave_at = self.clock.monotonic() + delay
        self._leaving[state.id] = local
        if not delay:
            await self._finish_leave(local)

    def visibility_changed(self, state: SessionState) -> None:
        """Mark a session's metas for an update at the next tick."""
        self._mark(state.id, None)

    def _mark(self, session_id: str, room: str | None) -> None:
        # Coalesced: whatever changes within a tick is one update per meta.
        if session_id not in self.local:
            return
        self.dirty.setdefault(session_id, set()).add(room)
        self.ensure_running()

    # The tick ----------------------------------------------------------------

    async def step(self, planned: float | None = None) -> None:
        """One tick of presence work."""
        now = self.clock.monotonic()
        try:
            await self._refresh(now)
            if self.calls.rebuild_needed:
                await self._rebuild()
            await self._flush_joins()
            await self._flush_updates()
            await self._flush_leaves(now)
            await self.reaper.maybe_reap(now)
        except StoreUnavailable:
            pass
        await self._flush_discards()
        await self.announcer.flush(now)
        if now - self._rooms_at >= ROOMS_EVERY:
            self._rooms_at = now
            self.room_count = len({room for local in self.local.values() for room in local.metas})

    async def _refresh(self, now: float) -> None:
        # Every local session is refreshed once a third of the TTL, in one call a tick. A
        # tick takes the sessions due up to its share of them all (a burst of joins is
        # spread over a period, and stays so), and all late by a period more whatever it.
        every = conf.get("PRESENCE_TTL") / 3
        elapsed = max(now - self._refreshed_at, conf.tick())
        share = math.ceil(len(self.local) * min(elapsed, every) / every)
        order, due, local_of = self._refresh_order, [], self.local.get
        while order:
            session_id, stamp = order[0]
            local = local_of(session_id)
            if local is not None and local.refreshed <= stamp:
                age = now - local.refreshed
                if age < every or (len(due) >= share and age < 2 * every):
                    break
                due.append(local)
            order.popleft()
        entries = [(room, local.state.id) for local in due for room in local.metas]
        try:
            missing = await self._beat(entries)
        except BaseException:
            order.extendleft((x.state.id, x.refreshed) for x in reversed(due))  # the next tick
            raise
        self._refreshed_at = now
        for local in due:
            local.refreshed = now
        order.extend((local.state.id, now) for local in due)
        back = []
        for room, session in missing:
            local = self.local.get(session)
            if local is not None and local.leave_at is None and room in local.metas:
                # Reaped while this process was away (a stall): put it back, all in one
                # call (a process found lost has thousands).
                local.metas[room] = {**local.metas[room], "ref": new_ref()}
                back.append((room, local.metas[room]))
        if back:
            self._queue(await self._call("join", self.store.join_many(back, ms("PRESENCE_TTL"))))

    async def _flush_discards(self) -> None:
        discards, self._discards = self._discards, []
        for n, (layer, group, channel) in enumerate(discards, 1):
            try:
                await layer.group_discard(group, channel)
            except Exception as exc:
                logger.warning("could not leave group %s: %r", group, exc)
            if n % 64 == 0:
                await asyncio.sleep(0)

    async def _beat(self, entries: list[tuple[str, str]]) -> list[tuple[str, str]]:
        missing = await self._call("refresh", self.store.refresh(
            self.instance, ms("PRESENCE_INSTANCE_TTL"), ms("PRESENCE_TTL"), entries,
            instance_info(get_channel_layer())))
        self._beaten = True
        return missing

    def _live(self) -> list[LocalSession]:
        return [local for local in self.local.values() if local.leave_at is None]

    async def _flush_updates(self) -> None:
        while self.dirty:
            session_id, marks = self.dirty.popitem()
            local = self.local.get(session_id)
            if local is None or local.leave_at is not None:
                continue
            visible = local.state.visible
            for room in list(local.metas) if None in marks else marks:
                meta = local.metas.get(room)
                if meta is None:
                    continue  # left the room meanwhile
                if room not in marks and visible in (None, meta["visible"]):
                    continue  # flipped and back within the tick: the room saw no change
                local.metas[room] = {**meta, "ref": new_ref(),
                                     "visible": meta["visible"] if visible is None else visible}
                self._queue(await self._call("update", self.store.update(
                    room, local.metas[room], ms("PRESENCE_TTL"))))

    async def _flush_leaves(self, now: float) -> None:
        for local in [x for x in self._leaving.values() if x.leave_at <= now]:
            await self._finish_leave(local)

    async def _finish_leave(self, local: LocalSession) -> None:
        self._leaving.pop(local.state.id, None)
        self.local.pop(local.state.id, None)
        self.dirty.pop(local.state.id, None)
        for room in local.metas:
            try:
                self._queue(await self._call("leave", self.store.leave(
                    room, local.state.id, local.reason)))
            except StoreUnavailable:
                self.unsynced_leaves.append((room, local.state.id, local.reason))

def get_tracker() -> Tracker:
    """The tracker of the running event loop's runtime, made on first use."""
    runtime = get_runtime()
    tracker = runtime.service(Tracker)
    if tracker.store is not get_store():  # the settings changed the store
        tracker = runtime.replace(Tracker(runtime))
    return tracker
