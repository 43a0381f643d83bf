"""The admission gate: handshakes over the cap are refused at once, with a paced hint."""

import asyncio
import json

import pytest
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.testing import WebsocketCommunicator

from heartbeat_app.admission import AdmissionMiddleware, Gate
from heartbeat_app.consumers import HeartbeatMixin


class SlowConnect(HeartbeatMixin, AsyncJsonWebsocketConsumer):
    """A consumer whose connect() waits until the test lets it accept."""

    async def connect(self):
        self.scope["reached"].append(self.scope["name"])
        await self.scope["release"].wait()
        await self.accept()


def client(app, name, reached, release):
    communicator = WebsocketCommunicator(app, f"/ws/?tab={name}")
    communicator.scope.update(name=name, reached=reached, release=release)
    return communicator


async def refused_answer(communicator):
    """The frames a refused client gets: the close notice, then the close."""
    connected, _ = await communicator.connect()
    assert connected  # accepted only to be told when to come back
    notice = await communicator.receive_json_from()
    closed = await communicator.receive_output()
    assert closed["type"] == "websocket.close"
    return notice, closed


async def test_over_the_cap_a_client_is_refused_with_a_hint_and_never_reaches_the_app(
        settings, make_runtime):
    settings.HEARTBEAT_MAX_HANDSHAKES = 2
    settings.HEARTBEAT_RETRY_MIN_MS = 0
    runtime = make_runtime()
    app = AdmissionMiddleware(SlowConnect.as_asgi())
    reached, release = [], asyncio.Event()
    first, second = client(app, "a", reached, release), client(app, "b", reached, release)
    pending = [asyncio.ensure_future(c.connect()) for c in (first, second)]
    while len(reached) < 2:
        await asyncio.sleep(0.01)
    gate = runtime.service(Gate)
    assert gate.in_flight == 2
    refused = [client(app, f"r{i}", reached, release) for i in range(3)]
    answers = [await refused_answer(c) for c in refused]
    assert reached == ["a", "b"]  # nothing refused got past the gate
    hints = []
    for notice, closed in answers:
        assert notice["type"] == "close" and notice["code"] == 4013
        assert closed["code"] == 4013
        assert f"retry_after_ms={notice['retry_after_ms']}" in closed["reason"]
        hints.append(notice["retry_after_ms"])
    # Paced: every later client is told to come back later than the one before, one slot
    # apart at the rate the gate estimates (the cap over the time a handshake takes).
    assert hints == sorted(hints) and hints[0] > 0 and hints[-1] > hints[0]
    assert runtime.metrics.refused.value(why="in_flight") == 3
    release.set()
    for task in pending:
        assert (await task)[0]
    assert gate.in_flight == 0  # accepted: the handshakes are over
    late = client(app, "late", reached, release)
    assert (await late.connect())[0]
    assert (await late.receive_json_from())["type"] == "hello"
    for c in (first, second, late):
        await c.disconnect()


async def test_a_handshake_the_app_refuses_or_drops_frees_its_slot(settings, make_runtime):
    settings.HEARTBEAT_MAX_HANDSHAKES = 1
    runtime = make_runtime()

    async def refusing_app(scope, receive, send):
        await receive()
        await send({"type": "websocket.close", "code": 4403})

    app = AdmissionMiddleware(refusing_app)
    for _ in range(3):
        communicator = WebsocketCommunicator(app, "/ws/")
        connected, code = await communicator.connect()
        assert not connected and code == 4403
    assert runtime.service(Gate).in_flight == 0

    async def crashing_app(scope, receive, send):
        raise RuntimeError("boom")

    communicator = WebsocketCommunicator(AdmissionMiddleware(crashing_app), "/ws/")
    try:
        await communicator.connect()
    except RuntimeError:
        pass
    assert runtime.service(Gate).in_flight == 0


async def test_the_connect_rate_paces_hints_at_that_rate(settings, make_runtime):
    settings.HEARTBEAT_MAX_HANDSHAKES = None
    settings.HEARTBEAT_CONNECT_RATE = 10.0  # a burst of 10, then 10 a second
    settings.HEARTBEAT_RETRY_MIN_MS = 0
    runtime = make_runtime()

    async def accepting_app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})

    app = AdmissionMiddleware(accepting_app)
    admitted, hints = 0, []
    for _ in range(30):  # all at one instant on the fake clock
        communicator = WebsocketCommunicator(app, "/ws/")
        assert (await communicator.connect())[0]
        message = await communicator.receive_output()
        if message["type"] == "websocket.send":
            hints.append(json.loads(message["text"])["retry_after_ms"])
        else:
            admitted += 1
    assert admitted == 10 and len(hints) == 20
    # Slot k of the 20 refused is k / 10 s away, give or take the jitter (≤ 20 %).
    for k, hint in enumerate(hints, 1):
        assert k * 100 <= hint <= k * 100 * 1.2 + 1
    assert runtime.metrics.refused.value(why="rate") == 20


async def test_http_passes_the_gate_untouched(make_runtime):
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    await AdmissionMiddleware(app)({"type": "http"}, None, None)
    assert seen == ["http"]


async def test_hints_are_paced_at_the_cap_over_the_handshake_time_and_never_run_away(
        settings, make_runtime):
    settings.HEARTBEAT_MAX_HANDSHAKES = 100
    settings.HEARTBEAT_RETRY_MIN_MS = 0
    runtime = make_runtime()
    gate = runtime.service(Gate)
    for _ in range(50):  # handshakes that each took 0.2 s: 100 / 0.2 s = 500 a second
        gate.in_flight += 1
        started = runtime.fake_clock.monotonic()
        runtime.fake_clock.advance(0.2)
        gate.finished(started)
    assert 300 < gate.rate < 600
    first = [gate.retry_after_ms("in_flight") for _ in range(10)]
    assert all(0 < hint < 100 for hint in first)  # ten slots of about 2-3 ms
    many = [gate.retry_after_ms("in_flight") for _ in range(100_000)]
    # A storm of refusals never sends anyone further than the cap (plus its jitter).
    assert max(many) <= 30_000 * 1.2 and many[-1] >= 25_000


async def test_hints_keep_up_with_what_the_process_completes_after_a_burst(
        settings, make_runtime):
    settings.HEARTBEAT_MAX_HANDSHAKES = 100
    settings.HEARTBEAT_RETRY_MIN_MS = 0
    runtime = make_runtime()
    gate, clock = runtime.service(Gate), runtime.fake_clock
    started = clock.monotonic()
    clock.advance(2.0)  # slowed by a burst of refusals: each handshake took 2 s
    for _ in range(200):  # yet 200 completed within the last 2 s
        gate.in_flight += 1
        gate.finished(started)
        clock.advance(0.005)
    little = 100 / gate.duration
    assert little < 60
    assert gate.rate >= 6 * 200 / 2.0 * 0.99  # paced at six times the completions
    hints = [gate.retry_after_ms("in_flight") for _ in range(600)]
    assert hints[-1] <= 600 / (6 * 200 / 2.0) * 1000 * 1.2 + 1  # ~1 s, not 600 / little
    clock.advance(5.0)  # nothing completed in the window: the cap over the time again
    assert gate.rate == pytest.approx(max(20.0, little))


class SlowRoom(HeartbeatMixin, AsyncJsonWebsocketConsumer):
    """A presence consumer whose room check waits until the test lets it through."""

    presence_rooms = ["hall"]

    async def can_join_presence(self, room):
        await self.scope["release"].wait()
        return True


@pytest.mark.parametrize("hold", [True, False])
async def test_a_handshake_stays_in_flight_until_its_presence_joins_are_done_if_held(
        settings, make_runtime, hold):
    """HEARTBEAT_HOLD_UNTIL_JOINED: accept alone does not free the slot, presence does.

    Off (the default), the slot is free once the handshake is accepted.
    """
    settings.PRESENCE_STORE = "memory"
    settings.HEARTBEAT_HOLD_UNTIL_JOINED = hold
    runtime = make_runtime()
    gate = runtime.service(Gate)
    release = asyncio.Event()
    communicator = client(AdmissionMiddleware(SlowRoom.as_asgi()), "a", [], release)
    connected, _ = await communicator.connect()
    assert connected
    assert (await communicator.receive_json_from())["type"] == "hello"
    # Greeted, but its presence is not in the store yet.
    assert gate.in_flight == (1 if hold else 0)
    release.set()
    state = await communicator.receive_json_from()
    assert state["type"] == "presence_state"
    for _ in range(100):
        if gate.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert gate.in_flight == 0
    await communicator.disconnect()
