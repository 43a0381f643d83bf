"""The lane for ephemeral signals (typing, cursors): throttled, latest wins, never stored.

A signal goes from one session to the others in a room through the channel layer
at once, never through the store or the tick. Per sender, room and event at most
PRESENCE_SIGNAL_RATE go out per second; what comes in between replaces what is
waiting, and the latest goes out when the window ends (Liveblocks throttles the
same way).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from . import conf
from .layers import group_name
from .runtime import Runtime, Service
from .state import SessionState

logger = logging.getLogger(__name__)

# Entries kept for throttling before the old ones are dropped.
MAX_TRACKED = 10_000


class SignalLane(Service):
    """Ephemeral signals of one event loop's sessions."""

    name = "signals"

    def __init__(self, runtime: Runtime):
        super().__init__(runtime)
        self.last_sent: dict[tuple[str, str, str], float] = {}
        self.pending: dict[tuple[str, str, str], tuple[Any, dict[str, Any]]] = {}

    async def send(self, state: SessionState, layer, room: str, event: str, data: Any) -> None:
        """Send a signal to the others in ``room``, or hold it until its window ends."""
        rate = conf.get("PRESENCE_SIGNAL_RATE")
        window = 1.0 / rate if rate else 0.0
        key = (state.id, room, event)
        message = {"type": "presence.broadcast", "room": room, "event": event,
                   "from": state.user_key, "data": data, "sender": state.channel}
        now = self.clock.monotonic()
        last = self.last_sent.get(key)
        if last is None or now - last >= window:
            self.last_sent[key] = now
            await self._emit(layer, room, message)
            return
        if key not in self.pending:
            loop = asyncio.get_running_loop()
            loop.call_later(window - (now - last),
                            lambda: loop.create_task(self._flush(key)))
        self.pending[key] = (layer, message)  # latest wins

    async def _flush(self, key: tuple[str, str, str]) -> None:
        held = self.pending.pop(key, None)
        if held is None:
            return
        self.last_sent[key] = self.clock.monotonic()
        await self._emit(held[0], key[1], held[1])

    def forget(self, session_id: str) -> None:
        """Drop what is held for a session that ended."""
        for key in [k for k in self.pending if k[0] == session_id]:
            del self.pending[key]
        for key in [k for k in self.last_sent if k[0] == session_id]:
            del self.last_sent[key]

    async def _emit(self, layer, room: str, message: dict[str, Any]) -> None:
        if len(self.last_sent) > MAX_TRACKED:
            horizon = self.clock.monotonic() - 1.0
            self.last_sent = {k: t for k, t in self.last_sent.items() if t >= horizon}
        try:
            await layer.group_send(group_name(room), message)
            self.metrics.signals.inc()
        except Exception as exc:
            logger.warning("signal of room %s not sent: %r", room, exc)
