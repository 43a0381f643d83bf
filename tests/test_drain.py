"""The drain: every session closed with 4001 and a spread hint, presence and rows flushed."""

import asyncio
import json
import random

import pytest
from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.testing import WebsocketCommunicator
from django.db import connections

from heartbeat_app import presence, stores
from heartbeat_app.admission import AdmissionMiddleware
from heartbeat_app.clock import SYSTEM_CLOCK
from heartbeat_app.consumers import HeartbeatMixin
from heartbeat_app.drain import drain, spread
from heartbeat_app.instance import instance_id
from heartbeat_app.models import ServerInstance, Session

TICK = 0.02
GRACE = 0.2


class Room(HeartbeatMixin, AsyncJsonWebsocketConsumer):
    presence_rooms = ["hall"]


@pytest.fixture
async def real_time(settings, make_runtime):
    """A runtime on the real clock: the drain waits out real leave graces."""
    settings.HEARTBEAT_TICK = TICK
    settings.PRESENCE_LEAVE_GRACE = GRACE
    settings.PRESENCE_STORE = "memory"
    settings.HEARTBEAT_DRAIN_SPREAD = 2.0
    settings.HEARTBEAT_RETRY_MIN_MS = 300
    stores.reset_store()
    runtime = make_runtime(SYSTEM_CLOCK, autostart={"tracker", "recorder"}, rng=random.random)
    yield runtime
    stores.reset_store()


async def open_client(tab, app=None):
    communicator = WebsocketCommunicator(app or Room.as_asgi(), f"/ws/?tab={tab}")
    assert (await communicator.connect())[0]
    assert (await communicator.receive_json_from())["type"] == "hello"
    assert (await communicator.receive_json_from())["type"] == "presence_state"
    return communicator


async def drained(communicator):
    """The close notice and the close a drained client gets (diffs before them skipped)."""
    notice = None
    while True:
        message = await communicator.receive_output(timeout=2)
        if message["type"] == "websocket.close":
            return notice, message
        if message["type"] == "websocket.send" and '"type":"close"' in message["text"]:
            notice = json.loads(message["text"])


async def test_drain_closes_everyone_with_4001_spread_hints_and_flushes_presence(real_time):
    clients = [await open_client(f"t{i}") for i in range(8)]
    assert len(await presence.amembers("hall")) == 8
    done = await drain(real_time)
    assert done == {"sessions": 8}
    hints = []
    for communicator in clients:
        notice, closed = await drained(communicator)
        assert notice["code"] == closed["code"] == 4001
        assert f"retry_after_ms={notice['retry_after_ms']}" in closed["reason"]
        hints.append(notice["retry_after_ms"])
    assert all(300 <= hint <= 2300 for hint in hints)
    assert len(set(hints)) > 1  # spread, not one instant for all
    # The drain returned only once every leave grace had run out and been flushed.
    assert await presence.amembers("hall") == {}
    assert real_time.metrics.closed.value(reason="server_shutdown") == 8
    assert real_time.closers == {}


async def test_during_a_drain_new_clients_are_sent_away_with_4001(real_time):
    await drain(real_time)
    for app in (Room.as_asgi(), AdmissionMiddleware(Room.as_asgi())):
        communicator = WebsocketCommunicator(app, "/ws/?tab=late")
        assert (await communicator.connect())[0]
        notice = await communicator.receive_json_from()
        closed = await communicator.receive_output()
        assert notice["type"] == "close" and notice["code"] == closed["code"] == 4001
        assert notice["retry_after_ms"] >= 300
    assert await presence.amembers("hall") == {}
    assert real_time.metrics.refused.value(why="draining") == 1


@pytest.mark.django_db(transaction=True)
async def test_drain_writes_the_rows_server_shutdown_and_stops_the_instance(
        real_time, settings):
    settings.HEARTBEAT_RECORD_SESSIONS = True
    clients = [await open_client(f"r{i}") for i in range(3)]
    await drain(real_time)
    for communicator in clients:
        await drained(communicator)
    rows = await sync_to_async(list)(Session.objects.values_list("close_code", "close_reason"))
    assert sorted(rows) == [(4001, "server_shutdown")] * 3
    instance = await sync_to_async(ServerInstance.objects.get)(pk=instance_id())
    assert instance.stopped_at is not None and instance.get_status() == "stopped"
    await sync_to_async(connections.close_all)()


async def test_stop_listening_closes_asyncio_servers_and_keeps_open_connections():
    """What uvicorn listens with: the listening socket closes, an open connection stays."""
    import asyncio

    from heartbeat_app.listeners import stop_listening

    async def echo(reader, writer):
        writer.write(await reader.readline())
        await writer.drain()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert stop_listening() == 1
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"still here\n")
    assert await asyncio.wait_for(reader.readline(), 5) == b"still here\n"
    writer.close()
    server.close()  # the server's own close afterwards is harmless
    assert stop_listening() == 0


async def test_a_drained_tabs_presence_is_kept_its_hint_plus_the_grace(real_time):
    """Told to come back in h ms, a tab keeps its meta h ms + the grace: no blink if it does."""
    clients = {}
    for i in range(6):
        communicator = WebsocketCommunicator(Room.as_asgi(), f"/ws/?tab=k{i}")
        assert (await communicator.connect())[0]
        hello = await communicator.receive_json_from()
        assert (await communicator.receive_json_from())["type"] == "presence_state"
        clients[hello["session"]] = communicator
    loop = asyncio.get_running_loop()
    started = loop.time()
    draining = asyncio.ensure_future(drain(real_time))
    gone: dict[str, float] = {}
    while True:
        done = draining.done()  # read before the poll: a last leave may land meanwhile
        listed = {m["session"] for member in (await presence.amembers("hall")).values()
                  for m in member["metas"]}
        for session in clients.keys() - listed - gone.keys():
            gone[session] = loop.time() - started
        if done:
            break
        await asyncio.sleep(TICK / 2)
    await draining
    assert gone.keys() == clients.keys()
    for session, communicator in clients.items():
        notice, _ = await drained(communicator)
        kept = notice["retry_after_ms"] / 1000 + GRACE
        assert gone[session] >= kept, (session, gone[session], kept)


@pytest.mark.parametrize("sessions, expected", [(0, 2.0), (400, 2.0), (4000, 10.0),
                                                (20_000, 13.0)])
def test_the_spread_grows_with_the_sessions_within_the_drains_time(settings, sessions,
                                                                   expected):
    """At least HEARTBEAT_DRAIN_SPREAD; sessions / HEARTBEAT_DRAIN_RATE; at most the timeout
    less the grace and 2 s for the closes."""
    settings.HEARTBEAT_DRAIN_SPREAD = 2.0
    settings.HEARTBEAT_DRAIN_RATE = 400.0
    settings.HEARTBEAT_DRAIN_TIMEOUT = 20.0
    settings.PRESENCE_LEAVE_GRACE = 5.0
    assert spread(sessions) == pytest.approx(expected)
    settings.HEARTBEAT_DRAIN_RATE = None
    assert spread(sessions) == 2.0


async def test_a_drain_of_more_sessions_than_its_rate_spreads_them_longer(real_time, settings):
    settings.HEARTBEAT_DRAIN_RATE = 10.0  # 40 sessions: hints over 4 s, not 2
    clients = [await open_client(f"s{i}") for i in range(40)]
    drained_at = asyncio.get_running_loop().time()
    draining = asyncio.ensure_future(drain(real_time))
    hints = [(await drained(c))[0]["retry_after_ms"] for c in clients]
    assert all(300 <= hint <= 4300 for hint in hints), hints
    # Beyond the fixed spread: the rate spread them (all 40 under 2.3 s: odds of 2^-40).
    assert max(hints) > 2300, hints
    await draining
    # Each tab was kept for its hint plus the grace: the drain lasted the longest of them.
    assert asyncio.get_running_loop().time() - drained_at >= max(hints) / 1000 + GRACE
