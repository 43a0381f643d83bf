"""The in-memory state of one live WebSocket session, shared by the mixin and the scheduler."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

# Weight of the newest sample in the smoothed round-trip time (as TCP's SRTT).
RTT_SMOOTHING = 0.125


class SessionState:
    """What the server knows about one connection; no I/O of its own."""

    __slots__ = (
        "id", "tab", "user_key", "path", "client", "user_agent", "opened_at",
        "interval", "timeout", "phase",
        "last_heard", "probe_id", "probe_sent_at", "probe_sent_raw", "probes_sent",
        "rtt", "rtt_avg", "visible", "frames_in",
        "closed", "close_code", "close_reason", "zombie_at",
        "on_probe", "on_zombie", "queued", "extra",
    )

    def __init__(
        self,
        *,
        tab: str,
        interval: float | None,
        timeout: float | None,
        user_key: str = "",
        path: str = "",
        client: str = "",
        user_agent: str = "",
        on_probe: Callable[[str], Awaitable[Any]] | None = None,
        on_zombie: Callable[[float], Awaitable[Any]] | None = None,
    ):
        self.id = uuid.uuid4().hex
        self.tab = tab
        self.user_key = user_key
        self.path = path
        self.client = client
        self.user_agent = user_agent
        self.opened_at = time.time()
        self.interval = interval
        self.timeout = timeout
        self.phase = 0.0
        # Times below are on the scheduler's clock (see Scheduler.now), not wall time.
        self.last_heard = 0.0
        self.probe_id: str | None = None
        self.probe_sent_at: float | None = None
        self.probe_sent_raw: float | None = None
        self.probes_sent = 0
        self.rtt: float | None = None  # seconds, last probe answered
        self.rtt_avg: float | None = None  # seconds, smoothed
        self.visible: bool | None = None
        self.frames_in = 0
        self.closed = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.zombie_at: float | None = None
        self.on_probe = on_probe
        self.on_zombie = on_zombie
        self.queued = False
        self.extra: dict[str, Any] = {}

    @property
    def probe_outstanding(self) -> bool:
        """Whether a probe was sent and nothing has been heard since."""
        # Strictly after: a frame read at the same clock reading as the probe
        # decision was read after it, so it answers the probe.
        return self.probe_sent_at is not None and self.probe_sent_at > self.last_heard

    def record_rtt(self, seconds: float) -> None:
        """Record one measured round trip."""
        self.rtt = seconds
        if self.rtt_avg is None:
            self.rtt_avg = seconds
        else:
            self.rtt_avg += RTT_SMOOTHING * (seconds - self.rtt_avg)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly snapshot, for signals, logs and the admin."""
        return {
            "session": self.id,
            "tab": self.tab,
            "user": self.user_key,
            "path": self.path,
            "client": self.client,
            "opened_at": self.opened_at,
            "rtt_ms": None if self.rtt is None else round(self.rtt * 1000, 3),
            "rtt_avg_ms": None if self.rtt_avg is None else round(self.rtt_avg * 1000, 3),
            "visible": self.visible,
            "probes_sent": self.probes_sent,
            "closed": self.closed,
            "close_code": self.close_code,
            "close_reason": self.close_reason,
        }

    def __repr__(self) -> str:
        return f"<SessionState {self.id} tab={self.tab} closed={self.closed}>"
