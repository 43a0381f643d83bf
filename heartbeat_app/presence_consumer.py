"""Presence on the consumer side: rooms and metas of a connection, requests from its client.

``PresenceMixin`` is the base HeartbeatMixin builds on: rooms joined on accept
(``get_presence_rooms()``) or while connected (``presence_join()`` and the
client's ``join``), states, updates and signals, and the leave on every end.
The heartbeat side hands over the session and a ``send`` callable when the
session opens; everything presence sends goes through that callable.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from django.core.exceptions import ValidationError

from . import presence_messages, protocol
from .lane import SignalLane
from .limits import JOIN_REFUSALS
from .protocol import CloseCode, CloseReason, LeaveReason
from .runtime import get_runtime
from .state import SessionState
from .tracker import Tracker, get_tracker

logger = logging.getLogger(__name__)

# Presence requests of one session waiting for its worker; more are dropped.
PRESENCE_INBOX = 32


class PresenceMixin:
    """Presence for HeartbeatMixin consumers: join rooms on accept, leave on every end.

    The heartbeat side hands over the session and a ``send`` callable when the
    session opens; everything presence sends goes through that callable.
    """

    #: Rooms this consumer's sessions are present in; or override get_presence_rooms().
    presence_rooms: list[str] | None = None
    #: Take join, leave, presence_update and broadcast frames from clients. Set False if
    #: your own protocol uses these message types.
    presence_client_messages: bool = True

    _presence_tracker: Tracker | None = None
    _presence_session: SessionState | None = None
    _presence_send: Callable[[dict[str, Any]], Awaitable[Any]] | None = None
    _presence_layer = None
    _presence_inbox: asyncio.Queue | None = None
    _presence_worker: asyncio.Task | None = None

    def get_presence_rooms(self) -> list[str]:
        """The rooms of this connection (none: no presence)."""
        return list(self.presence_rooms or [])

    def get_presence_meta(self) -> dict[str, Any]:
        """Extra, JSON-serialisable fields for this session's meta in every room."""
        return {}

    def can_join_presence(self, room: str) -> bool | Awaitable[bool]:
        """Whether this connection may be present in ``room``; may be ``async def``.

        Asked for every room of get_presence_rooms(), after accept and before any
        presence work. One refusal refuses the connection: the client gets an
        ``error`` (``room_forbidden``) and a close, 4401 when anonymous, 4403 when
        signed in. A sync override runs on the event loop: make it async (with
        ``database_sync_to_async``) if it queries the database.
        """
        return True

    async def _presence_open(self, session: SessionState,
                             send: Callable[[dict[str, Any]], Awaitable[Any]]) -> bool:
        """Join the session's rooms; False if a room was refused (the connection closes)."""
        rooms = self.get_presence_rooms()
        if not rooms:
            return True
        for room in rooms:
            if not protocol.valid_room_name(room):
                # A bad room name from the URL: the client cannot fix it by retrying.
                logger.info("session %s: invalid presence room %r: closing 4400", session.id, room)
                await send(presence_messages.refusal(
                    presence_messages.ERR_INVALID_ROOM, str(room)[:80],
                    "Room names are 1 to 80 letters, digits, '_', '-' or '.'."))
                await self.close(code=int(CloseCode.PROTOCOL_ERROR))
                return False
        for room in rooms:
            allowed = self.can_join_presence(room)
            if inspect.isawaitable(allowed):
                allowed = await allowed
            if session.closed:
                return False  # gone while the hook ran: nothing to join
            if not allowed:
                await self._presence_refuse(session, room, send)
                return False
        layer = getattr(self, "channel_layer", None)
        if layer is None:
            logger.warning("presence needs a channel layer: %s has none", type(self).__name__)
            return True
        self._presence_link(session, send, layer)
        session.rooms = list(rooms)
        refused = await self._presence_tracker.join(
            session, rooms, self.get_presence_meta(), layer=layer, send=send,
            fetch=self._presence_fetcher()) if rooms else {}
        # As a refused join frame: the connection stays open, in the rooms it could join.
        for room, code in refused.items():
            await send(presence_messages.refusal(code, room, JOIN_REFUSALS[code]))
        for room in rooms:
            if room not in refused:
                await self._presence_signals(room)
        token = getattr(self, "heartbeat_anonymous_token", None)
        if token:
            # After the state: clients that read hello then presence_state are unchanged.
            await send(protocol.identity(session.user_key, token))
        return True

    async def _presence_refuse(self, session: SessionState, room: str,
                               send: Callable[[dict[str, Any]], Awaitable[Any]]) -> None:
        # Nothing about the room goes out (no state, no count), and the room sees
        # nothing: the refusal comes before the group, the store and the tracker.
        user = getattr(self, "scope", {}).get("user")
        signed_in = bool(getattr(user, "is_authenticated", False))
        code = CloseCode.FORBIDDEN if signed_in else CloseCode.UNAUTHENTICATED
        logger.info("session %s refused presence in room %r: closing %d", session.id, room,
                    int(code))
        await send(protocol.room_forbidden(room))
        await self.close(code=int(code))

    async def _presence_close(self, session: SessionState) -> None:
        tracker = self._presence_tracker
        if tracker is None:
            return
        if session.close_reason == CloseReason.TIMEOUT:
            await tracker.leave(session, LeaveReason.TIMEOUT, grace=False)
            return
        # A tab that went away (reload, navigation, lost network) may come back
        # with the same tab id within the grace; an explicit close (1000) or a
        # server-side close leaves at once.
        # A drain (4001) closes the session here and sends the tab elsewhere: its
        # meta is kept for the grace after the moment the tab was told to come back,
        # so the member does not blink.
        grace = session.close_reason == CloseReason.TRANSPORT_LOST or (
            session.close_reason == CloseReason.CLOSED
            and session.close_code not in (1000, None)
        ) or session.close_code == CloseCode.DRAINING
        after = (session.retry_after_ms or 0) / 1000  # set by a drain only
        await tracker.leave(session, LeaveReason.CLOSED, grace=grace, after=after)

    def _presence_visibility(self, session: SessionState) -> None:
        if self._presence_tracker is not None:
            self._presence_tracker.visibility_changed(session)

    def clean_presence_state(self, room: str, state: dict[str, Any]) -> dict[str, Any]:
        """Validate a client's ``presence_update`` state; raise ValidationError to refuse."""
        return state

    def fetch_presence(self, room: str, members: dict[str, dict]) -> dict[str, dict]:
        """Complete members before they are sent (one call per state or diff); may be async.

        Add names or avatars with one query, e.g. ``User.objects.in_bulk(keys)``,
        instead of keeping them in every meta.
        """
        return members

    def _presence_fetcher(self):
        if type(self).fetch_presence is PresenceMixin.fetch_presence:
            return None  # not overridden: no call at all
        return self.fetch_presence

    def _presence_link(self, session: SessionState, send, layer) -> None:
        self._presence_session, self._presence_send = session, send
        self._presence_layer = layer
        self._presence_tracker = get_tracker()

    # Presence driven while connected -----------------------------------------------------

    async def presence_join(self, room: str) -> bool:
        """Join ``room`` now; False if refused (a bad name, can_join_presence, room_full,
        too_many_tabs)."""
        if not protocol.valid_room_name(room) or not await self._presence_allowed(room):
            return False
        return await self._presence_enter(room) is True

    async def _presence_enter(self, room: str) -> bool | str | None:
        """Join an allowed room: True, the refusal's code (JOIN_REFUSALS), or None when the
        session cannot."""
        session = self._presence_session or getattr(self, "heartbeat_session", None)
        send = self._presence_send or getattr(self, "_heartbeat_send", None)
        layer = getattr(self, "channel_layer", None)
        if session is None or session.closed or layer is None or send is None:
            return None
        if self._presence_tracker is None:
            self._presence_link(session, send, layer)
        was_in = room in session.rooms
        refused = await self._presence_tracker.join(
            session, [room], self.get_presence_meta(), layer=layer, send=send,
            fetch=self._presence_fetcher())
        if room in refused:
            return refused[room]
        await self._presence_signals(room)
        if not was_in:
            await _maybe_await(self.presence_joined(room))
        return True

    async def presence_leave(self, room: str) -> bool:
        """Leave ``room`` and stay connected (reason ``left``); False if not in it."""
        tracker, session = self._presence_tracker, self._presence_session
        if tracker is None or session is None or not await tracker.leave_room(session, room):
            return False
        get_runtime().service(SignalLane).exit(room, session.id)
        await _maybe_await(self.presence_left(room, LeaveReason.LEFT))
        return True

    async def _presence_signals(self, room: str) -> None:
        # The room's signals come from the process's lane (one layer message per process),
        # to the mixin's own presence_broadcast's way unless a subclass overrides it.
        own = type(self).presence_broadcast is PresenceMixin.presence_broadcast
        await get_runtime().service(SignalLane).enter(
            self._presence_layer, room, self._presence_session, self._presence_send_text,
            None if own else self.presence_broadcast)

    async def _presence_send_text(self, text: str) -> None:
        try:
            await self.base_send({"type": "websocket.send", "text": text})
        except Exception as exc:  # closing (Daphne raises Disconnected): the end follows
            logger.debug("signal to a closing connection not sent: %r", exc)

    def presence_joined(self, room: str):
        """Called once the session joined ``room`` while connected (a join frame or
        ``presence_join()``); may be async. Join your own groups of the room here."""

    def presence_left(self, room: str, reason: LeaveReason):
        """Called once the session left ``room`` while connected; may be async."""

    async def presence_update(self, room: str, state) -> bool:
        """Set this session's ``state`` in ``room`` (a dict, or a function of the current one)."""
        tracker, session = self._presence_tracker, self._presence_session
        if tracker is None or session is None:
            return False
        local = tracker.local.get(session.id)
        if callable(state):
            meta = local.metas.get(room) if local is not None else None
            state = state(dict((meta or {}).get("state") or {}))
        return tracker.update_state(session, room, state)

    async def _presence_allowed(self, room: str) -> bool:
        return bool(await _maybe_await(self.can_join_presence(room)))

    async def _presence_offer(self, session: SessionState, text: str, allow) -> bool:
        """Take a client's presence request for the worker; True if the frame was one.

        ``allow(session)`` spends one of the session's rate-limit tokens (False: over).
        """
        if not self.presence_client_messages or not presence_messages.looks_like_request(text):
            return False
        if not await allow(session):
            return True
        try:
            request = presence_messages.parse_request_text(text)
        except protocol.ProtocolError as error:
            request = error
        if request is None:
            return False
        if self._presence_inbox is None:
            # One worker per session: a join waits on the store, a ping never waits
            # behind it (the pump goes on), and requests keep their order.
            self._presence_inbox = asyncio.Queue(maxsize=PRESENCE_INBOX)
            self._presence_worker = asyncio.ensure_future(self._presence_serve(session))
        try:
            self._presence_inbox.put_nowait(request)
        except asyncio.QueueFull:
            logger.info("session %s: presence requests dropped (too many waiting)", session.id)
        return True

    async def _presence_serve(self, session: SessionState) -> None:
        while not session.closed:
            request = await self._presence_inbox.get()
            try:
                await self._presence_handle(session, request)
            except Exception:
                logger.exception("presence request of session %s failed", session.id)

    def _presence_stop(self) -> None:
        if self._presence_worker is not None:
            self._presence_worker.cancel()
        if self._presence_session is not None:
            get_runtime().service(SignalLane).forget(self._presence_session.id)

    async def _presence_handle(self, session: SessionState, request) -> None:
        send = self._presence_send or self._heartbeat_send
        if isinstance(request, protocol.ProtocolError):
            await send(request.as_message())
            return
        room, kind = request.room, request.type
        in_room = room in session.rooms
        if kind == presence_messages.JOIN:
            if not in_room and not await self._presence_allowed(room):
                await send(protocol.room_forbidden(room))  # and nothing about the room
            elif (code := await self._presence_enter(room)) in JOIN_REFUSALS:
                await send(presence_messages.refusal(code, room, JOIN_REFUSALS[code]))
            return
        if not in_room:
            await send(presence_messages.refusal(presence_messages.ERR_NOT_IN_ROOM, room,
                                                 "This session is not in the room."))
            return
        if kind == presence_messages.LEAVE:
            await self.presence_leave(room)
        elif kind == presence_messages.PRESENCE_UPDATE:
            try:
                state = self.clean_presence_state(room, request.state)
            except ValidationError as error:
                await send(presence_messages.refusal(
                    presence_messages.ERR_INVALID_STATE, room, " ".join(error.messages)))
                return
            await self.presence_update(room, state)
        else:
            await get_runtime().service(SignalLane).send(
                session, self._presence_layer, room, request.event, request.data)

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Handle the layer's presence messages directly, the rest as Channels does.

        Channels awaits ``aclose_old_connections()`` before every handler: a hop through
        Django's one thread-sensitive thread, for every member of a room at every diff,
        signal and count, queued behind whatever else that thread runs. These handlers
        touch no database; one a subclass overrides keeps Channels' way.
        """
        name = _OWN_HANDLERS.get(message.get("type"))
        if name is not None and getattr(type(self), name) is getattr(PresenceMixin, name):
            return await getattr(self, name)(message)
        return await super().dispatch(message)

    async def presence_broadcast(self, event: dict[str, Any]) -> None:
        """Forward a signal from another session of the room (never the sender's own)."""
        session, send = self._presence_session, self._presence_send
        if session is None or session.closed or send is None:
            return
        if event.get("sender") == session.channel or event["room"] not in session.rooms:
            return
        await send(presence_messages.broadcast(event["room"], event["event"], event["from"],
                                               event["data"]))

    async def presence_count(self, event: dict[str, Any]) -> None:
        """Forward a big room's member count."""
        session, send = self._presence_session, self._presence_send
        if session is None or session.closed or send is None:
            return
        if event["room"] in session.rooms:
            await send(presence_messages.presence_count(event["room"], event["count"]))

    async def presence_diff(self, event: dict[str, Any]) -> None:
        """Forward a room's coalesced ``presence.diff`` (already public) to the client."""
        session, send = self._presence_session, self._presence_send
        if session is None or session.closed or send is None:
            return
        if event["room"] in session.rooms:  # not a room it left since
            # seq and origin as the announcing process numbered them (absent from a process
            # of an older release, during a rolling upgrade).
            await send(protocol.presence_diff(event["room"], event["joins"], event["leaves"],
                                              event.get("seq"), event.get("origin")))


_OWN_HANDLERS = {"presence.broadcast": "presence_broadcast", "presence.count": "presence_count",
                 "presence.diff": "presence_diff"}


async def _maybe_await(value):
    return await value if inspect.isawaitable(value) else value
