"""Presence driven while connected: join, leave, presence_update, broadcast, big rooms."""

import asyncio
from types import SimpleNamespace

import pytest
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.testing import WebsocketCommunicator
from django.core.exceptions import ValidationError

from heartbeat_app import lane, presence, stores
from heartbeat_app.consumers import HeartbeatMixin
from heartbeat_app.runtime import get_runtime

TICK = 0.05


class Live(HeartbeatMixin, AsyncJsonWebsocketConsumer):
    """Starts in the rooms of ``?rooms=``; private-* rooms need a signed-in user."""

    heartbeat_interval = 2.0
    heartbeat_timeout = 1.0

    def get_presence_rooms(self):
        return list(self.scope.get("rooms", ["lobby"]))

    def can_join_presence(self, room):
        user = self.scope.get("user")
        return not room.startswith("private-") or getattr(user, "is_authenticated", False)

    def clean_presence_state(self, room, state):
        if state.get("status") not in (None, "available", "busy"):
            raise ValidationError("status must be available or busy")
        return state

    async def receive_json(self, content, **kwargs):
        await self.send_json({"echo": content})


class Enriched(Live):
    def fetch_presence(self, room, members):
        return {key: {**value, "name": f"user {key}"} for key, value in members.items()}


class OwnProtocol(Live):
    presence_client_messages = False


def user(pk):
    return SimpleNamespace(pk=pk, is_authenticated=True)


@pytest.fixture(autouse=True)
async def live(settings, make_runtime):
    settings.HEARTBEAT_TICK = TICK
    settings.PRESENCE_STORE = "memory"
    settings.PRESENCE_LEAVE_GRACE = 0
    stores.reset_store()
    runtime = make_runtime(autostart={"tracker"})
    yield runtime
    stores.reset_store()


async def client(pk, rooms=("lobby",), consumer=Live):
    communicator = WebsocketCommunicator(consumer.as_asgi(), f"/ws/?tab=t{pk}")
    communicator.scope.update(rooms=list(rooms), user=user(pk))
    assert (await communicator.connect())[0]
    assert (await communicator.receive_json_from())["type"] == "hello"
    communicator.states = [await communicator.receive_json_from() for _ in rooms]
    return communicator


async def next_of(communicator, kind, timeout=2.0, **match):
    """The next message of a type (and fields), skipping others."""
    while True:
        message = await communicator.receive_json_from(timeout=timeout)
        if message["type"] == kind and all(message.get(k) == v for k, v in match.items()):
            return message


async def test_join_while_connected_sends_the_state_and_the_room_sees_the_join():
    watcher = await client(1, rooms=["b"])
    mover = await client(2, rooms=["a"])
    await mover.send_json_to({"type": "join", "room": "b"})
    state = await next_of(mover, "presence_state", room="b")
    assert set(state["members"]) == {"1", "2"} and state["count"] == 2
    diff = await next_of(watcher, "presence_diff", room="b")
    while "2" not in diff["joins"]:  # its own join may come first
        diff = await next_of(watcher, "presence_diff", room="b")
    assert "1" not in diff["leaves"]
    # Joining a room it is in: no new join, the state again.
    await mover.send_json_to({"type": "join", "room": "b"})
    assert (await next_of(mover, "presence_state", room="b"))["count"] == 2
    assert await presence.arooms_of(2) == ["a", "b"]
    for c in (watcher, mover):
        await c.disconnect()


async def test_leave_is_seen_with_reason_left_and_ends_that_rooms_presence():
    watcher = await client(1, rooms=["a"])
    leaver = await client(2, rooms=["a", "b"])
    await next_of(watcher, "presence_diff", room="a")
    await leaver.send_json_to({"type": "leave", "room": "a"})
    diff = await next_of(watcher, "presence_diff", room="a")
    assert diff["leaves"]["2"]["metas"][0]["reason"] == "left"
    assert await presence.arooms_of(2) == ["b"]
    await watcher.send_json_to({"type": "presence_update", "room": "a",
                                "state": {"status": "busy"}})
    # The leaver hears nothing more of room a; a request there is not_in_room.
    await leaver.send_json_to({"type": "broadcast", "room": "a", "event": "typing"})
    error = await next_of(leaver, "error")
    assert error == {"type": "error", "code": "not_in_room", "room": "a",
                     "detail": "This session is not in the room."}
    assert await leaver.receive_nothing(timeout=5 * TICK)
    for c in (watcher, leaver):
        await c.disconnect()


async def test_presence_update_sets_the_state_and_refusals_say_why():
    watcher = await client(1)
    busy = await client(2)
    await next_of(watcher, "presence_diff")
    await busy.send_json_to({"type": "presence_update", "room": "lobby",
                             "state": {"status": "busy", "session": "forged"}})
    diff = await next_of(watcher, "presence_diff")
    assert diff["leaves"]["2"]["metas"][0]["reason"] == "update"
    meta = diff["joins"]["2"]["metas"][0]
    assert meta["state"] == {"status": "busy", "session": "forged"}
    assert meta["session"] != "forged"  # server fields cannot be overwritten
    await busy.send_json_to({"type": "presence_update", "room": "lobby",
                             "state": {"status": "asleep"}})
    error = await next_of(busy, "error")
    assert (error["code"], error["detail"]) == ("invalid_state",
                                                "status must be available or busy")
    await busy.send_json_to({"type": "presence_update", "room": "lobby",
                             "state": {"blob": "x" * 2000}})
    assert (await next_of(busy, "error"))["code"] == "invalid_state"
    for c in (watcher, busy):
        await c.disconnect()


async def test_broadcast_reaches_the_others_throttled_latest_wins(settings):
    settings.PRESENCE_SIGNAL_RATE = 5.0  # a window of 200 ms
    typist = await client(1)
    reader = await client(2)
    for n in range(5):
        await typist.send_json_to({"type": "broadcast", "room": "lobby", "event": "typing",
                                   "data": {"n": n}})
    first = await next_of(reader, "broadcast")
    assert first == {"type": "broadcast", "room": "lobby", "event": "typing", "from": "1",
                     "data": {"n": 0}}
    last = await next_of(reader, "broadcast", timeout=1.0)
    assert last["data"] == {"n": 4}  # the ones in between were replaced
    assert await reader.receive_nothing(timeout=0.3)
    while not await typist.receive_nothing(timeout=0.05):  # the sender gets no echo
        message = await typist.receive_json_from()
        assert message["type"] != "broadcast"
    for c in (typist, reader):
        await c.disconnect()


async def test_a_big_room_gets_a_count_instead_of_members_and_diffs(settings):
    settings.PRESENCE_FULL_LIST_MAX = 2
    settings.PRESENCE_COUNT_INTERVAL = 0.1
    small = [await client(pk) for pk in (1, 2)]
    assert small[1].states[0]["count"] == 2 and set(small[1].states[0]["members"]) == {"1", "2"}
    third = await client(3)
    assert third.states[0] == {"type": "presence_state", "room": "lobby", "count": 3}
    count = await next_of(small[0], "presence_count")
    assert count == {"type": "presence_count", "room": "lobby", "count": 3}
    for c in [*small, third]:
        await c.disconnect()


async def test_a_full_room_refuses_a_join_and_a_private_one_an_anonymous_join(settings):
    settings.PRESENCE_MAX_MEMBERS = 1
    first = await client(1, rooms=["one"])
    second = await client(2, rooms=["two"])
    await second.send_json_to({"type": "join", "room": "one"})
    error = await next_of(second, "error")
    assert (error["code"], error["room"]) == ("room_full", "one")
    assert await presence.arooms_of(2) == ["two"]
    anonymous = WebsocketCommunicator(Live.as_asgi(), "/ws/?tab=anon")
    anonymous.scope["rooms"] = ["three"]
    assert (await anonymous.connect())[0]
    await next_of(anonymous, "presence_state")
    await anonymous.send_json_to({"type": "join", "room": "private-x"})
    error = await next_of(anonymous, "error")
    assert (error["code"], error["room"]) == ("room_forbidden", "private-x")
    assert await presence.amembers("private-x") == {}
    for c in (first, second, anonymous):
        await c.disconnect()


async def test_fetch_presence_completes_states_and_diffs():
    watcher = await client(1, consumer=Enriched)
    assert watcher.states[0]["members"]["1"]["name"] == "user 1"
    newcomer = await client(2, consumer=Enriched)
    diff = await next_of(watcher, "presence_diff")
    assert diff["joins"]["2"]["name"] == "user 2"
    for c in (watcher, newcomer):
        await c.disconnect()


async def test_a_consumer_with_its_own_join_message_gets_it_untouched():
    own = await client(1, consumer=OwnProtocol)
    await own.send_json_to({"type": "join", "room": "elsewhere"})
    assert (await own.receive_json_from()) == {"echo": {"type": "join", "room": "elsewhere"}}
    await own.disconnect()


class Driven(Live):
    """Moves its session by the app's own messages, through the Python API."""

    presence_client_messages = False

    async def receive_json(self, content, **kwargs):
        room = content["room"]
        if content["do"] == "join":
            ok = await self.presence_join(room)
        elif content["do"] == "status":
            ok = await self.presence_update(room, lambda state: {**state, "status": "busy"})
        else:
            ok = await self.presence_leave(room)
        await self.send_json({"done": content["do"], "ok": ok})


async def test_the_python_api_joins_updates_and_leaves():
    watcher = await client(1, rooms=["hall"])
    driven = await client(2, consumer=Driven)

    async def do(action, room):
        await driven.send_json_to({"do": action, "room": room})
        while True:
            message = await driven.receive_json_from()
            if message.get("done") == action:
                return message["ok"]

    def states(diff):  # a diff may hold the join and the update both (coalesced)
        return [m.get("state") for m in diff["joins"].get("2", {}).get("metas", [])]

    def reasons(diff):
        return [m["reason"] for m in diff["leaves"].get("2", {}).get("metas", [])]

    assert await do("join", "hall")
    assert await presence.acount("hall") == 2
    assert await do("status", "hall")
    diff = await next_of(watcher, "presence_diff", room="hall")
    while {"status": "busy"} not in states(diff):
        diff = await next_of(watcher, "presence_diff", room="hall")
    assert await do("leave", "hall")
    while "left" not in reasons(diff):
        diff = await next_of(watcher, "presence_diff", room="hall")
    assert not await do("leave", "hall")  # not in it any more
    assert await do("join", "private-club")  # signed in: allowed
    assert await presence.arooms_of(2) == ["lobby", "private-club"]
    for c in (watcher, driven):
        await c.disconnect()


class Hooked(Live):
    """Keeps its own group of each room it is in: joined and left through the hooks."""

    async def presence_joined(self, room):
        self.scope.setdefault("events", []).append(("joined", room))

    def presence_left(self, room, reason):
        self.scope.setdefault("events", []).append(("left", room, reason))


async def test_the_join_and_leave_hooks_run_after_a_move_while_connected():
    c = await client(1, consumer=Hooked)
    events = c.scope.setdefault("events", [])
    await c.send_json_to({"type": "join", "room": "b"})
    await next_of(c, "presence_state", room="b")
    await c.send_json_to({"type": "join", "room": "b"})  # already in: no second event
    await next_of(c, "presence_state", room="b")
    await c.send_json_to({"type": "leave", "room": "b"})
    await c.send_json_to({"type": "leave", "room": "b"})  # not in: refused, no event
    await next_of(c, "error")
    assert events == [("joined", "b"), ("left", "b", "left")]
    await c.disconnect()


async def tab(pk, name, rooms=("lobby",)):
    """A tab ``name`` of user ``pk``, connected; its hello read, nothing else."""
    communicator = WebsocketCommunicator(Live.as_asgi(), f"/ws/?tab={name}")
    communicator.scope.update(rooms=list(rooms), user=user(pk))
    assert (await communicator.connect())[0]
    assert (await communicator.receive_json_from())["type"] == "hello"
    return communicator


async def test_a_member_over_its_tab_cap_is_refused_too_many_tabs_and_stays_connected(settings):
    settings.PRESENCE_MAX_TABS_PER_MEMBER = 2
    first, second = await tab(1, "a"), await tab(1, "b")
    for c in (first, second):
        assert (await c.receive_json_from())["type"] == "presence_state"
    # A third tab at connect: the error, nothing of the room, and the connection stays.
    third = await tab(1, "c", rooms=["lobby", "hall"])
    state = await third.receive_json_from()
    assert (state["type"], state["room"]) == ("presence_state", "hall")  # under the cap there
    error = await third.receive_json_from()
    assert error == {"type": "error", "code": "too_many_tabs", "room": "lobby",
                     "detail": "This member has too many tabs in the room already."}
    later = []
    while not await third.receive_nothing(timeout=6 * TICK):
        later.append(await third.receive_json_from())
    assert [f for f in later if f.get("room") == "lobby"] == [], "nothing of the lobby"
    assert len((await presence.amembers("lobby"))["1"]["metas"]) == 2
    # The join frame gets the same refusal; another member is not concerned.
    await third.send_json_to({"type": "join", "room": "lobby"})
    error = await next_of(third, "error")
    assert (error["code"], error["room"]) == ("too_many_tabs", "lobby")
    other = await tab(2, "a")
    assert (await other.receive_json_from())["type"] == "presence_state"
    # Once a tab leaves, the same join goes through.
    await first.disconnect(code=1000)
    for _ in range(100):
        if len((await presence.amembers("lobby"))["1"]["metas"]) == 1:
            break
        await third.receive_nothing(timeout=TICK)
    await third.send_json_to({"type": "join", "room": "lobby"})
    state = await next_of(third, "presence_state", room="lobby")
    assert len(state["members"]["1"]["metas"]) == 2
    for c in (second, third, other):
        await c.disconnect()


async def test_a_reload_of_a_tab_is_never_refused_by_the_tab_cap(settings):
    """The same member and tab id replaces its meta: at the cap, a reload still joins."""
    settings.PRESENCE_MAX_TABS_PER_MEMBER = 1
    old = await tab(1, "a")
    await old.receive_json_from()
    new = await tab(1, "a")
    state = await new.receive_json_from()
    assert state["type"] == "presence_state"
    members = await presence.amembers("lobby")
    assert len(members["1"]["metas"]) == 1  # replaced, not added
    assert await presence.acount("lobby") == 1
    for c in (old, new):
        await c.disconnect()


async def test_no_tab_cap_reads_nothing_more_from_the_store(settings):
    settings.PRESENCE_MAX_TABS_PER_MEMBER = None
    tabs = [await tab(1, f"t{i}") for i in range(12)]  # more than the default cap
    for c in tabs:
        assert (await c.receive_json_from())["type"] == "presence_state"
    assert len((await presence.amembers("lobby"))["1"]["metas"]) == 12
    for c in tabs:
        await c.disconnect()


async def test_presence_messages_skip_channels_database_hop_and_others_keep_it(monkeypatch):
    """presence.diff/count/broadcast run at once; an app's own message, or a handler the
    app overrides, still gets Channels' aclose_old_connections() first."""
    import channels.consumer

    hops = []

    async def counted():
        hops.append(1)

    monkeypatch.setattr(channels.consumer, "aclose_old_connections", counted)
    seen = []

    class Room(HeartbeatMixin, AsyncJsonWebsocketConsumer):
        async def chat_message(self, event):
            seen.append(event["type"])

    class Overriding(Room):
        async def presence_count(self, event):
            seen.append(event["type"])

    room = Room()
    for kind in ("presence.diff", "presence.count", "presence.broadcast"):
        await room.dispatch({"type": kind, "room": "lobby", "joins": {}, "leaves": {},
                             "count": 1, "event": "typing", "from": "k", "data": {}})
    assert hops == []
    await room.dispatch({"type": "chat.message"})
    assert (hops, seen) == ([1], ["chat.message"])
    await Overriding().dispatch({"type": "presence.count", "room": "lobby", "count": 1})
    assert (hops, seen) == ([1, 1], ["chat.message", "presence.count"])


async def test_a_signal_crosses_the_layer_once_per_process_and_stops_at_a_leave():
    from channels.layers import get_channel_layer

    from heartbeat_app.lane import signal_group

    layer = get_channel_layer()
    typist, *readers = [await client(pk) for pk in (1, 2, 3)]
    # One channel for the process in the room's signal group, however many members.
    assert len(layer.groups[signal_group("lobby")]) == 1
    await typist.send_json_to({"type": "broadcast", "room": "lobby", "event": "typing",
                               "data": {"n": 1}})
    for reader in readers:
        assert (await next_of(reader, "broadcast"))["data"] == {"n": 1}
    await readers[0].send_json_to({"type": "leave", "room": "lobby"})
    await next_of(typist, "presence_diff")  # the leave is through
    await typist.send_json_to({"type": "broadcast", "room": "lobby", "event": "typing",
                               "data": {"n": 2}})
    assert (await next_of(readers[1], "broadcast"))["data"] == {"n": 2}
    while not await readers[0].receive_nothing(timeout=5 * TICK):
        assert (await readers[0].receive_json_from())["type"] != "broadcast"
    for c in (typist, *readers):
        await c.disconnect()
    for _ in range(100):  # the process leaves the group once nobody is left
        if not layer.groups.get(signal_group("lobby")):
            break
        await asyncio.sleep(TICK / 5)
    assert not layer.groups.get(signal_group("lobby"))


async def test_signals_beyond_the_fanout_budget_wait_and_the_latest_of_each_sender_wins(
        settings, live):
    settings.PRESENCE_SIGNAL_RATE = None  # every signal leaves its sender at once
    settings.PRESENCE_SIGNAL_FANOUT = 20  # frames a second: a burst of 5, 5 signals a pass
    senders = [await client(pk) for pk in (1, 2, 3)]
    reader = await client(4)
    started = asyncio.get_running_loop().time()
    for n in range(10):
        for sender in senders:
            await sender.send_json_to({"type": "broadcast", "room": "lobby",
                                       "event": "typing", "data": {"n": n}})
    last, got = {}, 0
    while set(last.values()) != {9} or len(last) < 3:
        signal = await next_of(reader, "broadcast", timeout=5.0)
        last[signal["from"]] = signal["data"]["n"]
        got += 1
    elapsed = asyncio.get_running_loop().time() - started
    metrics = live.metrics
    assert got < 30  # some were replaced by a later one of the same sender
    assert metrics.signals_replaced.value() >= 30 - got
    # Each signal costs 3 frames (the room's other members); the budget bounds them all: a
    # burst of a quarter second, and one pass (at most a second's worth) in debt.
    assert metrics.signal_frames.value() <= 20 * (elapsed + 0.25) + 20
    for c in (*senders, reader):
        await c.disconnect()


async def signals_of(communicator, room="lobby", timeout=2.0):
    """The next signal frame of ``room``, as a list of (from, event, data), and its type."""
    frame = None
    while frame is None:
        message = await communicator.receive_json_from(timeout=timeout)
        if message["type"] in ("broadcast", "broadcasts") and message.get("room") == room:
            frame = message
    signals = frame["signals"] if frame["type"] == "broadcasts" else [frame]
    return frame["type"], [(s["from"], s["event"], s["data"]) for s in signals]


async def test_a_big_room_gets_the_signals_of_a_pass_in_one_frame_and_never_its_own(settings):
    """Above PRESENCE_FULL_LIST_MAX members here, a pass is one ``broadcasts`` frame per
    member, carrying the others' waiting signals; a budget of frames, not of signals."""
    settings.PRESENCE_FULL_LIST_MAX = 2
    settings.PRESENCE_SIGNAL_RATE = None
    settings.PRESENCE_SIGNAL_FANOUT = 8  # frames a second: a burst of 2, one pass a half second
    senders = [await client(pk) for pk in (1, 2, 3)]
    reader = await client(4)
    for n in range(3):
        for sender in senders:
            await sender.send_json_to({"type": "broadcast", "room": "lobby",
                                       "event": "typing", "data": {"n": n}})
    latest, batches, loop = {}, 0, asyncio.get_running_loop()
    started = loop.time()
    while latest != {"1": {"n": 2}, "2": {"n": 2}, "3": {"n": 2}}:
        kind, signals = await signals_of(reader, timeout=5.0)
        batches += kind == "broadcasts"
        assert len({(f, e) for f, e, _ in signals}) == len(signals), "one per sender and event"
        latest.update({f: d for f, _, d in signals})
    assert batches >= 1
    # A sender's frames carry the others' signals only.
    kind, signals = await signals_of(senders[0], timeout=5.0)
    assert signals and all(f != "1" for f, _, _ in signals)
    elapsed = loop.time() - started
    # 4 members, one frame each a pass: the budget's 8 a second plus its burst of 2 and one
    # pass in debt bound every frame, whatever the 9 signals.
    assert get_runtime().metrics.signal_frames.value() <= 8 * (elapsed + 1) + 2 + 4
    for c in (*senders, reader):
        await c.disconnect()


async def test_signals_of_one_room_in_one_emit_window_cross_the_layer_once(settings,
                                                                           monkeypatch):
    """A lone signal leaves at once; those that follow within EMIT_WINDOW leave together, as
    one ``presence.broadcasts`` layer message, and every one of them arrives."""
    from channels.layers import get_channel_layer

    settings.PRESENCE_SIGNAL_RATE = None
    monkeypatch.setattr(lane, "EMIT_WINDOW", 1.0)  # the three land in it on a slow machine too
    layer = get_channel_layer()
    real, sent = layer.group_send, []

    async def counting(group, message):
        if group.startswith("presence-signals."):
            sent.append(message)
        return await real(group, message)

    monkeypatch.setattr(layer, "group_send", counting)
    senders = [await client(pk) for pk in (1, 2, 3)]
    reader = await client(4)
    for sender in senders:
        await sender.send_json_to({"type": "broadcast", "room": "lobby", "event": "typing",
                                   "data": {"n": 1}})
    got = set()
    while got != {"1", "2", "3"}:
        _, signals = await signals_of(reader)
        got.update(f for f, _, _ in signals)
    assert sent[0]["type"] == "presence.broadcast", "the first one leaves at once"
    assert len(sent) < 3 and sent[-1]["type"] == "presence.broadcasts"
    assert sum(len(m.get("signals", [m])) for m in sent) == 3
    for c in (*senders, reader):
        await c.disconnect()


async def test_a_consumer_that_overrides_presence_broadcast_gets_the_signals():
    seen = []

    class Own(Live):
        async def presence_broadcast(self, event):
            seen.append((event["from"], event["data"]))

    typist = await client(1)
    reader = await client(2, consumer=Own)
    await typist.send_json_to({"type": "broadcast", "room": "lobby", "event": "typing",
                               "data": {"n": 7}})
    for _ in range(100):
        if seen:
            break
        await asyncio.sleep(TICK / 5)
    assert seen == [("1", {"n": 7})]
    while not await reader.receive_nothing(timeout=3 * TICK):  # the override sent nothing
        assert (await reader.receive_json_from())["type"] != "broadcast"
    for c in (typist, reader):
        await c.disconnect()


async def test_a_signal_group_the_layer_refused_is_joined_once_it_answers(monkeypatch):
    from channels.layers import get_channel_layer

    from heartbeat_app.lane import signal_group

    layer = get_channel_layer()
    real, failures = layer.group_add, []

    async def flaky(group, channel):
        if group.startswith("presence-signals.") and len(failures) < 2:
            failures.append(group)
            raise ConnectionError("layer away")
        return await real(group, channel)

    monkeypatch.setattr(layer, "group_add", flaky)
    typist = await client(1)
    reader = await client(2)
    for _ in range(100):
        if layer.groups.get(signal_group("lobby")):
            break
        await asyncio.sleep(TICK / 5)
    assert failures and layer.groups.get(signal_group("lobby"))
    await typist.send_json_to({"type": "broadcast", "room": "lobby", "event": "typing",
                               "data": {"n": 1}})
    assert (await next_of(reader, "broadcast"))["data"] == {"n": 1}
    for c in (typist, reader):
        await c.disconnect()
