"""Limits of what a client may send and hold: the token bucket behind 4429, the tab cap."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

#: The refusal of a join that would give a member more tabs in a room than
#: PRESENCE_MAX_TABS_PER_MEMBER (the error code, as room_full is for PRESENCE_MAX_MEMBERS).
ERR_TOO_MANY_TABS = "too_many_tabs"


class TokenBucket:
    """A token bucket: ``rate`` frames per second sustained, ``burst`` at once; None: no limit."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float | None, burst: int):
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp: float | None = None

    def take(self, now: float) -> bool:
        """Spend one token at monotonic time ``now``; False when there is none."""
        if self.rate is None:
            return True
        if self.stamp is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


async def rooms_over_tab_cap(rooms: list[str], key: str, tab: str, session: str, *,
                             store, call: Callable[[str, Awaitable[Any]], Awaitable[Any]],
                             cap: int | None) -> list[str]:
    """The rooms of ``rooms`` where member ``key`` has ``cap`` tabs already (metas, any process).

    Neither ``session`` itself nor a meta of the same ``tab`` counts: a reload replaces
    that meta instead of adding one. One store read of the member's rooms; a room's
    members are read only where the member has a meta already. ``call(op, coro)``
    makes the store calls (the tracker's: timed, and StoreUnavailable when down).
    Joins on their way at the same moment are not counted, so concurrent tabs may
    pass the cap by the number of them.
    """
    if cap is None or not rooms:
        return []
    present = set(await call("rooms_of", store.rooms_of(key)))
    over = []
    for room in rooms:
        if room not in present:
            continue
        members = await call("members", store.members(room))
        metas = (members.get(key) or {}).get("metas", [])
        if sum(1 for meta in metas
               if meta.get("session") != session and meta.get("tab") != tab) >= cap:
            over.append(room)
    return over
