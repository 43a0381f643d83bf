"""The tracker against the real Redis: round trips per tick do not grow with sessions, and
its diffs are numbered per room and process."""

import asyncio
import json
import shutil
import uuid
from pathlib import Path

import pytest
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from heartbeat_app import announcer, stores, tracker
from heartbeat_app.consumers import HeartbeatMixin
from heartbeat_app.state import SessionState

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


# Diff sequence numbers (docs/protocol.md#diff-sequence-numbers) ---------------------------

REPLAY = Path(__file__).resolve().parent / "js" / "replay.mjs"


class Lobby(HeartbeatMixin, AsyncJsonWebsocketConsumer):
    presence_rooms = ["lobby"]


async def frames_of(layer, channel: str) -> list[dict]:
    """Every message waiting in a channel of the in-memory layer."""
    frames = []
    while True:
        try:
            frames.append(await asyncio.wait_for(layer.receive(channel), 0.05))
        except TimeoutError:
            return frames


async def test_diffs_are_numbered_per_room_and_origin_across_two_processes(
        redis_presence, make_runtime):
    """Two trackers on one Redis, as two server processes: each numbers its own diffs of each
    room 1, 2, 3..., and a state says where the sequence of the process that sent it is."""
    runtime = make_runtime()  # stepped by hand
    store_a = stores.get_store()
    stores.reset_store()
    store_b = stores.get_store()
    a, b = tracker.Tracker(runtime, store_a), tracker.Tracker(runtime, store_b)
    layer = get_channel_layer()
    states: list[dict] = []

    async def join(on, key: str, rooms: list[str]) -> SessionState:
        state = SessionState(tab=f"t{key}", interval=None, timeout=None, user_key=key,
                             channel=await layer.new_channel())
        async def send(message):
            states.append(message)
        await on.join(state, rooms, {}, layer=layer, send=send)
        return state

    watcher = await join(a, "1", ["r1", "r2"])
    assert [s["seqs"] for s in states] == [
        {a.announcer.sequences["r1"].origin: 0}, {a.announcer.sequences["r2"].origin: 0}]
    await a.step()  # r1 1 and r2 1 from A: the watcher's own join
    await join(b, "2", ["r1"])
    await b.step()  # r1 1 from B
    await join(a, "3", ["r1", "r2"])
    await a.step()  # r1 2 and r2 2 from A
    await join(b, "4", ["r1"])
    await b.step()  # r1 2 from B
    seen: dict[tuple[str, str], list[int]] = {}
    for diff in await frames_of(layer, watcher.channel):
        assert diff["type"] == "presence.diff"
        seen.setdefault((diff["room"], diff["origin"]), []).append(diff["seq"])
    origin = {(name, room): t.announcer.sequences[room].origin
              for name, t in (("a", a), ("b", b)) for room in ("r1", "r2")
              if room in t.announcer.sequences}
    assert seen == {(room, origin[name, room]): [1, 2]
                    for name, room in (("a", "r1"), ("a", "r2"), ("b", "r1"))}
    assert len(set(origin.values())) == 3, "one sequence per room and process"
    # A newcomer's state from B names B's sequence of r1 where it is: 2.
    states.clear()
    await join(b, "5", ["r1"])
    assert states[-1]["seqs"] == {origin["b", "r1"]: 2}
    await store_a.flush()
    await store_a.close()
    await store_b.close()


async def test_a_sequence_idle_for_long_is_forgotten_and_comes_back_as_a_new_origin(
        redis_presence, make_runtime, fake_clock):
    runtime = make_runtime()
    active = tracker.Tracker(runtime, stores.get_store())
    old = active.announcer.sequence("quiet")
    old.seq = 5
    fake_clock.advance(announcer.SEQUENCE_IDLE + 1)
    await active.announcer.flush(fake_clock.monotonic())
    assert "quiet" not in active.announcer.sequences
    new = active.announcer.sequence("quiet")
    assert new.origin != old.origin and new.seq == 0
    await active.store.close()


async def replay(frames: list[dict]) -> list[dict]:
    """What the bundled JS client sends after these server frames (tests/js/replay.mjs)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    process = await asyncio.create_subprocess_exec(
        node, str(REPLAY), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(process.communicate(json.dumps(frames).encode()), 30)
    assert process.returncode == 0
    return json.loads(out)


async def test_a_diff_dropped_on_the_way_makes_the_client_ask_for_the_state(
        redis_presence, make_runtime, monkeypatch):
    """The channel layer drops one diff (channels_redis does, to a channel over capacity):
    the bundled client sees its number skipped and joins the room again, which resends the
    state, with the member it missed; the next diff follows that state without a gap."""
    make_runtime()  # the tracker is stepped by hand
    layer = get_channel_layer()
    original, dropped = layer.group_send, []

    async def lossy_group_send(group, message):
        if message["type"] == "presence.diff" and armed and not dropped:
            dropped.append(message)
            return
        await original(group, message)

    armed = False
    monkeypatch.setattr(layer, "group_send", lossy_group_send)

    async def connect(tab: str) -> WebsocketCommunicator:
        communicator = WebsocketCommunicator(Lobby.as_asgi(), f"/ws/?tab={tab}")
        assert (await communicator.connect())[0]
        return communicator

    async def arrive(tab: str) -> WebsocketCommunicator:
        communicator = await connect(tab)
        for _ in ("hello", "presence_state"):  # once its state is out, its join has landed
            await communicator.receive_json_from()
        return communicator

    watcher = await connect("w")
    frames = [await watcher.receive_json_from(), await watcher.receive_json_from()]
    assert [f["type"] for f in frames] == ["hello", "presence_state"]
    active = tracker.get_tracker()
    await active.step()
    frames.append(await watcher.receive_json_from())  # its own join: seq 1
    armed = True
    alice = await connect("alice")
    alice_session = (await alice.receive_json_from())["session"]
    await alice.receive_json_from()  # its state: its join has landed
    await active.step()
    assert dropped and dropped[0]["seq"] == 2
    assert await watcher.receive_nothing(timeout=0.1)
    bob = await arrive("bob")
    await active.step()
    frames.append(await watcher.receive_json_from())
    assert [(f["type"], f.get("seq")) for f in frames[2:]] == [
        ("presence_diff", 1), ("presence_diff", 3)]
    requests = await replay(frames)
    assert requests == [{"type": "join", "room": "lobby"}]
    for request in requests:
        await watcher.send_json_to(request)
    state = await watcher.receive_json_from()
    frames.append(state)
    assert state["type"] == "presence_state" and state["seqs"] == {frames[3]["origin"]: 3}
    assert alice_session in {meta["session"] for member in state["members"].values()
                             for meta in member["metas"]}
    carol = await arrive("carol")
    await active.step()
    frames.append(await watcher.receive_json_from())
    assert frames[-1]["seq"] == 4
    assert await replay(frames) == requests, "asked once: the state started the count afresh"
    for communicator in (watcher, alice, bob, carol):
        await communicator.disconnect(code=1000)
    await active.store.flush()
    await active.store.close()


async def test_a_room_without_a_list_limit_gets_its_diffs(redis_presence, make_runtime, settings):
    """PRESENCE_FULL_LIST_MAX = None: always the list, and the diffs still go out, numbered."""
    settings.PRESENCE_FULL_LIST_MAX = None
    make_runtime()
    watcher = WebsocketCommunicator(Lobby.as_asgi(), "/ws/?tab=w")
    assert (await watcher.connect())[0]
    await watcher.receive_json_from()  # hello
    state = await watcher.receive_json_from()
    await tracker.get_tracker().step()
    diff = await watcher.receive_json_from()
    assert diff["type"] == "presence_diff" and diff["seq"] == 1
    assert list(state["seqs"]) == [diff["origin"]]
    await watcher.disconnect(code=1000)
    active = tracker.get_tracker()
    await active.store.flush()
    await active.store.close()
