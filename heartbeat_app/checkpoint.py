"""The checkpoint's pace: every live session's row once an interval, a slice at each tick.

Writing every row at each HEARTBEAT_CHECKPOINT_INTERVAL was a burst (rows built on
the event loop, one big statement on the database thread) that all other traffic
felt as a latency spike every interval at 5,000 sessions (issue #12). A ``Pace``
keeps the rows in the order of their last write, oldest first, and gives each
step the share the time since the last step is worth: N * elapsed / interval rows,
so a step at every tick writes about N * tick / interval of them and each row
comes round once an interval. A row whose last write is an interval old is due
whatever the share, so churn never holds one back. Pure: no Django, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

# A float sum of ticks must not push a row to the next step.
EPSILON = 1e-9


class Pace:
    """Which session rows a checkpoint step writes: a rotating queue, oldest write first."""

    def __init__(self) -> None:
        # Session id -> monotonic time its row was last written whole, oldest first.
        self._written: dict[str, float] = {}
        self._owed = 0.0  # rows the time that went by is worth, not yet written
        self._stepped: float | None = None

    def __len__(self) -> int:
        return len(self._written)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._written

    def __iter__(self):
        return iter(list(self._written))

    def add(self, session_id: str, now: float) -> None:
        """The session's row was written whole at ``now``: to the back of the queue."""
        self._written.pop(session_id, None)
        self._written[session_id] = now

    def discard(self, session_id: str) -> None:
        """The session ended; its close row is written apart."""
        self._written.pop(session_id, None)

    def clear(self) -> None:
        """Forget every session."""
        self._written.clear()
        self._owed = 0.0

    def due(self, now: float, interval: float) -> list[str]:
        """The ids whose rows this step writes; call ``wrote()`` once they are written.

        What a step that failed did not write stays owed, up to every row: the
        step after an outage catches up at once.
        """
        if self._stepped is not None:
            self._owed += len(self._written) * max(0.0, now - self._stepped) / interval
        self._stepped = now
        self._owed = min(self._owed, len(self._written))
        share = math.floor(self._owed + EPSILON)
        late = now - interval + EPSILON
        ids = []
        for session_id, written in self._written.items():
            if len(ids) >= share and written > late:
                break
            ids.append(session_id)
        return ids

    def wrote(self, session_ids: Iterable[str], now: float) -> None:
        """The rows of ``session_ids`` were written at ``now``."""
        count = 0
        for session_id in session_ids:
            count += 1
            if session_id in self._written:  # not if it closed during the write
                self.add(session_id, now)
        self._owed = max(0.0, self._owed - count)
