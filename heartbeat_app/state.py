"""The in-memory state of one live WebSocket session, shared by the mixin and the services."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from .limits import TokenBucket
from .protocol import LeaveReason

# Weight of the newest sample in the smoothed round-trip time (as TCP's SRTT).
RTT_SMOOTHING = 0.125


class SessionState:
    """What the server knows about one connection; no I/O of its own."""

    __slots__ = (
        "id", "tab", "user_key", "user_id", "path", "client", "user_agent", "channel",
        "rooms", "opened_at", "interval", "timeout", "phase",
        "last_heard", "probe_id", "probe_sent_at", "probe_sent_raw", "probes_sent",
        "last_probe_wall", "rtt", "rtt_avg", "visible", "frames_in", "bucket", "inbound",
        "closed", "close_code", "close_reason", "retry_after_ms", "zombie_at", "zombie_wall",
        "on_probe", "on_zombie", "extra",
    )

    def __init__(
        self,
        *,
        tab: str,
        interval: float | None,
        timeout: float | None,
        user_key: str = "",
        user_id: Any = None,
        path: str = "",
        client: str = "",
        user_agent: str = "",
        channel: str = "",
        opened_at: float = 0.0,
        bucket: TokenBucket | None = None,
        inbound: TokenBucket | None = None,
        on_probe: Callable[[str], Awaitable[Any]] | None = None,
        on_zombie: Callable[[float], Awaitable[Any]] | None = None,
    ):
        self.id = uuid.uuid4().hex
        self.tab = tab
        self.user_key = user_key  # the presence member key
        self.user_id = user_id  # the authenticated user's pk, else None
        self.path = path
        self.client = client
        self.user_agent = user_agent
        self.channel = channel  # the consumer's channel-layer name
        self.rooms: list[str] = []  # presence rooms the session is in
        self.opened_at = opened_at  # wall clock (epoch seconds)
        self.interval = interval
        self.timeout = timeout
        self.phase = 0.0
        # last_heard, probe_sent_at and zombie_at are on the scheduler's clock
        # (Scheduler.now: monotonic, less the stalls), not wall time.
        self.last_heard = 0.0
        self.probe_id: str | None = None
        self.probe_sent_at: float | None = None
        self.probe_sent_raw: float | None = None  # monotonic, for the round trip
        self.probes_sent = 0
        self.last_probe_wall: float | None = None
        self.rtt: float | None = None  # seconds, last probe answered
        self.rtt_avg: float | None = None  # seconds, smoothed
        self.visible: bool | None = None
        self.frames_in = 0
        self.bucket = bucket or TokenBucket(None, 0)  # heartbeat and presence frames
        self.inbound = inbound or TokenBucket(None, 0)  # every frame, the app's too
        self.closed = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.retry_after_ms: int | None = None  # the hint sent with the server's close
        self.zombie_at: float | None = None
        self.zombie_wall: float | None = None
        self.on_probe = on_probe
        self.on_zombie = on_zombie
        self.extra: dict[str, Any] = {}  # free for the app; the package never reads it

    @property
    def probe_outstanding(self) -> bool:
        """Whether a probe was sent and nothing has been heard since."""
        # Strictly after: a frame read at the same clock reading as the probe
        # decision was read after it, so it answers the probe.
        return self.probe_sent_at is not None and self.probe_sent_at > self.last_heard

    def next_probe(self, monotonic: float) -> str:
        """Number a new probe sent at ``monotonic`` (for its round trip); return its id."""
        self.probes_sent += 1
        self.probe_id = f"s{self.probes_sent}"
        self.probe_sent_raw = monotonic
        return self.probe_id

    def client_report(self, visible: bool | None, rtt_ms: float | None) -> bool:
        """Take what a ping reports; True if the visibility changed (a presence update)."""
        if rtt_ms is not None:
            self.record_rtt(rtt_ms / 1000)  # measured by a client that pings by itself
        if visible is None:
            return False
        # Metas start visible: a first "visible": true is no change, and makes no diff.
        changed = visible != (True if self.visible is None else self.visible)
        self.visible = visible
        return changed

    def record_rtt(self, seconds: float) -> None:
        """Record one measured round trip."""
        self.rtt = seconds
        if self.rtt_avg is None:
            self.rtt_avg = seconds
        else:
            self.rtt_avg += RTT_SMOOTHING * (seconds - self.rtt_avg)

    def __repr__(self) -> str:
        return f"<SessionState {self.id} tab={self.tab} closed={self.closed}>"


#: What a consumer hands the tracker for the frames meant for its client.
Send = Callable[[dict[str, Any]], Awaitable[Any]]


class LocalSession:
    """A session of this process that takes part in presence (the tracker's record)."""

    __slots__ = ("send", "layer", "state", "metas", "refreshed", "leave_at", "reason", "fetch")

    def __init__(self, send: Send, layer, state: SessionState, metas: dict[str, dict],
                 fetch: Any = None):
        self.send = send
        self.layer = layer
        self.state = state
        self.metas = metas
        self.fetch = fetch  # the consumer's fetch_presence(room, members) hook
        self.refreshed = 0.0
        self.leave_at: float | None = None  # set while in its leave grace
        self.reason = LeaveReason.CLOSED
