"""Presence stores: one contract, a memory backend here and a Redis one in redis_store.py.

A room holds one *meta* per live session; metas of the same member *key* (a user's
pk, or ``anon:<tab>``) make one member, Phoenix style. Every meta version carries a
unique ``ref``, so a client can apply a diff's joins and leaves idempotently.

All times are milliseconds. Methods take an optional ``now_ms`` so tests can move
time; the Redis backend otherwise uses the server's ``TIME`` and the memory
backend its injectable clock.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Leave reasons carried by every leaving meta.
CLOSED = "closed"
TIMEOUT = "timeout"
EXPIRED = "expired"
INSTANCE_LOST = "instance_lost"
# Extensions of DESIGN.md's four reasons: a meta replaced by a newer version of
# the same session (visibility changed) or by a new session of the same tab.
UPDATE = "update"
REPLACED = "replaced"


def new_ref() -> str:
    """A short unique reference for one version of a meta."""
    return secrets.token_urlsafe(6)


@dataclass
class Change:
    """One meta joining or leaving a room, with member-level consequences."""

    room: str
    key: str
    meta: dict[str, Any]
    joined: bool  # False: a leave
    reason: str = ""
    member_changed: bool = False  # the member's first meta joined, or its last left

    def __post_init__(self):
        if not self.joined:
            self.meta = {**self.meta, "reason": self.reason}


@dataclass
class ReapResult:
    """What one reaper pass removed."""

    changes: list[Change] = field(default_factory=list)
    lost_instances: list[dict[str, Any]] = field(default_factory=list)


class StoreUnavailable(ConnectionError):
    """The store cannot be reached; presence is degraded until it returns."""


class BaseStore:
    """The contract every presence store implements (all methods async)."""

    async def join(self, room: str, meta: dict[str, Any], ttl_ms: int,
                   now_ms: int | None = None) -> list[Change]:
        """Add a session's meta to a room. A live meta of the same tab is replaced."""
        raise NotImplementedError

    async def leave(self, room: str, session: str, reason: str,
                    now_ms: int | None = None) -> list[Change]:
        """Remove a session's meta; nothing if it is already gone."""
        raise NotImplementedError

    async def update(self, room: str, meta: dict[str, Any], ttl_ms: int,
                     now_ms: int | None = None) -> list[Change]:
        """Replace a live session's meta with a new version (a leave and a join)."""
        raise NotImplementedError

    async def refresh(self, instance: str, instance_ttl_ms: int, ttl_ms: int,
                      entries: list[tuple[str, str]], info: dict[str, Any] | None = None,
                      now_ms: int | None = None) -> list[tuple[str, str]]:
        """Beat the instance and push back the expiry of ``entries`` (room, session).

        One round trip whatever the number of entries. Returns the entries the
        store no longer holds (reaped while this process was away), to rejoin.
        """
        raise NotImplementedError

    async def reap(self, instance_ttl_ms: int, now_ms: int | None = None) -> ReapResult:
        """Remove expired metas and every meta of instances silent past their TTL."""
        raise NotImplementedError

    async def acquire_lease(self, name: str, holder: str, ttl_ms: int) -> bool:
        """Take or renew a named lease; True while ``holder`` has it."""
        raise NotImplementedError

    async def members(self, room: str, now_ms: int | None = None) -> dict[str, dict]:
        """Live members of a room: key -> {"metas": [...]}."""
        raise NotImplementedError

    async def count(self, room: str, now_ms: int | None = None) -> int:
        """Number of members (keys, not sessions) in a room, until the reaper runs."""
        raise NotImplementedError

    async def rooms(self) -> dict[str, int]:
        """Every room with members, and its number of members."""
        raise NotImplementedError

    async def rooms_of(self, key: str) -> list[str]:
        """Rooms in which a member key has at least one session."""
        raise NotImplementedError

    async def instances(self, now_ms: int | None = None) -> list[dict[str, Any]]:
        """Known server instances: id, last beat (ms) and their info."""
        raise NotImplementedError

    async def instance_sessions(self, instance: str) -> list[tuple[str, str]]:
        """(room, session) pairs an instance holds."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release connections."""


def _group(metas: list[dict[str, Any]]) -> dict[str, dict]:
    members: dict[str, dict] = {}
    for meta in metas:
        members.setdefault(meta["key"], {"metas": []})["metas"].append(meta)
    return members


class MemoryStore(BaseStore):
    """The single-process store: a real backend kept in this process's memory."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        # room -> session -> (expires_ms, meta); plus per-room member counts and tabs.
        self._rooms: dict[str, dict[str, tuple[int, dict]]] = {}
        self._counts: dict[str, dict[str, int]] = {}
        self._tabs: dict[str, dict[str, str]] = {}
        self._instances: dict[str, tuple[int, dict]] = {}
        self._leases: dict[str, tuple[str, int]] = {}

    def _now(self, now_ms: int | None) -> int:
        return int(self.clock() * 1000) if now_ms is None else now_ms

    def _add(self, room: str, meta: dict, expires: int) -> bool:
        """Store a meta; True if its key was not a member of the room."""
        entries = self._rooms.setdefault(room, {})
        counts = self._counts.setdefault(room, {})
        first = False
        if meta["session"] not in entries:
            counts[meta["key"]] = counts.get(meta["key"], 0) + 1
            first = counts[meta["key"]] == 1
        entries[meta["session"]] = (expires, meta)
        self._tabs.setdefault(room, {})[meta["tab"]] = meta["session"]
        return first

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
        if tabs.get(meta["tab"]) == session:
            del tabs[meta["tab"]]
        if not entries:
            del self._rooms[room], self._counts[room], self._tabs[room]
        return [Change(room, meta["key"], meta, False, reason, last)]

    async def join(self, room, meta, ttl_ms, now_ms=None):
        now = self._now(now_ms)
        meta = dict(meta)
        changes: list[Change] = []
        old_session = self._tabs.get(room, {}).get(meta["tab"])
        replaced = None
        if old_session is not None and old_session != meta["session"]:
            replaced = self._rooms[room][old_session][1]
        elif meta["session"] in self._rooms.get(room, {}):
            replaced = self._rooms[room][meta["session"]][1]
        if replaced is not None and replaced["key"] == meta["key"]:
            # Same member: swap the meta without a member-level leave or join.
            reason = UPDATE if replaced["session"] == meta["session"] else REPLACED
            self._rooms[room].pop(replaced["session"])
            self._rooms[room][meta["session"]] = (now + ttl_ms, meta)
            self._tabs[room][meta["tab"]] = meta["session"]
            return [Change(room, replaced["key"], replaced, False, reason, False),
                    Change(room, meta["key"], meta, True, "", False)]
        if replaced is not None:
            changes += self._remove(room, replaced["session"], REPLACED)
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
                self._rooms[room][session] = (now + ttl_ms, held[1])
        return missing

    async def reap(self, instance_ttl_ms, now_ms=None):
        now = self._now(now_ms)
        result = ReapResult()
        lost = {i for i, (beat, _) in self._instances.items() if beat < now - instance_ttl_ms}
        for instance in sorted(lost):
            _, info = self._instances.pop(instance)
            result.lost_instances.append({"id": instance, **info})
        for room in list(self._rooms):
            for session, (expires, meta) in list(self._rooms.get(room, {}).items()):
                if meta.get("instance") in lost:
                    result.changes += self._remove(room, session, INSTANCE_LOST)
                elif expires <= now:
                    result.changes += self._remove(room, session, EXPIRED)
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
        return _group([m for exp, m in self._rooms.get(room, {}).values() if exp > now])

    async def count(self, room, now_ms=None):
        return len(self._counts.get(room, {}))

    async def rooms(self):
        return {room: len(counts) for room, counts in sorted(self._counts.items())}

    async def rooms_of(self, key):
        return sorted(room for room, counts in self._counts.items() if key in counts)

    async def instances(self, now_ms=None):
        return [{"id": i, "last_beat_ms": beat, **info}
                for i, (beat, info) in sorted(self._instances.items())]

    async def instance_sessions(self, instance):
        return sorted((room, s) for room, entries in self._rooms.items()
                      for s, (_, meta) in entries.items() if meta.get("instance") == instance)
