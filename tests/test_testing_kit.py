"""heartbeat_app.testing: the kit for people who test consumers that use the mixin."""

import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import pytest
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.test import SimpleTestCase, TransactionTestCase

from heartbeat_app import conf
from heartbeat_app.consumers import HeartbeatMixin
from heartbeat_app.testing import (
    SIGNALS,
    FakeClock,
    HeartbeatClock,
    HeartbeatCommunicator,
    HeartbeatTestError,
    HeartbeatTestMixin,
    assert_member,
    assert_not_member,
    capture_signals,
    join_remote_member,
    plugin,
    presence_snapshot,
    simulate_instance_lost,
)
from heartbeat_app.tracker import get_tracker

ROOT = Path(__file__).resolve().parent.parent
INTERVAL, TIMEOUT = 2.0, 1.0

# The kit's fixtures (the plugin's entry point loads them once the package is installed).
heartbeat_clock, heartbeat_signals = plugin.heartbeat_clock, plugin.heartbeat_signals


class Room(HeartbeatMixin, AsyncJsonWebsocketConsumer):
    """Presence in ``lobby``, an echo of every other frame."""

    heartbeat_interval = INTERVAL
    heartbeat_timeout = TIMEOUT
    presence_rooms = ["lobby"]

    async def receive_json(self, content, **kwargs):
        await self.send_json({"echo": content})


def user(pk):
    return SimpleNamespace(pk=pk, is_authenticated=True)


def client(pk=1, tab="t1", path="/ws/lobby/", **kwargs):
    return HeartbeatCommunicator(Room.as_asgi(), path, user=user(pk) if pk else None, tab=tab,
                                 **kwargs)


# The clocks -----------------------------------------------------------------------------


def test_fake_clock_has_the_suites_api():
    clock = FakeClock()
    assert (clock.monotonic(), clock.wall(), clock.elapsed) == (1000.0, 1_800_000_000.0, 0.0)
    assert clock.advance(1.5) is None
    assert (clock.now, clock.wall(), clock.elapsed) == (1001.5, 1_800_000_001.5, 1.5)
    clock.now = 1010.0
    assert (clock.elapsed, clock.wall()) == (10.0, 1_800_000_010.0)
    clock.elapsed = 20.0
    assert (clock.monotonic(), clock.wall_ms()) == (1020.0, 1_800_000_020_000)
    assert (FakeClock(5.0, 7.0).now, FakeClock(5.0, 7.0).wall()) == (5.0, 7.0)


async def test_advance_closes_a_silent_client_at_interval_plus_timeout(
        heartbeat_clock, heartbeat_signals):
    async with client(1, "w") as watcher, client(2, "z") as zombie:
        await zombie.go_silent()
        await heartbeat_clock.advance(INTERVAL + TIMEOUT - 0.001)
        assert await zombie.receive_json_from() == {"type": "ping", "id": "s1"}
        assert await zombie.receive_nothing(timeout=0.01)
        await heartbeat_clock.advance(0.001)
        assert await zombie.receive_close() == {
            "type": "websocket.close", "code": 4408, "reason": "heartbeat timeout"}
        zombie_detected, = heartbeat_signals.of("zombie_detected")
        assert (zombie_detected["session"].id, zombie_detected["silence"]) == (
            zombie.session_id, pytest.approx(INTERVAL + TIMEOUT))
        diff = await watcher.receive_presence_diff("lobby", leaves=2)
        assert diff["leaves"]["2"]["metas"][0]["reason"] == "timeout"
        assert watcher.probes_answered == 1 and not watcher.heartbeat_session.closed


async def test_a_live_client_answers_every_probe_by_itself(heartbeat_clock):
    async with client() as alive:
        await heartbeat_clock.advance(100 * INTERVAL)
        assert alive.probes_answered == 100  # one an interval: each answer restarts it
        assert alive.heartbeat_session.rtt == 0.0  # answered at once, on the fake clock
        assert await alive.receive_nothing(timeout=0.01)
        assert heartbeat_clock.elapsed == 100 * INTERVAL


async def test_advance_runs_the_tracker_so_a_lost_tab_leaves_after_its_grace(
        heartbeat_clock, settings):
    settings.PRESENCE_LEAVE_GRACE = 5.0
    async with client(1, "w") as watcher:
        lost = client(2, "l")
        await lost.connect()
        await lost.disconnect(code=1006)
        await heartbeat_clock.advance(4.9)
        await assert_member("lobby", 2)
        await heartbeat_clock.advance(0.1)
        await assert_not_member("lobby", 2)
        diff = await watcher.receive_presence_diff("lobby", leaves=2)
        assert diff["leaves"]["2"]["metas"][0]["reason"] == "closed"


async def test_advance_goes_forward_only_and_setting_now_runs_nothing(heartbeat_clock):
    with pytest.raises(ValueError, match="forward"):
        await heartbeat_clock.advance(-1)
    async with client() as alive:
        await alive.go_silent()
        heartbeat_clock.now += 10 * INTERVAL  # time moves, no check runs
        assert await alive.receive_nothing(timeout=0.01)
        await heartbeat_clock.advance(0)  # the checks overdue run now
        assert (await alive.receive_json_from())["type"] == "ping"


async def test_sessions_opened_before_the_clock_are_reported(heartbeat_clock):
    plain = WebsocketCommunicator(Room.as_asgi(), "/ws/lobby/")
    await plain.connect()
    with pytest.raises(HeartbeatTestError, match="before the heartbeat clock"):
        heartbeat_clock.install()
    await plain.disconnect()


def test_the_clock_is_the_processs_until_deactivated():
    clock = HeartbeatClock().activate()
    try:
        with pytest.raises(HeartbeatTestError, match="active already"):
            HeartbeatClock().activate()
        assert conf.get("PRESENCE_KEY_PREFIX").startswith("heartbeat:test:")
    finally:
        clock.deactivate()
    assert conf.get("PRESENCE_KEY_PREFIX") == "heartbeat"


# The communicator -------------------------------------------------------------------------


async def test_connect_reads_hello_the_states_and_identity(heartbeat_clock):
    async with client(0, "tab-7", path="/ws/lobby/?anon=") as anonymous:
        assert anonymous.hello["type"] == "hello" and anonymous.tab == "tab-7"
        assert anonymous.hello["interval_ms"] == INTERVAL * 1000
        assert anonymous.session_id == anonymous.heartbeat_session.id
        key = anonymous.identity["key"]
        assert key.startswith("anon:") and anonymous.member_key == key
        assert list(anonymous.presence_states["lobby"]["members"]) == [key]
        await anonymous.send_json_to({"first": "frame"})
        assert await anonymous.receive_json_from() == {"echo": {"first": "frame"}}


async def test_connect_records_a_refused_room_and_leaves_the_close(heartbeat_clock):
    from project.consumers import RoomConsumer

    refused = HeartbeatCommunicator(RoomConsumer.as_asgi(), "/ws/rooms/private-x/")
    refused.scope["url_route"] = {"kwargs": {"room": "private-x"}}
    assert (await refused.connect())[0]
    assert refused.presence_refusals["private-x"]["code"] == "room_forbidden"
    assert refused.presence_states == {} and refused.identity is None
    assert (await refused.receive_close())["code"] == 4401
    await refused.disconnect(code=4401)


async def test_ping_returns_its_pong_and_frames_keep_their_order(heartbeat_clock):
    async with client() as talker:
        await talker.send_json_to({"n": 1})
        pong = await talker.ping()
        assert pong["type"] == "pong" and pong["id"] == "c1"
        assert await talker.receive_json_from() == {"echo": {"n": 1}}
        assert (await talker.ping())["id"] == "c2"


async def test_a_silent_communicator_that_expects_a_pong_fails(heartbeat_clock):
    async with client() as silent:
        await silent.go_silent()
        with pytest.raises(HeartbeatTestError, match="silent communicator"):
            await silent.ping()
        with pytest.raises(HeartbeatTestError, match="sends nothing"):
            await silent.send_json_to({"n": 1})
        await heartbeat_clock.advance(INTERVAL + TIMEOUT)
        await silent.resume()
        with pytest.raises(HeartbeatTestError, match=r"closed the connection \(code 4408"):
            await silent.ping()


async def test_a_helper_that_waits_in_vain_says_what_came_instead(heartbeat_clock):
    async with client(inline_presence=True) as waiting:
        await waiting.send_json_to({"n": 1})
        with pytest.raises(HeartbeatTestError, match=r"No presence_diff of room 'elsewhere'.*"
                                                     r"received meanwhile: .*presence_diff"):
            await waiting.receive_presence_diff("elsewhere", timeout=0.05)
        assert await waiting.receive_json_from() == {"echo": {"n": 1}}


async def test_set_visible_reaches_the_session_and_the_room(heartbeat_clock):
    async with client(1, "w") as watcher, client(2, "h") as hider:
        await watcher.receive_presence_diff("lobby")
        pong = await hider.set_visible(False)
        assert pong["type"] == "pong" and hider.heartbeat_session.visible is False
        diff = await watcher.receive_presence_diff("lobby")
        assert diff["leaves"]["2"]["metas"][0]["reason"] == "update"
        assert diff["joins"]["2"]["metas"][0]["visible"] is False
        await assert_member("lobby", 2, visible=False)
        await hider.ping()  # later pings report the tab hidden too
        assert hider.heartbeat_session.visible is False


async def test_presence_diffs_are_set_aside_unless_inline(heartbeat_clock):
    async with client(1) as apart, client(2, inline_presence=True) as inline:
        await heartbeat_clock.advance(conf.tick())
        assert await apart.receive_nothing(timeout=0.01)
        assert (await inline.receive_json_from())["type"] == "presence_diff"
        assert (await apart.receive_presence_diff("lobby"))["joins"].keys() == {"1", "2"}


class Rooms(Room):
    """Rooms joined while connected; private ones refused, states need a status."""

    def can_join_presence(self, room):
        return not room.startswith("private-")

    def clean_presence_state(self, room, state):
        if "status" not in state:
            raise ValidationError("A status, please.")
        return state


def rooms_client(pk, tab):
    return HeartbeatCommunicator(Rooms.as_asgi(), "/ws/lobby/", user=user(pk), tab=tab)


async def test_join_leave_set_presence_and_broadcast(heartbeat_clock):
    async with rooms_client(1, "a") as alice, rooms_client(2, "b") as bob:
        state = await alice.join("kitchen")
        assert list(state["members"]) == ["1"] and alice.presence_states["kitchen"] == state
        await bob.join("kitchen")
        assert "2" in (await alice.receive_presence_diff("kitchen", joins=2))["joins"]
        await bob.set_presence("kitchen", {"status": "busy"})
        diff = await alice.receive_presence_diff("kitchen", leaves=2)
        assert diff["leaves"]["2"]["metas"][0]["reason"] == "update"
        assert diff["joins"]["2"]["metas"][0]["state"] == {"status": "busy"}
        await bob.broadcast("kitchen", "typing", {"on": True})
        assert await alice.receive_broadcast("kitchen", "typing") == {
            "type": "broadcast", "room": "kitchen", "event": "typing", "from": "2",
            "data": {"on": True}}
        await bob.leave("kitchen")
        assert "kitchen" not in bob.presence_states
        diff = await alice.receive_presence_diff("kitchen", leaves=2)
        assert diff["leaves"]["2"]["metas"][0]["reason"] == "left"
        await assert_not_member("kitchen", 2)
        await assert_member("lobby", 2)
        with pytest.raises(HeartbeatTestError, match="join of room 'private-x' refused: "
                                                     "room_forbidden"):
            await alice.join("private-x")
        assert alice.presence_refusals["private-x"]["code"] == "room_forbidden"
        with pytest.raises(HeartbeatTestError, match="leave of room 'kitchen' refused: "
                                                     "not_in_room"):
            await bob.leave("kitchen")
        with pytest.raises(HeartbeatTestError, match=r"invalid_state \(A status, please.\)"):
            await alice.set_presence("kitchen", {"mood": "fine"})
        await alice.send_json_to({"n": 1})
        assert await alice.receive_json_from() == {"echo": {"n": 1}}, "no answer left over"


async def test_a_big_room_sends_counts(heartbeat_clock, settings):
    settings.PRESENCE_FULL_LIST_MAX = 1
    async with client(1) as first, client(2) as second:
        assert second.presence_states["lobby"] == {
            "type": "presence_state", "room": "lobby", "count": 2}
        await heartbeat_clock.advance(conf.get("PRESENCE_COUNT_INTERVAL"))
        assert (await first.receive_presence_count("lobby"))["count"] == 2


async def test_a_big_rooms_broadcasts_frame_is_received_as_its_signals(heartbeat_clock):
    """What a big room sends (one ``broadcasts`` frame a pass) reads as one ``broadcast``
    each, the others waiting for the next calls, in order."""
    from heartbeat_app.presence_messages import broadcasts_text, signal_text

    async with client(1) as alice:
        text = broadcasts_text("lobby", [signal_text("typing", "2", {"n": 1}),
                                         signal_text("cursor", "3", [4, 5]),
                                         signal_text("typing", "3", None)])
        await alice.output_queue.put({"type": "websocket.send", "text": text})
        cursor = await alice.receive_broadcast("lobby", "cursor")
        assert cursor == {"type": "broadcast", "room": "lobby", "event": "cursor",
                          "from": "3", "data": [4, 5]}
        assert [(f["from"], f["data"]) for f in [
            await alice.receive_broadcast("lobby"), await alice.receive_broadcast("lobby")]
        ] == [("2", {"n": 1}), ("3", None)]
        with pytest.raises(HeartbeatTestError):
            await alice.receive_broadcast("lobby", timeout=0.1)


# Presence helpers ------------------------------------------------------------------------


async def test_presence_snapshot_and_member_assertions(heartbeat_clock):
    async with client(1, "a1") as tab1, client(1, "a2") as tab2:
        snapshot = await presence_snapshot("lobby")
        assert len(snapshot["1"]["metas"]) == 2
        assert "tab" not in snapshot["1"]["metas"][0], "as clients see it"
        await tab1.set_visible(False)
        assert (await assert_member("lobby", 1, visible=True))["metas"]
        await tab2.set_visible(False)
        await assert_member("lobby", "1", visible=False)
        with pytest.raises(HeartbeatTestError, match=r"is hidden \(0 of 2 tabs visible\)"):
            await assert_member("lobby", 1, visible=True)
        with pytest.raises(HeartbeatTestError, match=r"'9' is not a member.*\['1'\]"):
            await assert_member("lobby", 9)
        with pytest.raises(HeartbeatTestError, match="is a member"):
            await assert_not_member("lobby", 1)
        await assert_not_member("lobby", 9)


async def test_members_of_a_lost_instance_leave_through_the_reaper(
        heartbeat_clock, heartbeat_signals):
    async with client(1) as watcher:
        meta = await join_remote_member("lobby", "carol", {"nick": "C"}, instance="w2:1:x")
        diff = await watcher.receive_presence_diff("lobby")
        assert diff["joins"]["carol"]["metas"][0]["nick"] == "C"
        assert "instance" not in diff["joins"]["carol"]["metas"][0]
        assert await simulate_instance_lost("w2:1:x") == [
            {"room": "lobby", "key": "carol", "session": meta["session"]}]
        diff = await watcher.receive_presence_diff("lobby")
        assert diff["leaves"]["carol"]["metas"][0]["reason"] == "instance_lost"
        left = heartbeat_signals.of("member_left")
        assert [(m["key"], m["reason"]) for m in left] == [("carol", "instance_lost")]
        await assert_member("lobby", 1)
        with pytest.raises(ValueError, match="this process"):
            await simulate_instance_lost(get_tracker().instance)
        with pytest.raises(ValueError, match="another instance"):
            await join_remote_member("lobby", "x", instance=get_tracker().instance)


@pytest.fixture
def on_redis(settings, redis_url):
    """The layer and the presence store on the suite's Redis server, as a project sets it."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                           "CONFIG": {"hosts": [redis_url]}}}
    return redis_url


@pytest.mark.redis
async def test_the_kit_on_redis(on_redis):
    import redis.asyncio as aioredis

    from heartbeat_app.stores import get_store
    from heartbeat_app.stores.redis import RedisStore

    async with HeartbeatClock() as clock:
        assert isinstance(get_store(), RedisStore)
        prefix = get_store().prefix
        async with client(1, "w") as watcher, client(2, "z") as zombie:
            await watcher.receive_presence_diff("lobby")
            await zombie.go_silent()
            await clock.advance(INTERVAL + TIMEOUT)
            assert (await zombie.receive_close())["code"] == 4408
            diff = await watcher.receive_presence_diff("lobby")
            assert diff["leaves"]["2"]["metas"][0]["reason"] == "timeout"
            await join_remote_member("lobby", "carol", instance="w2:1:x")
            assert "carol" in (await watcher.receive_presence_diff("lobby"))["joins"]
            assert len(await simulate_instance_lost("w2:1:x")) == 1
            diff = await watcher.receive_presence_diff("lobby")
            assert diff["leaves"]["carol"]["metas"][0]["reason"] == "instance_lost"
            assert list(await presence_snapshot("lobby")) == ["1"]
            await watcher.join("kitchen")
            await watcher.set_presence("kitchen", {"status": "busy"})
            assert (await presence_snapshot("kitchen"))["1"]["metas"][0]["state"] == {
                "status": "busy"}
    client_ = aioredis.Redis.from_url(on_redis)
    try:
        assert [key async for key in client_.scan_iter(match=f"{prefix}:*")] == []
    finally:
        await client_.aclose()


# Signals ---------------------------------------------------------------------------------


async def test_capture_signals_records_in_order_and_then_lets_go(heartbeat_clock):
    with capture_signals("session_opened", "session_closed") as log:
        async with client():
            pass
    assert log.names() == ["session_opened", "session_closed"]
    assert log.of("session_closed")[0]["sender"] is Room
    assert (log.of("session_closed")[0]["code"], log.of("session_opened")) != (None, [])
    async with client():
        pass
    assert len(log) == 2, "not recording any more"
    with pytest.raises(ValueError, match="No heartbeat signal"):
        with capture_signals("session_openned"):
            pass
    assert set(SIGNALS) == {"session_opened", "zombie_detected", "session_closed",
                            "member_joined", "member_left"}


# Dropping the kit into an existing suite -------------------------------------------------


class Echo(AsyncJsonWebsocketConsumer):
    """A team's consumer before it added the mixin."""

    async def receive_json(self, content, **kwargs):
        await self.send_json({"echo": content})


class EchoWithHeartbeats(HeartbeatMixin, Echo):
    """The same consumer with the mixin and presence added."""

    presence_rooms = ["lobby"]


async def existing_test(communicator, meanwhile=None):
    """A WebsocketCommunicator test as the team wrote it before adding the mixin."""
    connected, _ = await communicator.connect()
    assert connected
    if meanwhile is not None:
        await meanwhile()
    await communicator.send_json_to({"n": 1})
    assert await communicator.receive_json_from() == {"echo": {"n": 1}}
    assert await communicator.receive_nothing()
    await communicator.disconnect()


async def test_the_mixin_breaks_an_existing_websocket_communicator_test(heartbeat_clock):
    communicator = WebsocketCommunicator(EchoWithHeartbeats.as_asgi(), "/ws/echo/")
    with pytest.raises(AssertionError):
        await existing_test(communicator)  # hello comes first
    await communicator.disconnect()


@pytest.mark.parametrize(("communicator_class", "consumer"), [
    (WebsocketCommunicator, Echo), (HeartbeatCommunicator, EchoWithHeartbeats)])
async def test_an_existing_test_stays_green_with_heartbeat_communicator(
        heartbeat_clock, communicator_class, consumer):
    communicator = communicator_class(consumer.as_asgi(), "/ws/echo/")
    # Ten minutes pass on the kit's clock: probes and presence diffs, none of them seen.
    ten_minutes = (lambda: heartbeat_clock.advance(600)) if consumer is not Echo else None
    await existing_test(communicator, ten_minutes)


# Django's test cases ---------------------------------------------------------------------


class _KitInTestCases:
    async def test_a_silent_client_is_closed_and_signalled(self):
        async with client() as silent:
            await silent.go_silent()
            await self.heartbeat_clock.advance(INTERVAL + TIMEOUT)
            self.assertEqual((await silent.receive_close())["code"], 4408)
        self.assertEqual(self.heartbeat_signals.names()[:2], ["session_opened", "member_joined"])
        self.assertIn("zombie_detected", self.heartbeat_signals.names())


class KitInSimpleTestCase(HeartbeatTestMixin, _KitInTestCases, SimpleTestCase):
    pass


class KitInTransactionTestCase(HeartbeatTestMixin, _KitInTestCases, TransactionTestCase):
    async def test_with_the_database(self):
        dora = await User.objects.acreate(username="dora")
        async with HeartbeatCommunicator(Room.as_asgi(), "/ws/lobby/", user=dora) as tab:
            await assert_member("lobby", dora.pk)
            self.assertEqual(tab.member_key, str(dora.pk))


# The plugin, the example and the docs ------------------------------------------------


def test_the_kit_fixtures_sit_next_to_the_suites_own(fake_clock, make_runtime, heartbeat_clock):
    assert type(fake_clock).__name__ == "FakeClock" and fake_clock is not heartbeat_clock
    assert isinstance(heartbeat_clock, FakeClock)


def test_the_plugin_is_an_entry_point_and_loads_before_django():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"heartbeat_app": "heartbeat_app.testing.plugin"}
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    code = ("import heartbeat_app.testing.plugin, heartbeat_app.testing as kit;"
            "assert kit.FakeClock and kit.HeartbeatClock")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=60)


def run_example(**env):
    """Run the example's own tests with pytest, as its authors would (the plugin loaded)."""
    installed = any(ep.value == "heartbeat_app.testing.plugin"
                    for ep in metadata.entry_points(group="pytest11"))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    if not installed:  # this checkout is not pip-installed: load the plugin as pip would
        command += ["-p", "heartbeat_app.testing.plugin"]
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    environ.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.run(command, cwd=ROOT / "examples" / "chat", env=environ,
                          capture_output=True, text=True, timeout=120)


def test_the_example_app_passes_its_tests():
    result = run_example()
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b6 passed\b", result.stdout), result.stdout


@pytest.mark.redis
def test_the_example_app_passes_its_tests_on_redis(redis_url):
    result = run_example(REDIS_URL=redis_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b6 passed\b", result.stdout), result.stdout


def test_the_docs_examples_are_the_example_apps_code():
    """Each Python block of docs/testing.md that names a file is in that file, verbatim."""
    docs = (ROOT / "docs" / "testing.md").read_text()
    blocks = re.findall(r"```python\n# (examples/\S+)\n(.*?)```", docs, re.S)
    assert len(blocks) >= 3
    for path, block in blocks:
        assert block in (ROOT / path).read_text(), f"docs/testing.md differs from {path}"
