"""The presence store contract: what every backend (memory, Redis, yours) implements.

A room holds one *meta* per live session; metas of the same member *key* (a user's
pk, or an anonymous key the server issued) make one member, Phoenix style. A tab id
is scoped to its member: a join replaces the live meta of the same member *and* tab
(a reload), never another member's. Every meta version carries a
unique ``ref``, so a client can apply a diff's joins and leaves idempotently.

All times are milliseconds. Methods take an optional ``now_ms`` so tests can move
time; the Redis backend otherwise uses the server's ``TIME`` and the memory
backend its injectable clock.
"""

from __future__ import annotations

import inspect
import secrets
from dataclasses import dataclass, field
from typing import Any

from ..protocol import LeaveReason


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
    reason: LeaveReason | str = ""
    member_changed: bool = False  # the member's first meta joined, or its last left

    def __post_init__(self):
        if not self.joined:
            self.meta = {**self.meta, "reason": str(self.reason)}


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
                   now_ms: int | None = None, *, tab_cap: int | None = None) -> list[Change]:
        """Add a session's meta to a room. A live meta of the same member and tab is replaced.

        With ``tab_cap``, a meta that would give its member more than that many in the
        room is not added and nothing changes (``[]``): the count and the add are one
        step, so tabs joining at once on several processes never pass the cap. A meta
        that replaces one (the same session, or a reload of the same tab) always lands.
        """
        raise NotImplementedError

    async def join_many(self, entries: list[tuple[str, dict[str, Any]]], ttl_ms: int,
                        now_ms: int | None = None, *,
                        tab_cap: int | None = None) -> list[Change]:
        """``join()`` for many (room, meta) pairs, in one round trip where the store can."""
        changes: list[Change] = []
        capped = {} if tab_cap is None else {"tab_cap": tab_cap}  # a join of before takes none
        for room, meta in entries:
            changes += await self.join(room, meta, ttl_ms, now_ms, **capped)
        return changes

    async def join_capped(self, entries: list[tuple[str, dict[str, Any]]], ttl_ms: int,
                          tab_cap: int | None) -> list[Change]:
        """``join_many()`` with the tab cap, for stores written before it too (the tracker's call).

        A store whose ``join_many``/``join`` take no ``tab_cap`` (a subclass written
        before it) has the cap counted from ``members()`` before each join: correct
        for one process, not atomic across several.
        """
        if tab_cap is None:
            return await self.join_many(entries, ttl_ms)
        many = type(self).join_many
        if _takes_tab_cap(type(self).join if many is BaseStore.join_many else many):
            return await self.join_many(entries, ttl_ms, tab_cap=tab_cap)
        changes: list[Change] = []
        for room, meta in entries:  # one by one: each counts the ones before it
            if not await self._at_tab_cap(room, meta, tab_cap):
                changes += await self.join_many([(room, meta)], ttl_ms)
        return changes

    async def _at_tab_cap(self, room: str, meta: dict[str, Any], tab_cap: int) -> bool:
        metas = ((await self.members(room)).get(meta["key"]) or {}).get("metas", [])
        if any(m.get("session") == meta["session"] or m.get("tab") == meta.get("tab")
               for m in metas):
            return False  # it replaces one of them
        return len(metas) >= tab_cap

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

    async def counts(self, rooms: list[str]) -> dict[str, int]:
        """``count()`` of many rooms, in one round trip where the store can."""
        return {room: await self.count(room) for room in rooms}

    async def rooms(self) -> dict[str, int]:
        """Every room with members, and its number of members."""
        raise NotImplementedError

    async def rooms_of(self, key: str) -> list[str]:
        """Rooms in which a member key has at least one session."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release connections."""


def group_members(metas: list[dict[str, Any]]) -> dict[str, dict]:
    """Metas grouped into members: key -> {"metas": [...]}."""
    members: dict[str, dict] = {}
    for meta in metas:
        members.setdefault(meta["key"], {"metas": []})["metas"].append(meta)
    return members


def _takes_tab_cap(method) -> bool:
    try:
        return "tab_cap" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False
