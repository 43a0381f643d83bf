"""End to end: real Daphne (and uvicorn) processes, real WebSocket clients, real signals.

Each server runs the demo project with shrunk heartbeat settings, once with the
embedded default (in-memory layer) and once with REDIS_URL (channels_redis).
Measured figures are printed (run with -s to see them); bounds are asserted.
"""

import asyncio
import json
import statistics
import subprocess
import sys
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.servers import ROOT, ServerProcess, scaled, server_env

pytestmark = pytest.mark.e2e

INTERVAL, TIMEOUT, TICK = 1.0, 1.0, 0.1
# What a client-side measurement adds to the server's own bound: loopback,
# process wake-ups and log polling on a shared two-core machine.
SLACK = 0.3
BOUND = INTERVAL + TIMEOUT + TICK


@pytest.fixture(params=["memory", "redis"])
def layer_env(request, migrated_db):
    """Server environment: the embedded default, or channels_redis on the real Redis."""
    env = server_env(migrated_db)
    if request.param == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis_url")
    return env


@pytest.fixture
def daphne(layer_env, tmp_path):
    server = ServerProcess(tmp_path, layer_env, kind="daphne").start()
    yield server
    server.stop()


@pytest.fixture
def uvicorn(migrated_db, tmp_path):
    server = ServerProcess(tmp_path, server_env(migrated_db), kind="uvicorn").start()
    yield server
    server.stop()


def room_url(server, room="lobby", tab=None):
    url = f"{server.url}/ws/rooms/{room}/"
    return f"{url}?tab={tab}" if tab else url


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def ping_round_trips(server, count=200):
    """Send ``count`` pings one after another; return the round trips in ms."""
    samples = []
    async with connect(room_url(server), origin=server.origin) as ws:
        hello = json.loads(await ws.recv())
        assert hello["type"] == "hello"
        assert hello["interval_ms"] == INTERVAL * 1000
        for i in range(count):
            started = time.perf_counter()
            await ws.send(json.dumps({"type": "ping", "id": i}))
            while True:
                message = json.loads(await ws.recv())
                if message["type"] == "pong":
                    break
                if message["type"] == "ping":  # a probe: answer it, keep waiting
                    await ws.send(json.dumps({"type": "pong", "id": message["id"]}))
            samples.append((time.perf_counter() - started) * 1000)
            assert message["id"] == i
            assert abs(message["server_time"] - time.time() * 1000) < 5000
    return samples


async def silent_until_closed(server):
    """Connect, answer nothing; return (seconds from hello to close, close code, probes)."""
    probes = []
    async with connect(room_url(server), origin=server.origin, ping_interval=None) as ws:
        hello = json.loads(await ws.recv())
        greeted = time.monotonic()
        try:
            async with asyncio.timeout(scaled(BOUND + 5)):
                async for raw in ws:
                    probes.append(json.loads(raw))
        except ConnectionClosed:
            pass
        closed = time.monotonic()
        return closed - greeted, ws.close_code, probes, hello


async def test_ping_pong_round_trip(daphne):
    samples = await ping_round_trips(daphne)
    p50, p99 = statistics.median(samples), percentile(samples, 0.99)
    print(f"\n[daphne] ping->pong over {len(samples)} round trips: "
          f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {max(samples):.2f} ms")
    assert len(samples) == 200


async def test_silent_client_is_closed_with_4408_within_the_bound(daphne):
    elapsed, code, probes, hello = await silent_until_closed(daphne)
    print(f"\n[daphne] silent client closed after {elapsed:.3f} s "
          f"(interval + timeout = {INTERVAL + TIMEOUT} s, bound {BOUND} s), code {code}")
    assert code == 4408
    pings = [p for p in probes if p["type"] == "ping"]
    assert len(pings) == 1, "exactly one probe before the close"
    assert INTERVAL + TIMEOUT - 0.05 <= elapsed <= BOUND + SLACK
    assert daphne.wait_for_log(f"heartbeat session {hello['session']} silent for", scaled(2))


async def test_frozen_client_is_closed_as_a_zombie(daphne):
    client = subprocess.Popen(
        [sys.executable, "-m", "tests.clients.well_behaved", room_url(daphne), daphne.origin,
         "0.3"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        hello = json.loads(client.stdout.readline())
        # Healthy for a few intervals first: pings and answered probes keep it open.
        await asyncio.sleep(2.5 * (INTERVAL + TIMEOUT) / 2)
        assert client.poll() is None
        assert "silent for" not in daphne.log()
        client.send_signal(__import__("signal").SIGSTOP)
        frozen = time.monotonic()
        seen = daphne.wait_for_log(f"heartbeat session {hello['session']} silent for", scaled(10))
        assert seen is not None, daphne.log()
        elapsed = seen - frozen
        print(f"\n[daphne] SIGSTOP'd client closed {elapsed:.3f} s after the freeze "
              f"(its last ping at most 0.3 s before; bound {BOUND} s)")
        assert INTERVAL + TIMEOUT - 0.3 - 0.05 <= elapsed <= BOUND + SLACK
    finally:
        client.send_signal(__import__("signal").SIGCONT)
        try:
            out, _ = client.communicate(timeout=scaled(15))
        except subprocess.TimeoutExpired:
            client.kill()
            out, _ = client.communicate()
    # The close frame (or the server's abort once it got no answer) ends the client.
    assert out.strip().splitlines()[-1] in {"closed 4408", "closed 1006"}


async def _healthy_client(server, stop, counters, index):
    """Answers probes; told to come back later by the admission gate (4013), it does."""
    while True:
        async with connect(room_url(server, tab=f"c{index}"), origin=server.origin,
                           ping_interval=None, open_timeout=scaled(30)) as ws:
            first = json.loads(await ws.recv())
            if first.get("type") == "close" and first.get("code") == 4013:
                counters.setdefault("refused", 0)
                counters["refused"] += 1
                await asyncio.sleep(first["retry_after_ms"] / 1000)
                continue  # what the bundled client does with the hint
            counters["open"] += 1
            try:
                while not stop.is_set():
                    try:
                        async with asyncio.timeout(0.2):
                            raw = await ws.recv()
                    except TimeoutError:
                        continue
                    message = json.loads(raw)
                    if message.get("type") == "ping":
                        counters["probes"] += 1
                        await ws.send(json.dumps({"type": "pong", "id": message["id"]}))
            except ConnectionClosed:
                counters["closed"].append(ws.close_code)
            return


async def test_200_concurrent_clients_no_false_zombie(daphne):
    """200 clients that only answer probes stay open through several timeouts."""
    stop = asyncio.Event()
    counters = {"open": 0, "probes": 0, "closed": []}
    tasks = [asyncio.create_task(_healthy_client(daphne, stop, counters, i)) for i in range(200)]
    async with asyncio.timeout(scaled(60)):
        while counters["open"] < 200:
            await asyncio.sleep(0.05)
    await asyncio.sleep(3 * (INTERVAL + TIMEOUT))
    stop.set()
    await asyncio.gather(*tasks)
    print(f"\n[daphne] 200 clients for {3 * (INTERVAL + TIMEOUT)} s: "
          f"{counters['probes']} probes answered, {len(counters['closed'])} closed, "
          f"{counters.get('refused', 0)} handshakes sent back by the gate first")
    assert counters["closed"] == []
    assert counters["probes"] >= 200 * 2, "every client was probed repeatedly"
    assert "silent for" not in daphne.log()


async def test_server_stall_does_not_close_healthy_clients(daphne):
    """A server frozen longer than interval + timeout blames nobody for its own stall."""
    stop = asyncio.Event()
    counters = {"open": 0, "probes": 0, "closed": []}
    tasks = [asyncio.create_task(_healthy_client(daphne, stop, counters, i)) for i in range(50)]
    async with asyncio.timeout(scaled(30)):
        while counters["open"] < 50:
            await asyncio.sleep(0.05)
    await asyncio.sleep(INTERVAL)
    daphne.pause()
    await asyncio.sleep(2 * (INTERVAL + TIMEOUT))
    daphne.resume()
    await asyncio.sleep(2 * (INTERVAL + TIMEOUT))
    stop.set()
    await asyncio.gather(*tasks)
    assert counters["closed"] == []
    assert "silent for" not in daphne.log()


async def test_uvicorn_ping_pong_and_zombie_close(uvicorn):
    samples = await ping_round_trips(uvicorn, count=50)
    elapsed, code, probes, _ = await silent_until_closed(uvicorn)
    print(f"\n[uvicorn] ping->pong p50 {statistics.median(samples):.2f} ms; "
          f"silent client closed after {elapsed:.3f} s with {code}")
    assert code == 4408
    assert INTERVAL + TIMEOUT - 0.05 <= elapsed <= BOUND + SLACK
