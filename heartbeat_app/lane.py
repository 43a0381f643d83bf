"""The lane for ephemeral signals (typing, cursors): throttled, latest wins, never stored.

A signal goes from one session to the others in a room through the channel layer
at once, never through the store or the tick. Per sender, room and event at most
PRESENCE_SIGNAL_RATE go out per second; what comes in between replaces what is
waiting, and the latest goes out when the window ends (Liveblocks throttles the
same way). A room's signals that follow within EMIT_WINDOW leave together, as one
layer message.

A signal crosses the layer once per process, not once per member: while a process
has sessions in a room, its lane is in the group ``presence-signals.<room>`` with one
channel of its own, and hands what arrives there to its members itself, encoded
once. A delivery pass hands a room's members the signals of the room then waiting,
back to back; in a big room (more members here than PRESENCE_FULL_LIST_MAX) as one
``broadcasts`` frame each. The frames a process sends its members are bounded by
PRESENCE_SIGNAL_FANOUT a second: beyond it signals wait, oldest first, and a later one
of the same sender and event replaces the one waiting, so typing in a big room slows
down instead of the process (docs/presence.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from . import conf, presence_messages, protocol
from .layers import survive_outages
from .runtime import Runtime, Service
from .state import SessionState

logger = logging.getLogger(__name__)

# Entries kept for throttling before the old ones are dropped.
MAX_TRACKED = 10_000
# Seconds of fan-out before it yields to the event loop once: a ping waits behind a
# few of these slices (its read, its dispatch, its pong), not behind a whole pass.
FANOUT_SLICE = 0.001
# Signals of one room a delivery pass carries at most.
PASS_SIGNALS = 32
# Seconds a process collects a room's signals into one layer message once a signal of
# the room has gone out: a lone signal leaves at once, a busy room's leave together.
EMIT_WINDOW = 0.02
# A big room's batch frame (``broadcasts``): signals, and their encoded bytes, at most.
BATCH_SIGNALS, BATCH_BYTES = 128, 16_384
# Seconds of PRESENCE_SIGNAL_FANOUT a quiet process may spend at once.
FANOUT_BURST = 0.25
# Seconds before a failed group add is tried again, doubled up to the second figure.
SYNC_RETRY, MAX_SYNC_RETRY = 0.1, 5.0
# Seconds between two renewals of the lane's groups: channels_redis forgets a group
# member after its group_expiry (a day by default), and a process lives longer.
GROUP_REFRESH = 3600.0

#: A local member: its session, what sends it a text frame, and the consumer's own
#: ``presence_broadcast`` when it overrides the mixin's (None otherwise).
Member = tuple[SessionState, Callable[[str], Awaitable[Any]],
               Callable[[dict[str, Any]], Awaitable[Any]] | None]


def signal_group(room: str) -> str:
    """The channel-layer group of the processes that have sessions in ``room``."""
    return f"presence-signals.{room}"  # never a room's presence group: '-' is not '.'


class Link:
    """The lane's channel on one channel layer, and the members reached through it."""

    __slots__ = ("layer", "channel", "members", "rooms", "receiver", "syncer")

    def __init__(self, layer, channel: str):
        self.layer = layer
        self.channel = channel
        self.members: dict[str, dict[str, Member]] = {}  # room -> session id -> member
        self.rooms: set[str] = set()  # rooms whose group the channel is in
        self.receiver: asyncio.Task | None = None
        self.syncer: asyncio.Task | None = None


class SignalLane(Service):
    """Ephemeral signals of one event loop's sessions."""

    name = "signals"

    def __init__(self, runtime: Runtime):
        super().__init__(runtime)
        self.last_sent: dict[tuple[str, str, str], float] = {}
        self.pending: dict[tuple[str, str, str], tuple[Any, dict[str, Any]]] = {}
        self.links: dict[int, Link] = {}
        # Signals received, waiting for the fan-out budget: (room, sender, event) ->
        # (link, message), oldest first; a newer one takes the place of the one waiting.
        self.inbox: dict[tuple[str, str, str], tuple[Link, dict[str, Any]]] = {}
        # Rooms whose emit window is open: (layer id, room) -> (layer, the signals to
        # send when it closes).
        self.outbox: dict[tuple[int, str], tuple[Any, list[dict[str, Any]]]] = {}
        self._sending: set[asyncio.Task] = set()
        self.tokens = 0.0
        self.tokens_at: float | None = None
        self._deliverer: asyncio.Task | None = None

    # The sender's side ------------------------------------------------------------------

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
            self._emit(layer, room, message)
            return
        if key not in self.pending:
            asyncio.get_running_loop().call_later(window - (now - last), self._flush, key)
        self.pending[key] = (layer, message)  # latest wins

    def _flush(self, key: tuple[str, str, str]) -> None:
        held = self.pending.pop(key, None)
        if held is None:
            return
        self.last_sent[key] = self.clock.monotonic()
        self._emit(held[0], key[1], held[1])

    def _emit(self, layer, room: str, message: dict[str, Any]) -> None:
        if len(self.last_sent) > MAX_TRACKED:
            horizon = self.clock.monotonic() - 1.0
            self.last_sent = {k: t for k, t in self.last_sent.items() if t >= horizon}
        key = (id(layer), room)
        box = self.outbox.get(key)
        if box is not None:  # the room's window is open: the signal leaves when it closes
            box[1].append(message)
            return
        self._open_window(key, layer)
        self._start_send(layer, room, [message])

    def _open_window(self, key: tuple[int, str], layer) -> None:
        self.outbox[key] = (layer, [])
        asyncio.get_running_loop().call_later(EMIT_WINDOW, self._close_window, key)

    def _close_window(self, key: tuple[int, str]) -> None:
        layer, held = self.outbox.pop(key, (None, None))
        if held:  # still busy: what came in goes together, and a new window opens
            self._open_window(key, layer)
            self._start_send(layer, key[1], held)

    def _start_send(self, layer, room: str, messages: list[dict[str, Any]]) -> None:
        # Never awaited by the sender's request: on a busy loop a layer round trip takes
        # long, and the session's other requests would queue up behind it (and be dropped).
        task = asyncio.get_running_loop().create_task(self._group_send(layer, room, messages))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _group_send(self, layer, room: str, messages: list[dict[str, Any]]) -> None:
        """One layer message: the signal itself, or ``presence.broadcasts`` with several
        (a process of a release before it ignores these: docs/presence.md)."""
        message = messages[0] if len(messages) == 1 else {
            "type": "presence.broadcasts", "room": room,
            "signals": [{k: m[k] for k in ("event", "from", "data", "sender")}
                        for m in messages]}
        try:
            await layer.group_send(signal_group(room), message)
            self.metrics.signals.inc(len(messages))
        except Exception as exc:
            logger.warning("%d signals of room %s not sent: %r", len(messages), room, exc)

    # The members' side ------------------------------------------------------------------

    async def enter(self, layer, room: str, state: SessionState,
                    send_text: Callable[[str], Awaitable[Any]], handler=None) -> None:
        """Deliver the room's signals to this session from now on (its process's group is
        joined first, once)."""
        link = await self._link(layer)
        if state.closed:
            return  # ended meanwhile: forget() has run, nothing would remove it
        link.members.setdefault(room, {})[state.id] = (state, send_text, handler)
        if room not in link.rooms:
            # In the group before the first signal, unless the layer is away: then the
            # join goes on, and the group follows once the layer answers.
            await asyncio.wait([self._sync(link)], timeout=conf.get("PRESENCE_STORE_TIMEOUT"))

    def exit(self, room: str, session_id: str) -> None:
        """No more signals of ``room`` for this session."""
        for link in self.links.values():
            members = link.members.get(room)
            if members is not None and members.pop(session_id, None) and not members:
                del link.members[room]
                self._sync(link)  # out of the room's group, unless someone comes back

    def forget(self, session_id: str) -> None:
        """Drop what is held for a session that ended, and its rooms."""
        for key in [k for k in self.pending if k[0] == session_id]:
            del self.pending[key]
        for key in [k for k in self.last_sent if k[0] == session_id]:
            del self.last_sent[key]
        for link in list(self.links.values()):
            for room in [r for r, members in link.members.items() if session_id in members]:
                self.exit(room, session_id)

    async def _link(self, layer) -> Link:
        link = self.links.get(id(layer))
        if link is None:
            channel = await layer.new_channel()
            link = self.links.get(id(layer))
            if link is None:
                link = self.links[id(layer)] = Link(layer, channel)
                receive = survive_outages(lambda: layer.receive(channel),
                                          on_recovery=lambda: self._rejoin(link))
                link.receiver = asyncio.get_running_loop().create_task(
                    self._receive(link, receive))
                self.ensure_running()  # renews the groups every GROUP_REFRESH
        return link

    def _sync(self, link: Link) -> asyncio.Task:
        """Bring the channel's groups in line with the rooms that have members; one task
        at a time, so an add and a discard of one room never overtake each other."""
        if link.syncer is None or link.syncer.done():
            link.syncer = asyncio.get_running_loop().create_task(self._syncing(link))
        return link.syncer

    async def _syncing(self, link: Link) -> None:
        delay = SYNC_RETRY
        while True:
            add = [room for room in link.members if room not in link.rooms]
            drop = [room for room in link.rooms if room not in link.members]
            if not add and not drop:
                return
            try:
                for room in add:
                    await link.layer.group_add(signal_group(room), link.channel)
                    link.rooms.add(room)
            except Exception as exc:  # the layer is down: tried again, less and less often
                log = logger.warning if delay == SYNC_RETRY else logger.debug
                log("signals of room %s not joined, retrying: %r", room, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_SYNC_RETRY)
                continue
            for room in drop:
                link.rooms.discard(room)
                try:
                    await link.layer.group_discard(signal_group(room), link.channel)
                except Exception as exc:  # expires with the group (channels_redis)
                    logger.debug("signals of room %s not left: %r", room, exc)

    def _rejoin(self, link: Link) -> None:
        # Back from a layer outage: a Redis that restarted has lost the groups.
        link.rooms.clear()
        self._sync(link)

    async def step(self, planned: float | None = None) -> None:
        for link in self.links.values():
            self._rejoin(link)

    def period(self) -> float:
        return GROUP_REFRESH

    async def _receive(self, link: Link, receive) -> None:
        while True:
            message = await receive()
            kind, room = message.get("type"), message.get("room")
            if not isinstance(room, str):
                continue
            if kind == "presence.broadcast":
                signals = [message]
            elif kind == "presence.broadcasts" and isinstance(message.get("signals"), list):
                signals = [{**m, "type": "presence.broadcast", "room": room}
                           for m in message["signals"] if isinstance(m, dict)]
            else:
                continue
            for signal in signals:
                key = (room, str(signal.get("sender")), str(signal.get("event")))
                if key in self.inbox:
                    self.metrics.signals_replaced.inc()
                self.inbox[key] = (link, signal)  # a newer one keeps the older one's place
            if self._deliverer is None or self._deliverer.done():
                self._deliverer = asyncio.get_running_loop().create_task(self._deliver())

    async def _deliver(self) -> None:
        # A pass hands a room's members the signals of the room waiting then, each
        # member's frames back to back (one write to its socket, not one per frame), as
        # many as a second of the budget pays for, one at least.
        # In a big room (more members here than PRESENCE_FULL_LIST_MAX) a pass is one
        # ``broadcasts`` frame per member, which costs one frame of the budget whatever it
        # carries: the budget is spent first, then it takes what is waiting by then.
        while self.inbox:
            (room, _, _), (link, _) = next(iter(self.inbox.items()))
            members = len(link.members.get(room, ()))
            biggest = conf.get("PRESENCE_FULL_LIST_MAX")
            batch = biggest is not None and members > biggest
            rate = conf.get("PRESENCE_SIGNAL_FANOUT")
            if batch and rate is not None:
                await self._spend(rate, members)
            keys = [key for key, (lk, _) in self.inbox.items()
                    if key[0] == room and lk is link][:BATCH_SIGNALS if batch else PASS_SIGNALS]
            if not batch and rate is not None and members:
                keys = keys[:max(1, int(rate // members))]
                await self._spend(rate, members * len(keys))  # meanwhile, newer ones may
            messages = [self.inbox[key][1] for key in keys]  # take their places
            parts = _batch_parts(messages) if batch and len(messages) > 1 else None
            for key in keys[:len(parts) if parts else None]:  # the rest waits, in its place
                del self.inbox[key]
            members_now = list(link.members.get(room, {}).values())
            try:
                await self._fan_out(room, messages[:len(parts)] if parts else messages,
                                    members_now, parts)
            except Exception:
                logger.exception("signals of room %s not delivered", room)

    async def _spend(self, rate: float, frames: int) -> None:
        """Wait until the fan-out budget has room for ``frames`` more, then spend them."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self.tokens_at is None:
            self.tokens = rate * FANOUT_BURST
        else:
            self.tokens = min(rate * FANOUT_BURST, self.tokens + (now - self.tokens_at) * rate)
        self.tokens_at = now
        if self.tokens < 0:  # in debt from the last pass: wait it off
            await asyncio.sleep(-self.tokens / rate)
            self.tokens, self.tokens_at = 0.0, loop.time()
        self.tokens -= frames

    async def _fan_out(self, room: str, messages: list[dict[str, Any]],
                       members: list[Member], parts: list[str] | None = None) -> None:
        """Hand each member the signals of the others: a frame each, or with ``parts`` (the
        signals encoded, a big room) one ``broadcasts`` frame of them all."""
        senders = [message.get("sender") for message in messages]
        texts = [protocol.dumps(presence_messages.broadcast(
            room, m["event"], m["from"], m["data"])) for m in messages] if parts is None else []
        shared = presence_messages.broadcasts_text(room, parts) if parts else ""
        loop = asyncio.get_running_loop()
        sent, since = 0, loop.time()
        for state, send_text, handler in members:
            if state.closed or room not in state.rooms:
                continue
            theirs = [n for n, sender in enumerate(senders) if sender != state.channel]
            if handler is not None:  # the consumer's own presence_broadcast: one call each
                for n in theirs:
                    await _handle(state, handler, messages[n])
            elif parts is None:
                for n in theirs:
                    await send_text(texts[n])
            elif theirs:
                await send_text(shared if len(theirs) == len(parts) else
                                presence_messages.broadcasts_text(room, [parts[n] for n in theirs]))
            sent += len(theirs) if handler is not None or parts is None else bool(theirs)
            if loop.time() - since >= FANOUT_SLICE:
                self.metrics.signal_frames.inc(sent)
                await asyncio.sleep(0)  # a big room: let other traffic in between
                sent, since = 0, loop.time()
        self.metrics.signal_frames.inc(sent)

    async def stop(self) -> None:
        await super().stop()
        self.outbox.clear()  # the windows' timers find nothing to send
        tasks = [t for link in self.links.values() for t in (link.receiver, link.syncer) if t]
        tasks += [self._deliverer] if self._deliverer is not None else []
        tasks += list(self._sending)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=0.5)


def _batch_parts(messages: list[dict[str, Any]]) -> list[str]:
    """The signals of a ``broadcasts`` frame, encoded: the first ones, up to BATCH_BYTES
    (one at least)."""
    parts, size = [], 0
    for message in messages:
        part = presence_messages.signal_text(message["event"], message["from"], message["data"])
        size += len(part)
        if parts and size > BATCH_BYTES:
            break
        parts.append(part)
    return parts


async def _handle(state: SessionState, handler, message: dict[str, Any]) -> None:
    try:
        await handler(dict(message))
    except Exception:
        logger.exception("presence_broadcast of session %s failed", state.id)
