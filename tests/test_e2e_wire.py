"""The wire against a real Daphne: a bad room name, the first visibility, a client's RTT."""

import asyncio
import json
import sqlite3

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.servers import ServerProcess, scaled, server_env

pytestmark = pytest.mark.e2e


@pytest.fixture
def daphne(migrated_db, tmp_path):
    env = server_env(migrated_db, HEARTBEAT_INTERVAL="5", HEARTBEAT_TIMEOUT="5",
                     HEARTBEAT_CHECKPOINT_INTERVAL="0.3")
    server = ServerProcess(tmp_path, env).start()
    yield server
    server.stop()


async def messages_until(ws, predicate, timeout):
    """Frames up to and including the first that matches."""
    seen = []
    async with asyncio.timeout(timeout):
        while True:
            message = json.loads(await ws.recv())
            seen.append(message)
            if predicate(message):
                return seen


async def test_a_bad_room_name_gets_an_error_and_4400_and_no_traceback(daphne):
    ws = await connect(f"{daphne.url}/ws/rooms/bad%20room!/", origin=daphne.origin)
    assert json.loads(await ws.recv())["type"] == "hello"
    error = json.loads(await ws.recv())
    assert (error["type"], error["code"]) == ("error", "invalid_room")
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), scaled(5))
    assert ws.close_code == 4400
    assert "Traceback" not in daphne.log()


async def test_a_first_visible_true_makes_no_diff_and_a_reported_rtt_reaches_the_row(
        daphne, migrated_db):
    watcher = await connect(f"{daphne.url}/ws/rooms/wire/?tab=w", origin=daphne.origin,
                            ping_interval=None)
    await messages_until(watcher, lambda m: m["type"] == "presence_state", scaled(5))
    pinger = await connect(f"{daphne.url}/ws/rooms/wire/?tab=p", origin=daphne.origin,
                           ping_interval=None)
    hello = (await messages_until(pinger, lambda m: m["type"] == "hello", scaled(5)))[-1]
    await messages_until(watcher, lambda m: m["type"] == "presence_diff", scaled(5))  # its join
    await pinger.send(json.dumps({"type": "ping", "id": 1, "visible": True, "rtt_ms": 23.5}))
    await messages_until(pinger, lambda m: m["type"] == "pong", scaled(5))
    with pytest.raises(TimeoutError):  # no update of a meta that did not change
        await messages_until(watcher, lambda m: m["type"] == "presence_diff", 1.0)
    path = migrated_db.removeprefix("sqlite:///")
    rtt = None
    for _ in range(int(scaled(50))):
        await asyncio.sleep(0.1)
        with sqlite3.connect(path) as db:
            row = db.execute("SELECT rtt_ms FROM heartbeat_app_session WHERE id = ?",
                             [hello["session"]]).fetchone()
        if row and row[0] is not None:
            rtt = row[0]
            break
    assert rtt == 23.5
    await pinger.close()
    await watcher.close()
