"""The single-process presence store: a real backend, kept in this process's memory."""

from __future__ import annotations

import heapq

from ..clock import SYSTEM_CLOCK, Clock
from ..protocol import LeaveReason
from .base import BaseStore, Change, ReapResult, group_members


def _tab(meta: dict) -> tuple[str, str]:
    # The same tab id from another member is another tab (it must never replace a meta).
    return meta["key"], meta["tab"]


class MemoryStore(BaseStore):
    """The single-process store: a real backend kept in this process's memory."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK):
        self.clock = clock
        # room -> session -> (expires_ms, meta); plus per-room member counts, and per-room
        # tabs keyed by (member key, tab id): a tab id means nothing outside its member.
        self._rooms: dict[str, dict[str, tuple[int, dict]]] = {}
        self._counts: dict[str, dict[str, int]] = {}
        self._tabs: dict[str, dict[tuple[str, str], str]] = {}
        self._instances: dict[str, tuple[int, dict]] = {}
        # The expiry index the reaper reads: (expires_ms, room, session), one per write of
        # an expiry. An entry whose meta has moved on since is dropped when it comes up.
        self._expiry: list[tuple[int, str, str]] = []
        self._leases: dict[str, tuple[str, int]] = {}

    def _now(self, now_ms: int | None) -> int:
        return self.clock.wall_ms() if now_ms is None else now_ms

    def _add(self, room: str, meta: dict, expires: int) -> bool:
        """Store a meta; True if its key was not a member of the room."""
        entries = self._rooms.setdefault(room, {})
        counts = self._counts.setdefault(room, {})
        first = False
        if meta["session"] not in entries:
            counts[meta["key"]] = counts.get(meta["key"], 0) + 1
            first = counts[meta["key"]] == 1
        self._hold(room, meta, expires)
        self._tabs.setdefault(room, {})[_tab(meta)] = meta["session"]
        return first

    def _hold(self, room: str, meta: dict, expires: int) -> None:
        self._rooms.setdefault(room, {})[meta["session"]] = (expires, meta)
        heapq.heappush(self._expiry, (expires, room, meta["session"]))

    def _remove(self, room: str, session: str, reason: str) -> list[Change]:
        entries = self._rooms.get(room, {})
        if session not in entries:
            return []
        _, meta = entries.pop(session)
        counts, tabs = self._counts[room], self._tabs[room]
        counts[meta["key"]] -= 1
        last = counts[meta["key"]] == 0
        if last:
            del counts[meta["key"]]
        if tabs.get(_tab(meta)) == session:
            del tabs[_tab(meta)]
        if not entries:
            del self._rooms[room], self._counts[room], self._tabs[room]
        return [Change(room, meta["key"], meta, False, reason, last)]

    async def join(self, room, meta, ttl_ms, now_ms=None, *, tab_cap=None):
        now = self._now(now_ms)
        meta = dict(meta)
        changes: list[Change] = []
        old_session = self._tabs.get(room, {}).get(_tab(meta))
        replaced = None
        if old_session is not None and old_session != meta["session"]:
            replaced = self._rooms[room][old_session][1]
        elif meta["session"] in self._rooms.get(room, {}):
            replaced = self._rooms[room][meta["session"]][1]
        if replaced is not None and replaced["key"] == meta["key"]:
            # Same member: swap the meta without a member-level leave or join.
            same = replaced["session"] == meta["session"]
            reason = LeaveReason.UPDATE if same else LeaveReason.REPLACED
            self._rooms[room].pop(replaced["session"])
            self._hold(room, meta, now + ttl_ms)
            self._tabs[room][_tab(meta)] = meta["session"]
            return [Change(room, replaced["key"], replaced, False, reason, False),
                    Change(room, meta["key"], meta, True, "", False)]
        if replaced is not None:
            changes += self._remove(room, replaced["session"], LeaveReason.REPLACED)
        elif tab_cap is not None and self._counts.get(room, {}).get(meta["key"], 0) >= tab_cap:
            return []  # the member has tab_cap tabs here already
        first = self._add(room, meta, now + ttl_ms)
        changes.append(Change(room, meta["key"], meta, True, "", first))
        return changes

    async def leave(self, room, session, reason, now_ms=None):
        return self._remove(room, session, reason)

    async def update(self, room, meta, ttl_ms, now_ms=None):
        if meta["session"] not in self._rooms.get(room, {}):
            return []
        return await self.join(room, meta, ttl_ms, now_ms)

    async def refresh(self, instance, instance_ttl_ms, ttl_ms, entries, info=None,
                      now_ms=None):
        now = self._now(now_ms)
        previous = self._instances.get(instance, (0, {}))[1]
        self._instances[instance] = (now, {**previous, **(info or {})})
        missing = []
        for room, session in entries:
            held = self._rooms.get(room, {}).get(session)
            if held is None:
                missing.append((room, session))
            else:
                self._hold(room, held[1], now + ttl_ms)
        return missing

    async def reap(self, instance_ttl_ms, now_ms=None):
        now = self._now(now_ms)
        result = ReapResult()
        lost = {i for i, (beat, _) in self._instances.items() if beat < now - instance_ttl_ms}
        for instance in sorted(lost):
            _, info = self._instances.pop(instance)
            result.lost_instances.append({"id": instance, **info})
        if lost:  # rare: a scan of every meta only when an instance was lost
            for room in list(self._rooms):
                for session, (_, meta) in list(self._rooms.get(room, {}).items()):
                    if meta.get("instance") in lost:
                        result.changes += self._remove(room, session,
                                                       LeaveReason.INSTANCE_LOST)
        while self._expiry and self._expiry[0][0] <= now:
            expires, room, session = heapq.heappop(self._expiry)
            held = self._rooms.get(room, {}).get(session)
            if held is not None and held[0] == expires:
                result.changes += self._remove(room, session, LeaveReason.EXPIRED)
        return result

    async def acquire_lease(self, name, holder, ttl_ms):
        now = self._now(None)
        current = self._leases.get(name)
        if current is None or current[0] == holder or current[1] <= now:
            self._leases[name] = (holder, now + ttl_ms)
            return True
        return False

    async def members(self, room, now_ms=None):
        now = self._now(now_ms)
        return group_members([m for exp, m in self._rooms.get(room, {}).values() if exp > now])

    async def count(self, room, now_ms=None):
        return len(self._counts.get(room, {}))

    async def rooms(self):
        return {room: len(counts) for room, counts in sorted(self._counts.items())}

    async def rooms_of(self, key):
        return sorted(room for room, counts in self._counts.items() if key in counts)
