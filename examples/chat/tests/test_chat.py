"""The chat example, tested end to end with heartbeat_app.testing only."""

from chat.routing import application
from django.contrib.auth.models import User

from heartbeat_app.testing import (
    HeartbeatCommunicator,
    assert_member,
    join_remote_member,
    simulate_instance_lost,
)

ALICE, BOB = User(pk=1, username="alice"), User(pk=2, username="bob")


def client(user, tab="t1", room="lobby"):
    return HeartbeatCommunicator(application, f"/ws/chat/{room}/", user=user, tab=tab)


async def test_a_message_reaches_the_room(heartbeat_clock):
    async with client(ALICE) as alice, client(BOB) as bob:
        assert sorted(bob.presence_states["lobby"]["members"]) == ["1", "2"]
        await alice.send_json_to({"type": "chat", "text": "hi"})
        assert await bob.receive_json_from() == {"type": "chat", "from": "1", "text": "hi"}
        assert await alice.receive_json_from() == {"type": "chat", "from": "1", "text": "hi"}


async def test_a_user_whose_tabs_are_all_hidden_is_away(heartbeat_clock):
    async with client(ALICE, "a1") as tab1, client(ALICE, "a2") as tab2, client(BOB) as bob:
        await tab1.set_visible(False)
        await assert_member("lobby", ALICE.pk, visible=True)  # one tab still shows
        await tab2.set_visible(False)
        await assert_member("lobby", ALICE.pk, visible=False)
        await bob.send_json_to({"type": "who"})
        assert await bob.receive_json_from() == {"type": "who", "here": ["2"], "away": ["1"]}


async def test_a_zombie_is_closed_and_the_room_told(heartbeat_clock, heartbeat_signals):
    async with client(ALICE) as alice, client(BOB) as bob:
        await alice.receive_presence_diff("lobby")  # both joins
        await bob.go_silent()  # bob's laptop sleeps
        await heartbeat_clock.advance(25 + 10)  # HEARTBEAT_INTERVAL + HEARTBEAT_TIMEOUT
        assert (await bob.receive_close())["code"] == 4408
        diff = await alice.receive_presence_diff("lobby")
        assert diff["leaves"]["2"]["metas"][0]["reason"] == "timeout"
        assert await alice.receive_json_from() == {"type": "notice",
                                                   "text": "2 lost the connection"}
        assert heartbeat_signals.of("zombie_detected")[0]["session"].user_key == "2"


async def test_a_live_client_is_never_closed(heartbeat_clock):
    async with client(ALICE) as alice:
        await heartbeat_clock.advance(600)  # ten minutes of probes, each one answered
        assert alice.probes_answered == 24  # one every HEARTBEAT_INTERVAL
        await alice.send_json_to({"type": "who"})
        assert (await alice.receive_json_from())["here"] == ["1"]


async def test_members_of_a_lost_server_leave(heartbeat_clock):
    async with client(ALICE) as alice:
        await join_remote_member("lobby", "carol", instance="worker-2")
        assert "carol" in (await alice.receive_presence_diff("lobby"))["joins"]
        await simulate_instance_lost("worker-2")  # its process was killed
        diff = await alice.receive_presence_diff("lobby")
        assert diff["leaves"]["carol"]["metas"][0]["reason"] == "instance_lost"
        assert await alice.receive_json_from() == {
            "type": "notice", "text": "carol dropped: their server went away"}
