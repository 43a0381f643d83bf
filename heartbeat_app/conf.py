"""Settings of heartbeat_app: flat Django settings read lazily, with defaults.

Every value is read on first use and cached; the cache is cleared on
``setting_changed`` so ``override_settings`` works in tests.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed
from django.dispatch import receiver

DEFAULTS: dict[str, Any] = {
    # Seconds of inbound silence before the server probes a connection; None: never.
    "HEARTBEAT_INTERVAL": 25.0,
    # Seconds after that before a silent connection is closed with 4408; None: never.
    "HEARTBEAT_TIMEOUT": 10.0,
    # Seconds between scheduler ticks; bounds how late a probe or close can be.
    "HEARTBEAT_TICK": 1.0,
    # Seconds: probes of a session are delayed by a random phase up to this, so
    # connections opened together are not probed together. None: timeout / 4.
    "HEARTBEAT_PHASE_SPREAD": None,
    # Seconds: idle timeout of the proxy in front of the server, for the 75 % rule check.
    "HEARTBEAT_PROXY_IDLE_TIMEOUT": None,
    # Heartbeat frames (pings, pongs, bad frames) per second a session may send,
    # sustained, and the burst allowed above that; None: no limit. Over it: close 4429.
    "HEARTBEAT_RATE_LIMIT": 20.0,
    "HEARTBEAT_RATE_BURST": 60,
    # Frames per second of any kind (the app's own too) a session may send, sustained, and
    # the burst above that; None: no limit. Over it: close 4429, the frame unread.
    "HEARTBEAT_MESSAGE_RATE": 50.0,
    "HEARTBEAT_MESSAGE_BURST": 200,
    # Frames waiting for the consumer's handlers above which the session is closed 4429.
    "HEARTBEAT_INBOX_MAX": 500,
    # Milliseconds a client is told to wait after a 4429 close.
    "HEARTBEAT_RETRY_AFTER_MS": 5000,
    # Handshakes in flight per process (admitted, not yet accepted or closed) above which
    # AdmissionMiddleware refuses new ones with 4013 and a paced retry hint; None: no cap.
    "HEARTBEAT_MAX_HANDSHAKES": 128,
    # Handshakes per second a process admits, sustained; None: only the in-flight cap.
    "HEARTBEAT_CONNECT_RATE": None,
    # Keep a handshake's admission slot until its presence joins are done, not only until
    # accept: fewer tabs greeted before their presence lands, but refusals under load.
    "HEARTBEAT_HOLD_UNTIL_JOINED": False,
    # Milliseconds: the shortest retry hint a refused or drained client is given.
    "HEARTBEAT_RETRY_MIN_MS": 500,
    # Seconds over which a draining process spreads its clients' return (their retry hints),
    # at the least; each drained tab's presence is kept for its hint plus the leave grace.
    "HEARTBEAT_DRAIN_SPREAD": 2.0,
    # Sessions a second the other processes take back from a draining one: the spread
    # grows to sessions / rate, within HEARTBEAT_DRAIN_TIMEOUT (check W013); None: fixed.
    "HEARTBEAT_DRAIN_RATE": 300.0,
    # Seconds a drain may take in all before the server's own shutdown goes on.
    "HEARTBEAT_DRAIN_TIMEOUT": 20.0,
    # A drain first closes the process's listening sockets, so a proxy sends new
    # connections (and returning tabs) to the other processes at once.
    "HEARTBEAT_DRAIN_STOP_LISTENING": True,
    # Seconds Daphne waits for a client to answer a close frame before it resets the
    # connection (autobahn's default is 1, counted from queuing the frame: a busy loop
    # then resets closes whose hint is still unsent). None leaves the server's own.
    "HEARTBEAT_CLOSE_HANDSHAKE_TIMEOUT": 5.0,
    # Under Daphne: its once-a-second passes over every connection (application_checker,
    # timeout_checker) done a tenth at a time, every tenth of a second (daphne_pace.py).
    "HEARTBEAT_PACE_DAPHNE": True,
    # Drain on SIGTERM (close clients with 4001 and a hint, flush presence and rows).
    "HEARTBEAT_DRAIN_ON_SIGTERM": True,
    # The garbage collector, set once per process when its first session opens: "auto"
    # freezes the start-up's objects and raises the thresholds for a server (collector.py);
    # a tuple (gen0, gen1, gen2) sets exactly those; None leaves Python's collector alone.
    "HEARTBEAT_GC_THRESHOLD": "auto",
    # Write a row per session for the admin (on open, on close, and in bulk checkpoints).
    "HEARTBEAT_RECORD_SESSIONS": True,
    # One log line per session open and close on heartbeat_app.sessions: "kv", "json" or
    # None (off).
    "HEARTBEAT_SESSION_LOG": None,
    # Record anonymous visitors' sessions too; False keeps only signed-in users' rows.
    "HEARTBEAT_RECORD_ANONYMOUS": True,
    # Seconds in which every session's last_seen, RTT and visibility are written once, a
    # slice at each tick (the instance row is beaten every third of PRESENCE_INSTANCE_TTL
    # whatever this is).
    "HEARTBEAT_CHECKPOINT_INTERVAL": 30.0,
    # Days closed sessions are kept; heartbeat_prune deletes older ones. None: forever.
    "HEARTBEAT_SESSION_RETENTION_DAYS": 30,
    # Presence store: None follows the default channel layer (channels_redis: "redis",
    # else "memory"); or "memory", "redis", or a dotted path to a BaseStore subclass.
    "PRESENCE_STORE": None,
    # Redis URL of the presence store; None: the first host of the channels_redis layer.
    "PRESENCE_REDIS_URL": None,
    "PRESENCE_KEY_PREFIX": "heartbeat",
    # Seconds a session's presence lives without a refresh (refreshed every third of it).
    "PRESENCE_TTL": 30.0,
    # Seconds a process may go without beating before the reaper declares it lost.
    "PRESENCE_INSTANCE_TTL": 15.0,
    # Seconds between reaper passes (one process at a time holds the reaper's lease).
    "PRESENCE_REAP_INTERVAL": 5.0,
    # Seconds a tab that went away keeps its presence, so a reload does not blink.
    "PRESENCE_LEAVE_GRACE": 5.0,
    # Seconds between presence_diff broadcasts of one room; None: HEARTBEAT_TICK.
    "PRESENCE_BROADCAST_INTERVAL": None,
    # Seconds any single presence store call may take before it counts as an outage.
    "PRESENCE_STORE_TIMEOUT": 2.0,
    # Rooms above this many members are count-only: their presence_state carries the
    # count and no list, and presence_count replaces their diffs. None: always a list.
    "PRESENCE_FULL_LIST_MAX": 200,
    # Seconds between presence_count messages of one count-only room.
    "PRESENCE_COUNT_INTERVAL": 2.0,
    # Members a room may hold; a join beyond gets the error room_full. None: no cap.
    "PRESENCE_MAX_MEMBERS": None,
    # Tabs (sessions) one member may have in one room, over every process; a join beyond
    # gets the error too_many_tabs. A reload of a tab replaces its meta and never counts.
    # None: no cap.
    "PRESENCE_MAX_TABS_PER_MEMBER": 10,
    # Broadcasts (typing, cursors) per second per sender and event; latest wins.
    "PRESENCE_SIGNAL_RATE": 10.0,
    # Signal frames a second a process sends its members at most (a signal costs one per
    # member of its room here); beyond it signals wait, the latest winning. None: no bound.
    "PRESENCE_SIGNAL_FANOUT": 5_000,
    # Count sessions, pings, probes, store calls... for the metrics view; False: the
    # runtimes count nothing (read when the runtime of an event loop is made).
    "HEARTBEAT_METRICS": True,
    # Who may read the metrics view: addresses or networks (CIDR); staff users too if True.
    "HEARTBEAT_METRICS_ALLOWED_IPS": [],
    "HEARTBEAT_METRICS_ALLOW_STAFF": False,
    # Connections in the presence store's pool per process; callers wait, never fail.
    "PRESENCE_REDIS_MAX_CONNECTIONS": 50,
}

_cache: dict[str, Any] = {}


def get(name: str) -> Any:
    """Return the value of one setting, falling back to its default."""
    try:
        return _cache[name]
    except KeyError:
        pass
    if name not in DEFAULTS:
        raise KeyError(f"Unknown heartbeat_app setting: {name}")
    value = getattr(django_settings, name, DEFAULTS[name])
    _cache[name] = value
    return value


def ms(name: str) -> int:
    """A setting in seconds, as integer milliseconds (read each time: override_settings)."""
    return int(get(name) * 1000)


def interval() -> float | None:
    """HEARTBEAT_INTERVAL in seconds, or None when heartbeats are off."""
    return _seconds(get("HEARTBEAT_INTERVAL"))


def timeout() -> float | None:
    """HEARTBEAT_TIMEOUT in seconds, or None when zombies are never closed."""
    return _seconds(get("HEARTBEAT_TIMEOUT"))


def tick() -> float:
    """HEARTBEAT_TICK in seconds."""
    return float(get("HEARTBEAT_TICK"))


def _seconds(value: Any) -> float | None:
    return None if value is None else float(value)


@receiver(setting_changed)
def _clear_cache(*, setting: str, **kwargs: Any) -> None:
    # Objects built from these settings (the presence store) are forgotten by
    # their owners' own receivers; this module imports nothing from the app.
    if setting in DEFAULTS or setting.startswith(("HEARTBEAT_", "PRESENCE_")):
        _cache.clear()
