"""What a room's members are told: diffs coalesced per room, counts for big rooms.

The tracker hands every store change to ``queue()``; ``flush()`` runs once a tick
and sends at most one ``presence_diff`` per room through the channel layer (a
room above PRESENCE_FULL_LIST_MAX gets a ``presence_count`` every
PRESENCE_COUNT_INTERVAL instead), and sends the member-level signals.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from channels.layers import get_channel_layer

from . import conf, presence_messages, protocol
from .layers import group_name
from .runtime import Runtime
from .signals import member_joined, member_left
from .stores import BaseStore, Change, StoreUnavailable

logger = logging.getLogger(__name__)

# Loop lag (seconds) above which presence broadcasts are spaced out.
LAGGING = 0.1
MAX_BROADCAST_BACKOFF = 16
# Rooms broadcast before the tick yields to the event loop once.
BROADCAST_BATCH = 64

Fetch = Callable[[str, dict[str, dict]], Any]


async def enrich(fetch: Fetch | None, room: str, members: dict[str, dict]) -> dict:
    """Members as a consumer's ``fetch_presence(room, members)`` hook completes them."""
    if fetch is None or not members:
        return members
    result = fetch(room, members)
    return await result if inspect.isawaitable(result) else result


class Announcer:
    """The diffs and counts of one tracker's rooms, sent once a tick."""

    def __init__(self, runtime: Runtime, store: BaseStore, *,
                 call: Callable[[str, Awaitable], Awaitable[Any]], wake: Callable[[], None]):
        self.runtime = runtime
        self.metrics = runtime.metrics
        self.store = store
        self.call = call  # the tracker's timed, outage-aware store call
        self.wake = wake  # makes sure the tracker ticks
        self.diffs: dict[str, dict[str, dict]] = {}
        self.fetchers: dict[str, Fetch] = {}  # room -> a consumer's fetch_presence hook
        self.counts_due: set[str] = set()  # big rooms whose count changed
        self.counts_sent: dict[str, float] = {}
        self.last_broadcast = 0.0
        self.broadcast_backoff = 1

    def queue(self, changes: list[Change]) -> None:
        refs_in = {c.meta.get("ref") for c in changes if c.joined}
        refs_out = {c.meta.get("ref") for c in changes if not c.joined}
        # The same version leaving and coming back (a rebuild) tells nobody anything.
        unchanged = refs_in & refs_out
        for change in changes:
            if change.meta.get("ref") in unchanged:
                continue
            diff = self.diffs.setdefault(change.room, {"joins": {}, "leaves": {}})
            side = diff["joins"] if change.joined else diff["leaves"]
            side.setdefault(change.key, {"metas": []})["metas"].append(change.meta)
            if change.member_changed:
                signal = member_joined if change.joined else member_left
                asyncio.ensure_future(self._signal(signal, change))
        if self.diffs:
            self.wake()

    async def _signal(self, signal, change: Change) -> None:
        kwargs = {"room": change.room, "key": change.key, "meta": change.meta}
        if not change.joined:
            kwargs["reason"] = change.reason
        for receiver, result in await signal.asend_robust(sender=type(self), **kwargs):
            if isinstance(result, Exception):
                logger.error("receiver %r of a presence signal raised", receiver,
                             exc_info=result)

    async def flush(self, now: float) -> None:
        # Under overload (a reconnect storm: the loop's ticks run late) broadcasts
        # are spaced out, up to 16 times, so the fan-out of diffs (each recipient
        # costs a dispatch and a send) does not starve handshakes and heartbeats;
        # the diffs are merged meanwhile, nothing is lost.
        lag = self.runtime.lag
        if lag > LAGGING:
            self.broadcast_backoff = min(self.broadcast_backoff * 2, MAX_BROADCAST_BACKOFF)
        elif lag < LAGGING / 2:
            self.broadcast_backoff = max(1, self.broadcast_backoff // 2)
        interval = conf.get("PRESENCE_BROADCAST_INTERVAL")
        if self.broadcast_backoff > 1:
            interval = (interval or conf.tick()) * self.broadcast_backoff
        if interval is not None and now - self.last_broadcast < interval:
            return
        self.last_broadcast = now
        diffs, self.diffs = self.diffs, {}
        layer = get_channel_layer()
        full_max = conf.get("PRESENCE_FULL_LIST_MAX")
        counts: dict[str, int] = {}
        if full_max is not None and diffs:
            try:
                counts = await self.call("count", self.store.counts(list(diffs)))
            except StoreUnavailable:
                pass  # the diffs go out; the rebuild will resend states anyway
        for n, (room, diff) in enumerate(diffs.items(), 1):
            if n % BROADCAST_BATCH == 0:
                await asyncio.sleep(0)  # many rooms: let other traffic in between
            if counts.get(room, 0) > full_max:
                self.counts_due.add(room)  # a big room: its count, not its diffs
                continue
            # Filtered once per room here, not once per recipient.
            joins = await enrich(self.fetchers.get(room), room,
                                       protocol.public_members(diff["joins"]))
            message = protocol.presence_diff(room, joins, protocol.public_members(diff["leaves"]))
            await self._group_send(layer, room, {**message, "type": "presence.diff"})
        await self._send_counts(layer, now)

    async def _send_counts(self, layer, now: float) -> None:
        every = conf.get("PRESENCE_COUNT_INTERVAL")
        due = [room for room in sorted(self.counts_due)
               if now - self.counts_sent.get(room, -1e9) >= every]
        if not due:
            return
        try:
            counts = await self.call("count", self.store.counts(due))
        except StoreUnavailable:
            return
        for room in due:
            self.counts_due.discard(room)
            self.counts_sent[room] = now
            await self._group_send(layer, room, {
                **presence_messages.presence_count(room, counts[room]),
                "type": "presence.count"})

    async def _group_send(self, layer, room: str, event: dict[str, Any]) -> None:
        try:
            await layer.group_send(group_name(room), event)
            self.metrics.broadcasts.inc()
        except Exception as exc:  # the layer is down too: the rebuild resends state
            logger.warning("%s of room %s not broadcast: %r", event["type"], room, exc)
