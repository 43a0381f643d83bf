"""Rate limits of what a client may send."""

from __future__ import annotations


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
