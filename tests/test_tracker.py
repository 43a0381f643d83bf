"""The tracker's batching against the real Redis: round trips per tick do not grow with sessions."""

import uuid

import pytest
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.testing import WebsocketCommunicator

from heartbeat_app import stores, tracker
from heartbeat_app.consumers import HeartbeatMixin

pytestmark = pytest.mark.redis


class Room(HeartbeatMixin, AsyncJsonWebsocketConsumer):
    def get_presence_rooms(self):
        # 50 rooms, so joining stays cheap: every join reads its room's whole state.
        return [f"batch{int(self.heartbeat_session.tab[1:]) % 50}"]


@pytest.fixture
def redis_presence(settings, redis_url):
    settings.PRESENCE_STORE = "redis"
    settings.PRESENCE_REDIS_URL = redis_url
    settings.PRESENCE_KEY_PREFIX = f"hbtrack-{uuid.uuid4().hex[:8]}"
    settings.PRESENCE_TTL = 30.0
    settings.PRESENCE_REAP_INTERVAL = 3600.0
    settings.HEARTBEAT_TICK = 1.0
    stores.reset_store()
    yield
    stores.reset_store()


def store_calls(active) -> int:
    """Store calls the tracker has made, every operation together."""
    return sum(series["count"] for series in active.metrics.store_seconds.values.values())


async def round_trips_per_tick(sessions: int) -> tuple[int, int]:
    communicators = []
    for i in range(sessions):
        communicator = WebsocketCommunicator(Room.as_asgi(), f"/ws/?tab=t{i}")
        assert (await communicator.connect())[0]
        communicators.append(communicator)
    for communicator in communicators:
        await communicator.receive_json_from()  # hello
        await communicator.receive_json_from()  # presence_state
    active = tracker.get_tracker()
    store = active.store
    assert sum((await store.rooms()).values()) == sessions
    await active.stop()  # measure our own tick alone, not the background one
    active.reaper.last_reap = active.clock.monotonic()  # the reaper (2 calls a pass) is apart
    for local in active.local.values():
        local.refreshed = -1e9  # every session due for its refresh at this tick
    calls = store_calls(active)
    await active.step()
    per_tick = store_calls(active) - calls
    refreshed = sum(1 for local in active.local.values() if local.refreshed > 0)
    for communicator in communicators:
        await communicator.disconnect(code=1000)
    await store.flush()
    await store.close()
    return per_tick, refreshed


async def test_round_trips_per_tick_do_not_grow_with_sessions(redis_presence):
    small, refreshed_small = await round_trips_per_tick(10)
    large, refreshed_large = await round_trips_per_tick(1000)
    print(f"\n[tracker] store round trips per tick: {small} at 10 sessions, "
          f"{large} at 1,000 sessions")
    assert refreshed_small == 10 and refreshed_large == 1000
    # One refresh call, and one count read of the rooms whose diffs go out.
    assert small == large == 2
