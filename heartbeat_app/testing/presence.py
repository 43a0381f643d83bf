"""Presence helpers for tests: what a room holds, and members on a worker that dies.

One process runs every consumer of a test, so another worker is stood in for by
its members: ``join_remote_member()`` writes a member to the presence store as
another server instance would, and ``simulate_instance_lost()`` makes that
instance look dead and runs a reaper pass, as the reaper would find it on the
memory store or on Redis: its members leave with reason ``instance_lost``.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from .. import conf
from .errors import HeartbeatTestError

#: The instance id join_remote_member() uses unless told another.
REMOTE_INSTANCE = "remote-worker:0:test"


def _tracker():
    """The tracker of the running loop (on the active HeartbeatClock's runtime, if any)."""
    from ..tracker import get_tracker
    from .clock import active_clock

    clock = active_clock()
    if clock is not None:
        clock.install()
    return get_tracker()


async def _flush() -> None:
    from .clock import active_clock

    clock = active_clock()
    if clock is not None and clock.drives():
        await clock.flush()


def _ms(setting: str) -> int:
    return int(conf.get(setting) * 1000)


async def presence_snapshot(room: str) -> dict[str, dict[str, Any]]:
    """The members of ``room`` as clients see them: key -> ``{"metas": [...]}``.

    Under a HeartbeatClock the tracker's tick runs first, so changes queued so far
    (a visibility change, say) are in.
    """
    from ..presence import amembers

    _tracker()
    await _flush()
    return await amembers(room)


async def assert_member(room: str, key: str | int, visible: bool | None = None) -> dict:
    """Fail unless ``key`` is a member of ``room``; returns its entry (``{"metas": [...]}``).

    ``visible=True``: at least one of its tabs is visible; ``visible=False``: none is.
    """
    members = await presence_snapshot(room)
    key = str(key)
    if key not in members:
        raise HeartbeatTestError(
            f"{key!r} is not a member of room {room!r}; its members: {sorted(members)}.")
    metas = members[key]["metas"]
    if visible is not None:
        shown = sum(1 for meta in metas if meta.get("visible"))
        if bool(shown) != visible:
            raise HeartbeatTestError(
                f"Member {key!r} of room {room!r} is {'visible' if shown else 'hidden'} "
                f"({shown} of {len(metas)} tabs visible), expected "
                f"{'visible' if visible else 'hidden'}.")
    return members[key]


async def assert_not_member(room: str, key: str | int) -> None:
    """Fail if ``key`` is a member of ``room``."""
    members = await presence_snapshot(room)
    if str(key) in members:
        raise HeartbeatTestError(
            f"{str(key)!r} is a member of room {room!r}, with "
            f"{len(members[str(key)]['metas'])} tabs.")


async def join_remote_member(room: str, key: str | int, meta: dict[str, Any] | None = None, *,
                             instance: str = REMOTE_INSTANCE) -> dict[str, Any]:
    """Put ``key`` in ``room`` through another server instance; returns its meta.

    The room sees a join as from any member, and the instance beats once, so
    simulate_instance_lost(instance) has a worker to lose.
    """
    tracker = _tracker()
    if instance == tracker.instance:
        raise ValueError("join_remote_member() needs another instance than this process's.")
    store = tracker.store
    full = {**(meta or {}), "session": uuid.uuid4().hex, "key": str(key),
            "tab": secrets.token_urlsafe(9), "visible": True,
            "online_at": tracker.clock.wall_ms(), "instance": instance, "channel": "",
            "ref": secrets.token_urlsafe(6)}
    changes = await store.join(room, full, _ms("PRESENCE_TTL"))
    await store.refresh(instance, _ms("PRESENCE_INSTANCE_TTL"), _ms("PRESENCE_TTL"),
                        [(room, full["session"])], {"host": "remote", "pid": 0})
    tracker.reaper.queue(changes)  # into the room's next diff, as the reaper's changes go
    await _flush()
    return full


async def simulate_instance_lost(instance_id: str) -> list[dict[str, str]]:
    """Make a server instance look dead and run a reaper pass; returns what it held.

    The instance's last beat is moved past PRESENCE_INSTANCE_TTL, then the reaper
    runs as it does every PRESENCE_REAP_INTERVAL: its metas are removed from the
    store (the Lua script on Redis), their channels discarded from the layer's
    groups, the rooms get a ``presence_diff`` whose leaves carry the reason
    ``instance_lost``, and ``member_left`` is sent for members left with no tab.
    Returns ``{"room", "key", "session"}`` of each meta the instance held.
    """
    tracker = _tracker()
    if instance_id == tracker.instance:
        raise ValueError(
            f"{instance_id!r} is this process, whose sessions are alive. Put members on "
            "another instance with join_remote_member(), or drop a connection with "
            "disconnect(code=1006).")
    store = tracker.store
    held = []
    for room in sorted(await store.rooms()):
        for key, member in (await store.members(room)).items():
            held += [{"room": room, "key": key, "session": meta["session"]}
                     for meta in member["metas"] if meta.get("instance") == instance_id]
    instance_ttl = _ms("PRESENCE_INSTANCE_TTL")
    # Last beat at the epoch: lost to any reaper, whatever the store's clock says.
    await store.refresh(instance_id, instance_ttl, _ms("PRESENCE_TTL"), [], None, now_ms=0)
    lease = min(_ms("PRESENCE_REAP_INTERVAL") * 3, instance_ttl)
    if not await store.acquire_lease("reaper", tracker.instance, lease):
        raise HeartbeatTestError(
            "Another process holds the reaper's lease in this presence store, so this one "
            "cannot reap. Give the test a PRESENCE_KEY_PREFIX of its own (heartbeat_clock "
            "does).")
    tracker.reaper.last_reap = float("-inf")  # due now
    await tracker.reaper.maybe_reap(tracker.clock.monotonic())
    await _flush()
    return held
