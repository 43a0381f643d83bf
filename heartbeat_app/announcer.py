"""What a room's members are told: states, diffs coalesced per room, counts for big rooms.

The tracker hands every store change to ``queue()``; ``flush()`` runs once a tick
and sends at most one ``presence_diff`` per room through the channel layer (a
room above PRESENCE_FULL_LIST_MAX gets a ``presence_count`` every
PRESENCE_COUNT_INTERVAL instead), and sends the member-level signals. Each diff
is numbered in its room's sequence of this process (``seq``, ``origin``) before
it goes through the layer, and each state says where that sequence is, so a
client sees a diff the layer dropped on the way (docs/protocol.md).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from channels.layers import get_channel_layer

from . import conf, presence_messages, protocol
from .layers import group_name
from .runtime import Runtime
from .signals import member_joined, member_left
from .stores import BaseStore, Change, StoreUnavailable, new_ref

logger = logging.getLogger(__name__)

# Loop lag (seconds) above which presence broadcasts are spaced out.
LAGGING = 0.1
MAX_BROADCAST_BACKOFF = 16
# Rooms broadcast before the tick yields to the event loop once.
BROADCAST_BATCH = 64
# Seconds a room's diff sequence is kept after its last diff or state; a room used again
# later starts a new sequence, under a new origin.
SEQUENCE_IDLE = 600.0

Fetch = Callable[[str, dict[str, dict]], Any]


async def enrich(fetch: Fetch | None, room: str, members: dict[str, dict]) -> dict:
    """Members as a consumer's ``fetch_presence(room, members)`` hook completes them."""
    if fetch is None or not members:
        return members
    result = fetch(room, members)
    return await result if inspect.isawaitable(result) else result


@dataclass(slots=True)
class Sequence:
    """The diffs of one room from this process, numbered one by one."""

    origin: str  # names the sequence on the wire; never the instance id (host:pid)
    seq: int = 0  # the number of the latest diff
    used: float = 0.0  # monotonic time of the latest diff or state


class Announcer:
    """The states, diffs and counts of one tracker's rooms; diffs and counts once a tick."""

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
        self.sequences: dict[str, Sequence] = {}
        self.sequences_pruned = 0.0

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

    def sequence(self, room: str) -> Sequence:
        """The room's diff sequence in this process, made on first use."""
        sequence = self.sequences.get(room)
        if sequence is None:
            # A new origin for a new sequence: a client that kept the number of a sequence
            # pruned since takes the first diff of this one as its start, not as a gap.
            sequence = self.sequences[room] = Sequence(new_ref())
        sequence.used = self.runtime.clock.monotonic()
        return sequence

    def _prune_sequences(self, now: float) -> None:
        # One entry per room ever announced would grow without end (rooms per user,
        # per document): rooms idle for SEQUENCE_IDLE are forgotten.
        if now - self.sequences_pruned < SEQUENCE_IDLE:
            return
        self.sequences_pruned = now
        for room in [r for r, s in self.sequences.items() if now - s.used > SEQUENCE_IDLE]:
            del self.sequences[room]

    async def room_state(self, room: str, count: int, fetch: Fetch | None) -> dict[str, Any]:
        """A room's presence_state: its members and sequence, or only their count for a big room."""
        full_max = conf.get("PRESENCE_FULL_LIST_MAX")
        if full_max is not None and count > full_max:
            return protocol.presence_state(room, None, count)
        # Read before the members: a change is stored before it is queued and numbered,
        # so every diff numbered so far is in what the store returns below.
        sequence = self.sequence(room)
        seqs = {sequence.origin: sequence.seq}
        members = protocol.public_members(await self.call("members", self.store.members(room)))
        members = await enrich(fetch, room, members)
        return protocol.presence_state(room, members, seqs=seqs)

    async def flush(self, now: float) -> None:
        # Under overload (a reconnect storm: the loop's ticks run late) broadcasts
        # are spaced out, up to 16 times, so the fan-out of diffs (each recipient
        # costs a dispatch and a send) does not starve handshakes and heartbeats;
        # the diffs are merged meanwhile, nothing is lost.
        self._prune_sequences(now)
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
            # Numbered here, before the layer: channels_redis drops a message to a channel
            # over its capacity, and a number assigned after that hop could not show it. A
            # diff a count replaces, or that the layer refuses, uses its number too: a client
            # that holds a list then sees the gap and asks for the state.
            sequence = self.sequence(room)
            sequence.seq += 1
            if full_max is not None and counts.get(room, 0) > full_max:
                self.counts_due.add(room)  # a big room: its count, not its diffs
                continue
            # Filtered once per room here, not once per recipient.
            joins = await enrich(self.fetchers.get(room), room,
                                 protocol.public_members(diff["joins"]))
            message = protocol.presence_diff(room, joins, protocol.public_members(diff["leaves"]),
                                             sequence.seq, sequence.origin)
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
