"""Limits of what a client may send and hold: the token bucket behind 4429, the tab cap."""

from __future__ import annotations

from .presence_messages import ERR_ROOM_FULL

#: The refusal of a join that would give a member more tabs in a room than
#: PRESENCE_MAX_TABS_PER_MEMBER (the error code, as room_full is for PRESENCE_MAX_MEMBERS).
ERR_TOO_MANY_TABS = "too_many_tabs"

#: The refusals of a join, by error code, and what the client is told.
JOIN_REFUSALS = {
    ERR_ROOM_FULL: "The room is full.",
    ERR_TOO_MANY_TABS: "This member has too many tabs in the room already.",
}


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


def over_tab_cap(entries: list[tuple[str, dict]], changes: list) -> set[tuple[str, str]]:
    """The (room, session) of ``entries`` a join with ``tab_cap`` did not add (refused)."""
    landed = {(c.room, c.meta.get("session")) for c in changes if c.joined}
    return {(room, meta["session"]) for room, meta in entries} - landed
