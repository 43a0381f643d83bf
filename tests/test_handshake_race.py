"""A session that ends while its open path still awaits: nothing of it stays behind.

The server can end a session at any await of the open path: the scheduler closes a
zombie, a drain or an operator sends it away, while the store's join is still on the
way. The join then lands after the leave found nothing to remove. Each test ends the
session at one of those awaits and checks the store, the recorder and the room.
"""

import asyncio

import pytest
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.testing import WebsocketCommunicator

from heartbeat_app import stores
from heartbeat_app.consumers import HeartbeatMixin
from heartbeat_app.recorder import Recorder
from heartbeat_app.stores import MemoryStore
from heartbeat_app.tracker import Tracker

TICK = 0.05


class HeldStore(MemoryStore):
    """The memory store; its joins wait until the test lets them through."""

    def __init__(self):
        super().__init__()
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    async def join_many(self, entries, ttl_ms, now_ms=None, *, tab_cap=None):
        self.reached.set()
        await self.release.wait()
        return await super().join_many(entries, ttl_ms, now_ms, tab_cap=tab_cap)


class Lobby(HeartbeatMixin, AsyncJsonWebsocketConsumer):
    heartbeat_interval = 2.0
    heartbeat_timeout = 1.0

    def get_presence_rooms(self):
        return ["lobby"]

    async def can_join_presence(self, room):
        hook = self.scope.get("hook")
        if hook is not None:
            await hook.wait()
        return True


@pytest.fixture
async def held(settings, make_runtime, monkeypatch):
    settings.HEARTBEAT_TICK = TICK
    settings.PRESENCE_LEAVE_GRACE = 0.3
    settings.PRESENCE_STORE = "memory"
    settings.HEARTBEAT_RECORD_SESSIONS = True
    runtime = make_runtime()  # services stepped by the test
    store = HeldStore()
    monkeypatch.setattr(stores, "_store", store)  # the process's store
    tracker = runtime.replace(Tracker(runtime, store))
    yield runtime, store, tracker
    store.release.set()
    stores.reset_store()


async def opened(**scope):
    communicator = WebsocketCommunicator(Lobby.as_asgi(), "/ws/?tab=t1")
    communicator.scope.update(scope)
    connected, _ = await communicator.connect()
    assert connected
    hello = await communicator.receive_json_from()
    assert hello["type"] == "hello"
    return communicator, hello["session"]


async def settle(runtime, tracker, rounds=20):
    for _ in range(rounds):
        await asyncio.sleep(0)
    for _ in range(3):
        await tracker.step()
        await asyncio.sleep(0)


@pytest.mark.parametrize("how", ["zombie", "drain"])
async def test_a_session_ended_while_its_join_is_on_the_way_leaves_nothing_behind(held, how):
    runtime, store, tracker = held
    communicator, session_id = await opened()
    await asyncio.wait_for(store.reached.wait(), 2)  # the join is in the store's hands
    recorder = runtime.service(Recorder)
    assert session_id in recorder.local  # known to the recorder before the first await
    if how == "zombie":
        session = next(s for s in recorder.local.values() if s.id == session_id)
        await session.on_zombie(3.0)
    else:
        await runtime.closers[session_id](0)
    assert session_id not in recorder.local and session_id in recorder.closes
    store.release.set()  # the join lands after the leave
    if how == "drain":
        runtime.fake_clock.advance(1.0)  # past the leave grace a drained tab is given
    await settle(runtime, tracker)
    assert await store.members("lobby") == {}, "the late join was left in the store"
    assert session_id not in tracker.local
    assert session_id not in recorder.local
    assert session_id not in runtime.closers
    await communicator.disconnect()


async def test_a_session_ended_while_the_room_hook_runs_joins_nothing(held):
    runtime, store, tracker = held
    hook = asyncio.Event()
    communicator, session_id = await opened(hook=hook)
    recorder = runtime.service(Recorder)
    session = recorder.local[session_id]
    await session.on_zombie(3.0)
    hook.set()
    store.release.set()
    await settle(runtime, tracker)
    assert not store.reached.is_set(), "a session already gone was sent to the store"
    assert await store.members("lobby") == {}
    assert session_id not in tracker.local and session_id not in recorder.local
    await communicator.disconnect()
