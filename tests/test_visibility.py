"""Visibility changes cost one store write and one diff a tick at most, none when undone.

A client that flips ``visible`` on every frame (a tab switched back and forth, or a
client doing it on purpose) must not make a store write and a room-wide diff for each
flip: the tracker keeps the last value seen in a tick and writes it once, and not at
all when the tick ends where it began.
"""

import asyncio

import pytest
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.testing import WebsocketCommunicator

from heartbeat_app import stores
from heartbeat_app.consumers import HeartbeatMixin
from heartbeat_app.stores import MemoryStore
from heartbeat_app.tracker import Tracker


class CountingStore(MemoryStore):
    """The memory store, counting the meta updates it is sent."""

    def __init__(self):
        super().__init__()
        self.updates = 0

    async def update(self, room, meta, ttl_ms, now_ms=None):
        self.updates += 1
        return await super().update(room, meta, ttl_ms, now_ms)


class Lobby(HeartbeatMixin, AsyncJsonWebsocketConsumer):
    heartbeat_interval = 10.0
    heartbeat_timeout = 5.0

    def get_presence_rooms(self):
        return ["lobby"]


@pytest.fixture
async def room(settings, make_runtime, monkeypatch):
    settings.PRESENCE_STORE = "memory"
    settings.HEARTBEAT_RATE_LIMIT = 1000.0  # the flips, not the ping budget, are under test
    settings.HEARTBEAT_RATE_BURST = 1000
    settings.HEARTBEAT_MESSAGE_RATE = 1000.0
    settings.HEARTBEAT_MESSAGE_BURST = 1000
    runtime = make_runtime()  # the tracker is stepped by the test: one step, one tick
    store = CountingStore()
    monkeypatch.setattr(stores, "_store", store)
    tracker = runtime.replace(Tracker(runtime, store))
    clients = []
    for tab in ("flipper", "watcher"):
        communicator = WebsocketCommunicator(Lobby.as_asgi(), f"/ws/?tab={tab}")
        assert (await communicator.connect())[0]
        hello = await communicator.receive_json_from()
        assert hello["type"] == "hello"
        communicator.session = hello["session"]
        clients.append(communicator)
    await tick(tracker)
    for communicator in clients:
        await drain(communicator)
    yield tracker, store, *clients
    for communicator in clients:
        await communicator.disconnect()


async def tick(tracker):
    for _ in range(10):
        await asyncio.sleep(0)
    await tracker.step()
    for _ in range(10):
        await asyncio.sleep(0)


async def drain(communicator):
    """Every frame the client has been sent so far."""
    frames = []
    while not await communicator.receive_nothing(timeout=0.05):
        frames.append(await communicator.receive_json_from())
    return frames


async def flip(communicator, times, start=1):
    for n in range(times):
        visible = n % 2 == 1  # hidden first: the metas start visible
        await communicator.send_json_to({"type": "ping", "id": start + n, "visible": visible})
        while (await communicator.receive_json_from())["type"] != "pong":
            pass  # the room's diffs of the joins around it


def diffs(frames, session):
    """The diffs that tell of ``session``'s meta (the room's joins settle in their own time)."""
    return [f for f in frames if f["type"] == "presence_diff"
            and any(m["session"] == session for part in ("joins", "leaves")
                    for member in f[part].values() for m in member["metas"])]


async def test_many_flips_in_one_tick_are_one_write_and_one_diff_of_the_last(room):
    tracker, store, flipper, watcher = room
    await flip(flipper, 21)  # ends hidden
    assert store.updates == 0  # nothing written before the tick
    await tick(tracker)
    assert store.updates == 1
    seen = diffs(await drain(watcher), flipper.session)
    assert len(seen) == 1, seen
    (member,) = seen[0]["joins"].values()
    assert [m["visible"] for m in member["metas"]] == [False]


async def test_flips_that_end_where_they_began_write_nothing_and_tell_nobody(room):
    tracker, store, flipper, watcher = room
    await flip(flipper, 20)  # hidden, visible, ... visible: as the room last saw it
    await tick(tracker)
    assert store.updates == 0
    assert diffs(await drain(watcher), flipper.session) == []
    await flip(flipper, 1, start=100)  # a real change still goes out at the next tick
    await tick(tracker)
    assert store.updates == 1 and len(diffs(await drain(watcher), flipper.session)) == 1
