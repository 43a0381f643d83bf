"""The operators' view: rows made by driving real consumers, read through the admin."""

import asyncio
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from heartbeat_app import stores
from heartbeat_app.consumers import HeartbeatMixin
from heartbeat_app.instance import instance_id
from heartbeat_app.models import ServerInstance, Session
from heartbeat_app.recorder import Recorder, write
from heartbeat_app.scheduler import Scheduler

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/admin/heartbeat_app/session/"


class Room(HeartbeatMixin, AsyncJsonWebsocketConsumer):
    heartbeat_interval = 10.0
    heartbeat_timeout = 5.0
    presence_rooms = ["ops"]


@pytest.fixture
async def clock(settings, make_runtime, fake_clock):
    """The fake clock; the scheduler and the recorder are stepped by hand."""
    settings.HEARTBEAT_RECORD_SESSIONS = True
    settings.PRESENCE_STORE = "memory"
    stores.reset_store()
    runtime = make_runtime(autostart={"tracker"})
    fake_clock.scheduler = runtime.service(Scheduler)
    fake_clock.recorder = runtime.service(Recorder)
    yield fake_clock
    stores.reset_store()
    # The test client keeps its thread's connection open; the test database must
    # be droppable afterwards (PostgreSQL refuses while a session is connected).
    await sync_to_async(connections.close_all)()


async def open_session(tab, user=None):
    communicator = WebsocketCommunicator(Room.as_asgi(), f"/ws/ops/?tab={tab}")
    if user is not None:
        communicator.scope["user"] = user
    assert (await communicator.connect())[0]
    hello = await communicator.receive_json_from()
    state = await communicator.receive_json_from()
    # The member key of the session's own meta: an anonymous one is the server's.
    communicator.key = next(key for key, member in state["members"].items()
                            if any(m["session"] == hello["session"] for m in member["metas"]))
    return communicator, hello["session"]


async def four_statuses(clock):
    """Sessions live, stale, zombie and closed, as of the last checkpoint."""
    alice = await sync_to_async(User.objects.create_user)("alice")
    live, live_id = await open_session("live", user=alice)
    stale, stale_id = await open_session("stale")
    zombie, zombie_id = await open_session("zombie")
    gone, gone_id = await open_session("gone")
    await gone.disconnect(code=1000)
    clock.elapsed = 12.0  # past the interval (10 s) for everyone...
    await live.send_json_to({"type": "ping", "id": 1})  # ...but the live one spoke
    await live.receive_json_from()
    clock.elapsed = 14.0
    await stale.send_json_to({"type": "ping", "id": 1})
    await stale.receive_json_from()
    clock.elapsed = 25.0  # stale silent 11 s; zombie silent 25 s > 10 + 5
    await live.send_json_to({"type": "ping", "id": 2})
    await live.receive_json_from()
    await clock.recorder.step(force=True)
    ids = {"live": live_id, "stale": stale_id, "zombie": zombie_id, "closed": gone_id}
    return ids, [live, stale, zombie]


@pytest.fixture
async def staff(async_client):
    user = await sync_to_async(User.objects.create_superuser)("root", "r@example.com", "pw")
    await sync_to_async(async_client.force_login)(user)
    return async_client


async def test_each_status_filter_shows_exactly_its_rows(clock, staff):
    ids, open_ones = await four_statuses(clock)
    # The checkpoint's own time stands for "now" on the server.
    rows = await sync_to_async(list)(Session.objects.with_status().values_list("id", "status"))
    assert dict(rows) == {v: k for k, v in ids.items()}
    for status, session_id in ids.items():
        response = await staff.get(URL, {"status": status})
        assert response.status_code == 200
        page = response.content.decode()
        assert session_id[:8] in page
        for other, other_id in ids.items():
            if other != status:
                assert other_id[:8] not in page, (status, other)
        assert f"{status} (1)" in page  # the filter shows its count
    response = await staff.get(URL, {"q": "alice"})
    assert ids["live"][:8] in response.content.decode()
    assert ids["stale"][:8] not in response.content.decode()
    for communicator in open_ones:
        await communicator.disconnect()


async def test_detail_page_tells_the_story(clock, staff):
    communicator, session_id = await open_session("story")
    clock.elapsed = 10.0
    await clock.scheduler.step()  # probe
    probe = await communicator.receive_json_from()
    clock.elapsed = 10.2
    await communicator.send_json_to({"type": "pong", "id": probe["id"]})
    await asyncio.sleep(0.01)
    await communicator.disconnect(code=1001)
    await clock.recorder.step(force=True)
    response = await staff.get(f"{URL}{session_id}/change/")
    page = response.content.decode()
    assert response.status_code == 200
    assert f"opened by {communicator.key} (tab story)" in page
    assert "1 probe(s) sent" in page
    assert "round trip 200.0 ms" in page
    assert "ended: closed (code 1001, going away)" in page
    row = await Session.objects.aget(pk=session_id)
    assert row.rtt_ms == pytest.approx(200.0)
    assert row.close_reason == "closed" and row.close_code == 1001


async def test_zombie_close_is_recorded_as_timeout(clock, staff):
    communicator, session_id = await open_session("zz")
    for offset in (10.0, 15.0):
        clock.elapsed = offset
        await clock.scheduler.step()
        await asyncio.sleep(0.01)
    await clock.recorder.step(force=True)
    row = await Session.objects.aget(pk=session_id)
    assert (row.close_code, row.close_reason) == (4408, "timeout")
    assert row.zombie_detected_at is not None
    response = await staff.get(URL, {"status": "closed", "close_reason": "timeout"})
    assert session_id[:8] in response.content.decode()
    await communicator.disconnect()


async def test_lost_instance_sessions_are_zombies_then_reconciled(clock, staff):
    communicator, session_id = await open_session("lost")
    await clock.recorder.step(force=True)
    # Hand the row to another process that stopped beating (as if killed)...
    old = timezone.now() - timedelta(minutes=5)
    await ServerInstance.objects.acreate(id="dead-host:4242:abc", host="dead-host", pid=4242,
                                         started_at=old, last_beat=old)
    await Session.objects.filter(pk=session_id).aupdate(instance_id="dead-host:4242:abc")
    # ...its rows are zombies...
    response = await staff.get(URL, {"status": "zombie"})
    assert session_id[:8] in response.content.decode()
    response = await staff.get("/admin/heartbeat_app/serverinstance/")
    assert "lost" in response.content.decode()
    # ...until another process's write closes them out.
    await sync_to_async(write)([], [], [], 0, timezone.now())
    row = await Session.objects.aget(pk=session_id)
    assert (row.close_reason, row.close_code) == ("instance_lost", 1006)
    await communicator.disconnect()


async def test_non_staff_and_unprivileged_staff_are_refused(clock, async_client):
    ids, open_ones = await four_statuses(clock)
    plain = await sync_to_async(User.objects.create_user)("plain", password="pw")
    await sync_to_async(async_client.force_login)(plain)
    response = await async_client.get(URL)
    assert response.status_code == 302 and "/login/" in response["Location"]
    viewer = await sync_to_async(User.objects.create_user)("viewer", is_staff=True)
    view = await Permission.objects.aget(codename="view_session",
                                         content_type__app_label="heartbeat_app")
    await sync_to_async(viewer.user_permissions.add)(view)
    await sync_to_async(async_client.force_login)(viewer)
    response = await async_client.get(URL)
    assert response.status_code == 200
    assert "disconnect_sessions" not in response.content.decode()
    response = await async_client.post(URL, {"action": "disconnect_sessions",
                                             "_selected_action": [ids["live"]]}, follow=True)
    # Django refuses an action the user has no permission for, with the same answer
    # as for no action at all (the list again); what matters is that it did not run.
    assert response.status_code == 200
    assert "Asked 1 session(s) to close" not in response.content.decode()
    live = open_ones[0]
    outputs = []
    while not await live.receive_nothing(timeout=1.0):  # a real close arrives within 1 s
        outputs.append(await live.receive_output())
    assert not [o for o in outputs if o["type"] == "websocket.close"], outputs
    row = await Session.objects.aget(pk=ids["live"])
    assert row.closed_at is None and row.close_code is None
    nobody = await sync_to_async(User.objects.create_user)("nobody", is_staff=True)
    await sync_to_async(async_client.force_login)(nobody)
    assert (await async_client.get(URL)).status_code == 403
    for communicator in open_ones:
        await communicator.disconnect()


async def test_disconnect_action_closes_the_consumer_with_4000(clock, staff):
    communicator, session_id = await open_session("kick")
    await clock.recorder.step(force=True)
    response = await staff.post(URL, {"action": "disconnect_sessions",
                                      "_selected_action": [session_id]})
    assert response.status_code == 302
    closed = await communicator.receive_output(timeout=2)
    assert closed["type"] == "websocket.close" and closed["code"] == 4000
    await communicator.disconnect(code=4000)
    await clock.recorder.step(force=True)
    row = await Session.objects.aget(pk=session_id)
    assert (row.close_code, row.close_reason) == (4000, "admin")


async def test_probe_action_sends_a_server_ping(clock, staff):
    communicator, session_id = await open_session("probe")
    await clock.recorder.step(force=True)
    response = await staff.post(URL, {"action": "probe_sessions",
                                      "_selected_action": [session_id]})
    assert response.status_code == 302
    probe = await communicator.receive_json_from(timeout=2)
    assert probe["type"] == "ping"
    clock.elapsed = 0.05
    await communicator.send_json_to({"type": "pong", "id": probe["id"]})
    await asyncio.sleep(0.01)
    await clock.recorder.step(force=True)
    row = await Session.objects.aget(pk=session_id)
    assert row.rtt_ms == pytest.approx(50.0)
    assert row.last_probe_at is not None
    await communicator.disconnect()


async def test_presence_overview_lists_rooms_and_members(clock, staff):
    communicator, session_id = await open_session("pres")
    response = await staff.get("/admin/heartbeat_app/presenceroom/")
    page = response.content.decode()
    assert response.status_code == 200
    assert 'href="?room=ops"' in page
    response = await staff.get("/admin/heartbeat_app/presenceroom/", {"room": "ops"})
    assert communicator.key in response.content.decode()
    assert session_id[:8] in response.content.decode()
    await communicator.disconnect()


async def test_presence_overview_needs_the_view_permission(clock, async_client):
    communicator, session_id = await open_session("perm")
    nobody = await sync_to_async(User.objects.create_user)("nobody", is_staff=True)
    await sync_to_async(async_client.force_login)(nobody)
    for query in ({}, {"room": "ops"}):
        response = await async_client.get("/admin/heartbeat_app/presenceroom/", query)
        assert response.status_code == 403
        page = response.content.decode()
        assert communicator.key not in page and session_id[:8] not in page and "ops" not in page
    index = (await async_client.get("/admin/")).content.decode()
    assert "presenceroom" not in index
    view = await Permission.objects.aget(codename="view_presenceroom",
                                         content_type__app_label="heartbeat_app")
    await sync_to_async(nobody.user_permissions.add)(view)
    viewer = await User.objects.aget(pk=nobody.pk)  # a fresh permission cache
    await sync_to_async(async_client.force_login)(viewer)
    response = await async_client.get("/admin/heartbeat_app/presenceroom/", {"room": "ops"})
    assert response.status_code == 200 and communicator.key in response.content.decode()
    await communicator.disconnect()


async def test_presence_overview_says_when_the_store_is_down(clock, staff, settings):
    settings.PRESENCE_STORE = "redis"
    settings.PRESENCE_REDIS_URL = "redis://127.0.0.1:1/0"
    settings.PRESENCE_STORE_TIMEOUT = 0.5
    stores.reset_store()
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await staff.get("/admin/heartbeat_app/presenceroom/")
    assert response.status_code == 200
    assert "The presence store did not answer" in response.content.decode()
    assert loop.time() - started < 5


def test_checkpoint_queries_do_not_grow_with_sessions(db):
    def rows(n, prefix):
        now = timezone.now()
        return [Session(id=f"{prefix}{i:0{32 - len(prefix)}d}", user_key=f"anon:{i}", tab=str(i),
                        instance_id=instance_id(), opened_at=now, last_seen_at=now)
                for i in range(n)]

    counts = {}
    for n in (10, 400):
        new = rows(n, f"n{n}")
        write(new, [], [], n, timezone.now())
        later = timezone.now() + timedelta(seconds=7)
        for row in new:
            row.last_seen_at, row.rtt_ms, row.visible, row.rooms = later, 12.5, False, "a b"
        with CaptureQueriesContext(connection) as captured:
            write([], new, [], n, timezone.now())
        counts[n] = len(captured)
        stored = Session.objects.get(pk=new[-1].pk)
        assert (stored.last_seen_at, stored.rtt_ms, stored.visible, stored.rooms) == (
            later, 12.5, False, "a b")
    print(f"\n[recorder] queries per checkpoint: {counts[10]} at 10 sessions, "
          f"{counts[400]} at 400")
    assert counts[10] == counts[400]


def test_a_session_in_many_long_rooms_is_written_open_checkpointed_and_closed(db):
    """Seven rooms of 80 characters (566 with the spaces) must not stop the recorder."""
    rooms = " ".join(f"{i}" * 80 for i in range(7))
    now = timezone.now()
    row = Session(id="r" * 32, user_key="anon:many", tab="t", rooms=rooms,
                  instance_id=instance_id(), opened_at=now, last_seen_at=now)
    write([row], [], [], 1, now)
    row.last_seen_at = now + timedelta(seconds=5)
    write([], [row], [], 1, now + timedelta(seconds=5))
    row.closed_at, row.close_code, row.close_reason = now + timedelta(seconds=6), 1000, "closed"
    write([], [], [row], 0, now + timedelta(seconds=6))
    stored = Session.objects.get(pk=row.pk)
    assert (stored.rooms, stored.close_code) == (rooms, 1000)
    assert len(stored.rooms) == 566


def test_prune_deletes_old_closed_rows_in_batches(db):
    now = timezone.now()
    old = now - timedelta(days=40)
    Session.objects.bulk_create(
        [Session(id=f"old{i:029d}", user_key="k", tab="t", opened_at=old, last_seen_at=old,
                 closed_at=old) for i in range(25)]
        + [Session(id=f"new{i:029d}", user_key="k", tab="t", opened_at=now, last_seen_at=now,
                   closed_at=now) for i in range(5)]
        + [Session(id=f"open{i:028d}", user_key="k", tab="t", opened_at=old, last_seen_at=old)
           for i in range(3)]
    )
    call_command("heartbeat_prune", "--days", "30", "--batch-size", "10")
    assert Session.objects.filter(id__startswith="old").count() == 0
    assert Session.objects.count() == 8


async def test_member_actions_close_every_session_of_the_member(clock, staff):
    """An operator acts on a user: all its tabs, 4000 (reconnect) or 4403 (stay away)."""
    from types import SimpleNamespace

    alice = SimpleNamespace(pk=77, is_authenticated=True)
    tabs = [await open_session(f"alice{i}", user=alice) for i in range(2)]
    bystander, _ = await open_session("bob")
    await clock.recorder.step(force=True)
    response = await staff.post(URL, {"action": "ban_members",
                                      "_selected_action": [tabs[0][1]]})
    assert response.status_code == 302
    for communicator, _ in tabs:
        closed = await communicator.receive_output(timeout=2)
        assert closed["type"] == "websocket.close" and closed["code"] == 4403
        await communicator.disconnect(code=4403)
    while not await bystander.receive_nothing(timeout=0.3):  # diffs of alice leaving, at most
        assert (await bystander.receive_output())["type"] != "websocket.close"
    await bystander.disconnect()


def test_prune_deletes_old_instance_rows_that_hold_no_session(db):
    old = timezone.now() - timedelta(days=40)
    for name in ("gone", "kept"):
        ServerInstance.objects.create(id=name, host="h", pid=1, started_at=old,
                                      last_beat=old, stopped_at=old)
    Session.objects.create(id="s" * 32, user_key="k", tab="t", instance_id="kept",
                           opened_at=old, last_seen_at=old)
    call_command("heartbeat_prune", "--days", "30")
    assert list(ServerInstance.objects.values_list("id", flat=True)) == ["kept"]


def test_the_read_only_pages_refuse_a_save_even_to_a_superuser(db, admin_client):
    """A save from a page loaded earlier would write stale values over the server's."""
    now = timezone.now()
    ServerInstance.objects.create(id="inst", host="h", pid=1, started_at=now, last_beat=now)
    Session.objects.create(id="s" * 32, user_key="k", tab="t", instance_id="inst",
                           opened_at=now, last_seen_at=now, rtt_ms=5.0)
    for url, form in ((f"{URL}{'s' * 32}/change/", {"user_key": "evil", "rtt_ms": "1"}),
                      ("/admin/heartbeat_app/serverinstance/inst/change/", {"host": "evil"})):
        assert admin_client.get(url).status_code == 200  # still readable
        assert admin_client.post(url, form).status_code == 403, url
    assert Session.objects.get().user_key == "k"
    assert ServerInstance.objects.get().host == "h"
