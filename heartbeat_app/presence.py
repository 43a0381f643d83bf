"""Presence: the consumer side (rooms, metas, diffs) and the API for apps and views.

Consumers declare their rooms with ``presence_rooms`` or ``get_presence_rooms()``
and extra meta with ``get_presence_meta()``. Apps read presence with the async
functions below, or their sync twins from views and the admin.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import async_to_sync

from . import conf, protocol
from .protocol import CloseCode, CloseReason, LeaveReason
from .state import SessionState
from .stores import get_store
from .tracker import Tracker, get_tracker

logger = logging.getLogger(__name__)

ROOM_NAME = protocol.ROOM_NAME
public_members = protocol.public_members


class PresenceMixin:
    """Presence for HeartbeatMixin consumers: join rooms on accept, leave on every end.

    The heartbeat side hands over the session and a ``send`` callable when the
    session opens; everything presence sends goes through that callable.
    """

    #: Rooms this consumer's sessions are present in; or override get_presence_rooms().
    presence_rooms: list[str] | None = None

    _presence_tracker: Tracker | None = None
    _presence_session: SessionState | None = None
    _presence_send: Callable[[dict[str, Any]], Awaitable[Any]] | None = None

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
                raise ValueError(
                    f"Presence room names are 1 to 80 letters, digits, '_', '-' or '.': {room!r}"
                )
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
        session.rooms = list(rooms)
        self._presence_session, self._presence_send = session, send
        self._presence_tracker = get_tracker()
        await self._presence_tracker.join(session, rooms, self.get_presence_meta(),
                                          layer=layer, send=send)
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
        # meta is kept for the grace too, so the member does not blink.
        grace = session.close_reason == CloseReason.TRANSPORT_LOST or (
            session.close_reason == CloseReason.CLOSED
            and session.close_code not in (1000, None)
        ) or session.close_code == CloseCode.DRAINING
        await tracker.leave(session, LeaveReason.CLOSED, grace=grace)

    def _presence_visibility(self, session: SessionState) -> None:
        if self._presence_tracker is not None:
            self._presence_tracker.visibility_changed(session)

    async def presence_diff(self, event: dict[str, Any]) -> None:
        """Forward a room's coalesced ``presence.diff`` (already public) to the client."""
        session, send = self._presence_session, self._presence_send
        if session is None or session.closed or send is None:
            return
        await send(protocol.presence_diff(event["room"], event["joins"], event["leaves"]))


# The API for apps and views ---------------------------------------------------

async def amembers(room: str) -> dict[str, dict]:
    """Members of a room: key -> {"metas": [...]}, one meta per live session."""
    return public_members(await get_store().members(room))


async def acount(room: str) -> int:
    """Number of members (users, not tabs) in a room."""
    return await get_store().count(room)


async def ais_online(key: str | int) -> bool:
    """Whether a member key (a user's pk) has a live session in any room."""
    return bool(await get_store().rooms_of(str(key)))


async def arooms_of(key: str | int) -> list[str]:
    """Rooms in which a member key (a user's pk) has a live session."""
    return await get_store().rooms_of(str(key))


async def arooms() -> dict[str, int]:
    """Every room with members, and its member count."""
    return await get_store().rooms()


def _sync(coro_function):
    async def oneshot(*args):
        store = get_store()
        # A sync caller gets a store with clients of its own, closed at once, so
        # no connection outlives the event loop async_to_sync made for it; and it
        # never waits longer than the store timeout (the admin must not hang).
        own = store.fork() if hasattr(store, "fork") else store
        try:
            return await asyncio.wait_for(coro_function(own, *args),
                                          conf.get("PRESENCE_STORE_TIMEOUT"))
        finally:
            if own is not store:
                await own.close()

    def sync_twin(*args):
        return async_to_sync(oneshot)(*args)

    sync_twin.__doc__ = f"Sync twin of a{coro_function.__name__.lstrip('_')}()."
    return sync_twin


async def _members(store, room):
    return public_members(await store.members(room))


async def _count(store, room):
    return await store.count(room)


async def _is_online(store, key):
    return bool(await store.rooms_of(str(key)))


async def _rooms_of(store, key):
    return await store.rooms_of(str(key))


async def _rooms(store):
    return await store.rooms()


members = _sync(_members)
count = _sync(_count)
is_online = _sync(_is_online)
rooms_of = _sync(_rooms_of)
rooms = _sync(_rooms)

__all__ = [
    "PresenceMixin", "amembers", "acount", "ais_online", "arooms_of", "arooms",
    "members", "count", "is_online", "rooms_of", "rooms",
]
