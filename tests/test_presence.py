"""Presence through real consumers (WebsocketCommunicator), the memory store and a shrunk tick."""

import asyncio
from types import SimpleNamespace
from urllib.parse import quote

import pytest
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.testing import WebsocketCommunicator

from heartbeat_app import presence, signals, stores, tracker
from heartbeat_app.consumers import HeartbeatMixin
from heartbeat_app.scheduler import Scheduler
from heartbeat_app.stores import MemoryStore

MS = 0.001
TICK = 50 * MS
GRACE = 300 * MS


class RoomConsumer(HeartbeatMixin, AsyncJsonWebsocketConsumer):
    heartbeat_interval = 2.0
    heartbeat_timeout = 1.0

    def get_presence_rooms(self):
        return [self.scope["url_route"]["kwargs"]["room"]]

    def get_presence_meta(self):
        return {"nick": self.scope.get("nick", "")}


def user(pk):
    return SimpleNamespace(pk=pk, is_authenticated=True)


@pytest.fixture(autouse=True)
def fresh_presence(settings):
    settings.HEARTBEAT_TICK = TICK
    settings.PRESENCE_LEAVE_GRACE = GRACE
    settings.PRESENCE_STORE = "memory"
    stores.reset_store()
    yield
    stores.reset_store()


@pytest.fixture
async def clock(make_runtime, fake_clock):
    """The fake clock: the tracker ticks by itself, the scheduler only when stepped."""
    fake_clock.runtime = make_runtime(autostart={"tracker"})
    fake_clock.scheduler = fake_clock.runtime.service(Scheduler)
    return fake_clock


async def join(room="lobby", tab="t1", **scope):
    communicator = WebsocketCommunicator(
        RoomConsumer.as_asgi(), f"/ws/rooms/{room}/?tab={tab}"
    )
    communicator.scope["url_route"] = {"kwargs": {"room": room}}
    communicator.scope.update(scope)
    connected, _ = await communicator.connect()
    assert connected
    hello = await communicator.receive_json_from()
    state = await communicator.receive_json_from()
    assert state["type"] == "presence_state"
    return communicator, hello, state


async def next_diff(communicator, timeout=2.0):
    while True:
        message = await communicator.receive_json_from(timeout=timeout)
        if message["type"] == "presence_diff":
            return message


async def test_newcomer_gets_state_and_the_room_gets_a_diff(clock):
    alice, alice_hello, state = await join(tab="a", user=user(1), nick="alice")
    [origin] = state["seqs"]
    assert state == {"type": "presence_state", "room": "lobby", "count": 1, "members": {
        "1": {"metas": [state["members"]["1"]["metas"][0]]}}, "seqs": {origin: 0}}
    meta = state["members"]["1"]["metas"][0]
    assert meta["session"] == alice_hello["session"]
    assert meta["nick"] == "alice" and meta["visible"] is True
    assert "tab" not in meta, "a tab id is never shown to other clients"
    assert "channel" not in meta and "instance" not in meta
    assert await next_diff(alice) == {"type": "presence_diff", "room": "lobby",
                                      "joins": {"1": {"metas": [meta]}}, "leaves": {},
                                      "seq": 1, "origin": origin}
    bob, _, state = await join(tab="b", user=user(2))
    assert sorted(state["members"]) == ["1", "2"]
    diff = await next_diff(alice)
    assert list(diff["joins"]) == ["2"] and diff["leaves"] == {}
    assert (diff["seq"], diff["origin"]) == (2, origin)
    await bob.disconnect(code=1000)
    diff = await next_diff(alice)
    assert list(diff["leaves"]) == ["2"]
    assert diff["leaves"]["2"]["metas"][0]["reason"] == "closed"
    assert await presence.amembers("lobby") == {"1": {"metas": [meta]}}
    await alice.disconnect(code=1000)


async def test_three_tabs_are_one_member_and_closing_one_is_no_leave(clock):
    events = []

    def on_joined(sender, room, key, **kwargs):
        events.append(("joined", room, key))

    def on_left(sender, room, key, reason, **kwargs):
        events.append(("left", room, key, reason))

    signals.member_joined.connect(on_joined)
    signals.member_left.connect(on_left)
    try:
        tabs = [await join(tab=f"t{i}", user=user(7)) for i in range(3)]
        assert await presence.acount("lobby") == 1
        members = await presence.amembers("lobby")
        assert len(members["7"]["metas"]) == 3
        await tabs[0][0].disconnect(code=1000)
        await asyncio.sleep(3 * TICK)
        assert len((await presence.amembers("lobby"))["7"]["metas"]) == 2
        assert events == [("joined", "lobby", "7")]
        await tabs[1][0].disconnect(code=1000)
        await tabs[2][0].disconnect(code=1000)
        await asyncio.sleep(3 * TICK)
        assert events == [("joined", "lobby", "7"), ("left", "lobby", "7", "closed")]
        assert await presence.amembers("lobby") == {}
        assert not await presence.ais_online(7)
    finally:
        signals.member_joined.disconnect(on_joined)
        signals.member_left.disconnect(on_left)


async def test_zombie_close_leaves_at_once_with_reason_timeout(clock):
    watcher, _, _ = await join(tab="w", user=user(1))
    await next_diff(watcher)
    zombie, hello, _ = await join(tab="z", user=user(2))
    await next_diff(watcher)
    # Only the zombie is silent: keep the watcher talking while time moves.
    for _ in range(6):
        clock.now += 0.5
        await watcher.send_json_to({"type": "ping", "id": 1})
        await asyncio.sleep(0.01)  # let the watcher's frame be read
        await clock.scheduler.step()
    diff = await next_diff(watcher)
    assert list(diff["leaves"]) == ["2"]
    assert diff["leaves"]["2"]["metas"][0]["reason"] == "timeout"
    assert diff["leaves"]["2"]["metas"][0]["session"] == hello["session"]
    await zombie.disconnect()
    await watcher.disconnect()


async def test_transport_loss_leaves_after_the_grace(clock):
    watcher, _, _ = await join(tab="w", user=user(1))
    await next_diff(watcher)
    lost, _, _ = await join(tab="l", user=user(2))
    await next_diff(watcher)
    await lost.disconnect(code=1006)
    clock.advance(GRACE - TICK)
    assert await watcher.receive_nothing(timeout=5 * TICK)  # still within the grace
    clock.advance(TICK)
    diff = await next_diff(watcher)
    assert list(diff["leaves"]) == ["2"]
    assert diff["leaves"]["2"]["metas"][0]["reason"] == "closed"
    await watcher.disconnect()


async def test_reload_within_the_grace_does_not_blink(clock):
    left = []

    def on_left(sender, key, **kwargs):
        left.append(key)

    signals.member_left.connect(on_left)
    try:
        watcher, _, _ = await join(tab="w", user=user(1))
        await next_diff(watcher)
        first, _, _ = await join(tab="same-tab&anon=")  # asks for a token
        identity = await first.receive_json_from()
        key = identity["key"]
        diff = await next_diff(watcher)
        assert list(diff["joins"]) == [key]
        await first.disconnect(code=1001)  # a reload: going away
        # The reloaded page presents the token it was given, and the same tab id.
        second, hello, state = await join(tab=f"same-tab&anon={quote(identity['token'])}")
        assert [m["session"] for m in state["members"][key]["metas"]] == [hello["session"]]
        diff = await next_diff(watcher)
        # The old meta is replaced, the member never left.
        assert diff["leaves"][key]["metas"][0]["reason"] == "replaced"
        assert diff["joins"][key]["metas"][0]["session"] == hello["session"]
        clock.advance(GRACE)
        await asyncio.sleep(3 * TICK)
        assert left == []
        assert list(await presence.amembers("lobby")) == ["1", key]
        await second.disconnect(code=1000)
        await watcher.disconnect(code=1000)
    finally:
        signals.member_left.disconnect(on_left)


async def test_visibility_change_reaches_the_room(clock):
    watcher, _, _ = await join(tab="w", user=user(1))
    await next_diff(watcher)
    hider, hello, _ = await join(tab="h", user=user(2))
    await next_diff(watcher)
    await hider.send_json_to({"type": "ping", "id": 1, "visible": False})
    diff = await next_diff(watcher)
    assert diff["leaves"]["2"]["metas"][0]["reason"] == "update"
    assert diff["joins"]["2"]["metas"][0]["visible"] is False
    assert diff["joins"]["2"]["metas"][0]["ref"] != diff["leaves"]["2"]["metas"][0]["ref"]
    members = await presence.amembers("lobby")
    assert members["2"]["metas"][0]["visible"] is False
    await hider.disconnect(code=1000)
    await watcher.disconnect(code=1000)


async def test_a_storm_of_joins_is_coalesced_into_few_diffs(clock, settings):
    settings.PRESENCE_BROADCAST_INTERVAL = 0.5
    watcher, _, _ = await join(tab="w", user=user(0))
    await next_diff(watcher)
    broadcasts = clock.runtime.metrics.broadcasts
    before = broadcasts.value()
    crowd = await asyncio.gather(*[join(tab=f"c{i}", user=user(i + 1)) for i in range(30)])
    joined = set()
    while len(joined) < 30:
        clock.advance(0.5)
        diff = await next_diff(watcher)
        joined |= set(diff["joins"])
    assert broadcasts.value() - before <= 3
    for communicator, _, _ in crowd:
        await communicator.disconnect(code=1000)
    await watcher.disconnect(code=1000)


async def test_rooms_api_and_sync_twins(clock):
    a, _, _ = await join(room="alpha", tab="a", user=user(5))
    b, _, _ = await join(room="beta", tab="b", user=user(5))
    assert await presence.arooms_of(5) == ["alpha", "beta"]
    assert await presence.arooms() == {"alpha": 1, "beta": 1}
    assert await presence.ais_online("5")
    assert not await presence.ais_online(6)
    from asgiref.sync import sync_to_async

    assert await sync_to_async(presence.rooms_of)(5) == ["alpha", "beta"]
    assert await sync_to_async(presence.count)("alpha") == 1
    assert await sync_to_async(presence.is_online)(5)
    await a.disconnect(code=1000)
    await b.disconnect(code=1000)


# A trailing newline once passed (re.match with "$"), and the reaper splits "room\nsession".
BAD_ROOMS = ["no spaces allowed", "lobby\n", "\nlobby", "lob\nby", "", "x" * 81, "sp ce"]


@pytest.mark.parametrize("room", BAD_ROOMS)
async def test_bad_room_name_is_refused(clock, room):
    communicator = WebsocketCommunicator(RoomConsumer.as_asgi(), "/ws/rooms/x/")
    communicator.scope["url_route"] = {"kwargs": {"room": room}}
    await communicator.connect()
    assert (await communicator.receive_json_from())["type"] == "hello"
    # An error frame and 4400 (no reconnect: retrying cannot fix the name), no traceback.
    error = await communicator.receive_json_from()
    assert (error["type"], error["code"]) == ("error", "invalid_room")
    closed = await communicator.receive_output()
    assert closed == {"type": "websocket.close", "code": 4400}
    assert await presence.arooms() == {}


def test_room_names_match_whole():
    from heartbeat_app import protocol

    assert protocol.valid_room_name("lobby") and protocol.valid_room_name("a.b-c_" + "x" * 74)
    assert not any(protocol.valid_room_name(room) for room in BAD_ROOMS)
    assert not protocol.valid_room_name(7)


class _LateStore(MemoryStore):
    """The memory store, answering joins late (as a busy process would serve them)."""

    delay = 0.0

    async def join(self, *args, **kwargs):
        await asyncio.sleep(self.delay)
        return await super().join(*args, **kwargs)


async def test_a_late_store_call_on_a_lagging_loop_is_not_an_outage(make_runtime, settings):
    """Slowness of our own loop retries the join later; it never flips presence to degraded."""
    settings.PRESENCE_STORE_TIMEOUT = 0.05
    runtime = make_runtime(autostart=False)  # the tracker is stepped by hand
    store = _LateStore()
    store.delay = 0.2
    active = runtime.replace(tracker.Tracker(runtime, store))
    stores._store = store  # noqa: SLF001 (the process's store, as get_store() returns it)
    runtime.lag = 0.5
    communicator = WebsocketCommunicator(RoomConsumer.as_asgi(), "/ws/rooms/lobby/?tab=late")
    communicator.scope["url_route"] = {"kwargs": {"room": "lobby"}}
    await communicator.connect()
    hello = await communicator.receive_json_from()
    assert hello["type"] == "hello"
    await asyncio.sleep(0.15)  # the join gives up after the 50 ms store timeout
    assert not active.degraded and active.unsynced_joins
    store.delay = 0.0
    runtime.lag = 0.0
    await active.step()
    state = await communicator.receive_json_from()
    assert state["type"] == "presence_state"
    assert [m["session"] for member in state["members"].values() for m in member["metas"]] == [
        hello["session"]]
    assert not active.degraded and not active.unsynced_joins
    assert runtime.metrics.outages.value() == 0
    assert runtime.metrics.store_calls_late.value() >= 1
    await communicator.disconnect(code=1000)


async def test_a_first_visible_true_makes_no_diff_and_a_reported_rtt_is_kept(clock):
    """Metas start visible; a client that pings by itself reports its round trip."""
    watcher, _, _ = await join(tab="w", user=user(1))
    await next_diff(watcher)
    pinger, hello, _ = await join(tab="p", user=user(2))
    await next_diff(watcher)  # its join
    await pinger.send_json_to({"type": "ping", "id": 1, "visible": True, "rtt_ms": 42.5})
    while (await pinger.receive_json_from())["type"] != "pong":
        pass  # its own join's diff may come first
    assert await watcher.receive_nothing(timeout=6 * TICK)  # no update, no diff
    session = next(s for s in clock.scheduler.sessions if s.id == hello["session"])
    assert session.rtt == pytest.approx(0.0425) and session.visible is True
    await pinger.send_json_to({"type": "ping", "id": 2, "visible": False})
    diff = await next_diff(watcher)
    assert diff["leaves"]["2"]["metas"][0]["reason"] == "update"
    await pinger.disconnect()
    await watcher.disconnect()
