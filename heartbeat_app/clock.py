"""Time for the whole package: one object with a monotonic and a wall clock.

Every service of a runtime reads time from its clock, so a test that installs a
fake one moves every deadline, every timestamp on the wire and every recorded
moment together.
"""

from __future__ import annotations

import time


class Clock:
    """The system's clocks: ``monotonic()`` for deadlines, ``wall()`` for timestamps."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back, for measuring silence and deadlines."""
        return time.monotonic()

    def wall(self) -> float:
        """Seconds since the epoch, for timestamps on the wire and in the database."""
        return time.time()

    def wall_ms(self) -> int:
        """Milliseconds since the epoch, as the wire protocol carries them."""
        return int(self.wall() * 1000)


SYSTEM_CLOCK = Clock()
