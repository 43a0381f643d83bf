"""The tracker's way back from a store outage: every live session's metas written again
(a rebuild), and the joins the store could not take written at last, the tab cap counted
in both, as at a join."""

from __future__ import annotations

from typing import Any

from . import conf
from .conf import ms
from .limits import ERR_TOO_MANY_TABS, JOIN_REFUSALS, over_tab_cap
from .presence_messages import refusal
from .protocol import Encoded
from .state import LocalSession

# Sessions whose metas one store call writes again.
JOIN_SLICE = 500


class Rejoins:
    """A part of the Tracker (tracker.py), on its store calls, local sessions and groups."""

    async def _rebuild(self) -> None:
        self.calls.rebuild_needed = False
        unsynced, self.unsynced_joins = self.unsynced_joins, set()  # all joined again below
        done = 0  # the replayed prefix, dropped in one slice: O(n), not a remove() per leave
        try:
            for room, session, reason in self.unsynced_leaves[:]:
                self._queue(await self._call("leave", self.store.leave(room, session, reason)))
                done += 1
        finally:
            del self.unsynced_leaves[:done]
        # The sessions whose metas the store had first, then those whose join it held
        # back: these are counted against the tab cap as at their join.
        held = [local for local in self._live() if local.state.id in unsynced]
        await self._join_capped([x for x in self._live() if x.state.id not in unsynced])
        await self._join_capped(held)
        await self._into_groups(held)
        await self._send_states(self._live())

    async def _flush_joins(self) -> None:
        ids = list(self.unsynced_joins)
        held = [local for local in map(self.local.get, ids)
                if local is not None and local.leave_at is None]
        if held:
            await self._join_capped(held)
            await self._into_groups(held)
            await self._send_states(held)
        self.unsynced_joins.difference_update(ids)

    async def _send_states(self, locals_: list[LocalSession]) -> None:
        """Each room's state read once and sent to every one of ``locals_`` in it: one
        read of N members per session of a room of N was N squared (a rebuild of a room
        of 10,000 did not end)."""
        rooms: dict[tuple[str, int], tuple[str, Any, list[LocalSession]]] = {}
        for local in locals_:
            for room in local.metas:
                rooms.setdefault((room, id(local.fetch)), (room, local.fetch, []))[2].append(local)
        for room, fetch, members in rooms.values():
            count = await self._call("count", self.store.count(room))
            state = Encoded(await self.announcer.room_state(room, count, fetch))
            for local in members:
                if room in local.metas:  # not if it left meanwhile
                    await local.send(state)

    async def _join_capped(self, locals_: list[LocalSession]) -> None:
        """Write the metas of sessions again (a rebuild) or at last (a join held back), the
        tab cap counted; a tab over it leaves the room and is told, as at its join."""
        for start in range(0, len(locals_), JOIN_SLICE):
            part = locals_[start:start + JOIN_SLICE]
            entries = [(room, meta) for local in part for room, meta in local.metas.items()]
            if not entries:
                continue
            changes = await self._call("join", self.store.join_capped(
                entries, ms("PRESENCE_TTL"), conf.get("PRESENCE_MAX_TABS_PER_MEMBER")))
            self._queue(changes)
            dropped = over_tab_cap(entries, changes)
            for local in part:
                for room in [r for r in local.metas if (r, local.state.id) in dropped]:
                    del local.metas[room]
                    await local.send(refusal(ERR_TOO_MANY_TABS, room,
                                             JOIN_REFUSALS[ERR_TOO_MANY_TABS]))
                local.state.rooms = list(local.metas)
