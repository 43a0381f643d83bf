"""Presence for apps and views: who is in a room, where a member is, when last seen.

The async functions below, and their sync twins for views and the admin. The
consumer side (rooms, metas, client requests) is ``PresenceMixin``, in
presence_consumer.py, re-exported here.
"""

from __future__ import annotations

import asyncio
import logging

from asgiref.sync import async_to_sync

from . import conf, protocol
from .presence_consumer import PresenceMixin
from .stores import get_store

logger = logging.getLogger(__name__)

ROOM_NAME = protocol.ROOM_NAME
public_members = protocol.public_members


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


def last_seen(key: str | int):
    """When a member key was last heard from, from the session history; None if never.

    A member online now returns the last checkpoint of its sessions (at most
    HEARTBEAT_CHECKPOINT_INTERVAL old); use ``ais_online()`` for "now".
    """
    from django.db.models import Max
    from django.db.models.functions import Coalesce

    from .models import Session

    return Session.objects.filter(user_key=str(key)).aggregate(
        seen=Max(Coalesce("closed_at", "last_seen_at")))["seen"]


async def alast_seen(key: str | int):
    """Async twin of last_seen()."""
    from channels.db import database_sync_to_async

    return await database_sync_to_async(last_seen)(key)


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
    "members", "count", "is_online", "rooms_of", "rooms", "alast_seen", "last_seen",
]
