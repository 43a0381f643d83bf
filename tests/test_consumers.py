"""HeartbeatMixin through the testing kit's HeartbeatCommunicator, on its fake clock."""

import asyncio
import json

import pytest
from channels.generic.websocket import AsyncJsonWebsocketConsumer, AsyncWebsocketConsumer
from channels.layers import get_channel_layer

from heartbeat_app import protocol, signals
from heartbeat_app.consumers import HeartbeatMixin
from heartbeat_app.scheduler import get_scheduler
from heartbeat_app.testing import HeartbeatCommunicator, plugin

# The kit's fixtures (the plugin's entry point loads them once the package is installed).
heartbeat_clock, heartbeat_signals = plugin.heartbeat_clock, plugin.heartbeat_signals


class JsonConsumer(HeartbeatMixin, AsyncJsonWebsocketConsumer):
    """A JSON consumer that records what reaches it and never calls super()."""

    heartbeat_interval = 2.0
    heartbeat_timeout = 1.0

    async def connect(self):
        self.scope["test_log"].append(("connect",))
        await self.accept()

    async def receive_json(self, content, **kwargs):
        self.scope["test_log"].append(("json", content))
        await self.send_json({"echo": content})

    async def disconnect(self, code):
        self.scope["test_log"].append(("disconnect", code))


class TextConsumer(HeartbeatMixin, AsyncWebsocketConsumer):
    """A plain text/binary echo consumer."""

    heartbeat_interval = 2.0
    heartbeat_timeout = 1.0

    async def receive(self, text_data=None, bytes_data=None):
        self.scope["test_log"].append(("raw", text_data, bytes_data))
        if text_data is not None:
            await self.send(text_data=text_data)
        else:
            await self.send(bytes_data=bytes_data)


class SlowConsumer(JsonConsumer):
    """A consumer whose handler blocks for a long time."""

    async def receive_json(self, content, **kwargs):
        self.scope["test_log"].append(("slow-start", content))
        await self.scope["release"].wait()
        self.scope["test_log"].append(("slow-end", content))


class SettingsConsumer(HeartbeatMixin, AsyncJsonWebsocketConsumer):
    """Takes interval and timeout from the settings."""


class HookConsumer(HeartbeatMixin, AsyncJsonWebsocketConsumer):
    """Overrides through the get_*() hooks."""

    def get_heartbeat_interval(self):
        return 7.5

    def get_heartbeat_timeout(self):
        return 2.5


class NoHeartbeatConsumer(HeartbeatMixin, AsyncJsonWebsocketConsumer):
    heartbeat_interval = None


@pytest.fixture
def clock(heartbeat_clock):
    """The kit's clock: ``await clock.advance(s)`` runs the scheduler when checks fall due."""
    return heartbeat_clock


async def open_session(consumer=JsonConsumer, path="/ws/test/", tab="tab-1", **scope):
    """A connected communicator (``hello`` read, probes answered) and the consumer's log."""
    communicator = HeartbeatCommunicator(consumer.as_asgi(), path, tab=tab)
    communicator.scope["test_log"] = log = []
    communicator.scope.update(scope)
    connected, _ = await communicator.connect()
    assert connected
    return communicator, log


async def test_hello_is_sent_on_accept_with_the_settings(clock):
    communicator, log = await open_session()
    hello = communicator.hello
    assert hello["type"] == "hello"
    assert len(hello["session"]) == 32
    assert hello["tab"] == "tab-1"
    assert hello["interval_ms"] == 2000
    assert hello["timeout_ms"] == 1000
    assert isinstance(hello["server_time"], int)
    assert log == [("connect",)]
    await communicator.disconnect()


async def test_a_bad_tab_id_is_replaced_by_a_server_made_one(clock):
    communicator, _ = await open_session(tab="<script>")
    assert protocol.valid_tab_id(communicator.tab)
    assert communicator.tab != "<script>"
    await communicator.disconnect()


async def test_settings_and_hooks_set_interval_and_timeout(clock, settings):
    settings.HEARTBEAT_INTERVAL = 12.0
    settings.HEARTBEAT_TIMEOUT = 3.0
    communicator, _ = await open_session(SettingsConsumer)
    assert (communicator.hello["interval_ms"], communicator.hello["timeout_ms"]) == (12000, 3000)
    await communicator.disconnect()
    communicator, _ = await open_session(HookConsumer)
    assert (communicator.hello["interval_ms"], communicator.hello["timeout_ms"]) == (7500, 2500)
    await communicator.disconnect()


async def test_ping_is_answered_with_pong_echoing_the_id(clock):
    communicator, log = await open_session()
    for ident in ("abc", 42):
        await communicator.send_json_to({"type": "ping", "id": ident})
        pong = await communicator.receive_json_from()
        assert pong["type"] == "pong"
        assert pong["id"] == ident
        assert isinstance(pong["server_time"], int)
    await communicator.send_json_to({"type": "ping"})
    assert (await communicator.receive_json_from())["type"] == "pong"
    # Heartbeats never reach the user's handlers.
    assert log == [("connect",)]
    await communicator.disconnect()


async def test_ping_is_answered_while_the_user_handler_is_busy(clock):
    release = asyncio.Event()
    communicator, log = await open_session(SlowConsumer, release=release)
    await communicator.send_json_to({"type": "chat", "text": "slow"})
    await asyncio.sleep(0.01)
    assert log[-1] == ("slow-start", {"type": "chat", "text": "slow"})
    await communicator.send_json_to({"type": "ping", "id": 1})
    pong = await communicator.receive_json_from(timeout=1)
    assert pong["id"] == 1
    release.set()
    await asyncio.sleep(0.01)
    assert log[-1] == ("slow-end", {"type": "chat", "text": "slow"})
    await communicator.disconnect()


async def test_visible_is_recorded(clock):
    communicator, _ = await open_session()
    session = communicator.heartbeat_session
    assert session.visible is None
    await communicator.set_visible(False)  # a ping with "visible": false
    assert session.visible is False
    await communicator.set_visible(True)
    assert session.visible is True
    await communicator.disconnect()


async def test_silent_connection_is_probed_then_closed_with_4408(clock, heartbeat_signals):
    communicator, log = await open_session()
    await communicator.go_silent()
    await clock.advance(1.9)
    assert await communicator.receive_nothing()
    await clock.advance(0.1)  # silent for the interval: probed
    probe = await communicator.receive_json_from()
    assert probe == {"type": "ping", "id": "s1"}
    await clock.advance(0.9)
    assert await communicator.receive_nothing()
    await clock.advance(0.1)  # silent for interval + timeout: closed
    closed = await communicator.receive_output()
    assert closed == {"type": "websocket.close", "code": 4408, "reason": "heartbeat timeout"}
    # Torn down at once, before the transport says anything.
    (zombie,), (closed,) = heartbeat_signals.of("zombie_detected"), heartbeat_signals.of(
        "session_closed")
    assert (zombie["session"].id, zombie["silence"]) == (communicator.session_id,
                                                         pytest.approx(3.0))
    assert (closed["session"].id, closed["code"], closed["reason"]) == (
        communicator.session_id, 4408, "timeout")
    assert not get_scheduler().sessions
    await communicator.disconnect()
    # The late transport disconnect does not end it twice.
    assert heartbeat_signals.names() == ["session_opened", "zombie_detected", "session_closed"]
    assert log[-1] == ("disconnect", 1000)


async def test_answered_probe_keeps_the_session_and_measures_rtt(clock):
    communicator, _ = await open_session()
    session = communicator.heartbeat_session
    await communicator.go_silent()  # the test answers the probe itself, late
    await clock.advance(2.0)
    probe = await communicator.receive_json_from()
    await clock.advance(0.25)  # the answer takes 250 ms
    await communicator.resume()
    await communicator.send_json_to({"type": "pong", "id": probe["id"]})
    await communicator.go_silent()
    await asyncio.sleep(0.01)
    assert session.rtt == pytest.approx(0.25)
    assert session.rtt_avg == pytest.approx(0.25)
    for _ in range(3):
        await clock.advance(0.5)
    assert await communicator.receive_nothing(), "an answered probe must not lead to a close"
    await clock.advance(0.5)  # silent again for a whole interval since the pong
    assert await communicator.receive_json_from() == {"type": "ping", "id": "s2"}
    assert not session.closed
    await communicator.disconnect()


async def test_any_inbound_frame_counts_as_liveness(clock):
    communicator, log = await open_session()
    for _ in range(10):
        await clock.advance(1.5)
        await communicator.send_json_to({"type": "chat", "text": "hi"})
        assert (await communicator.receive_json_from())["echo"]["type"] == "chat"
    # 15 s passed in all, with a frame every 1.5 s: never probed, never closed.
    assert all(entry[0] in {"connect", "json"} for entry in log)
    assert get_scheduler().metrics.probes.value() == 0
    await communicator.disconnect()


async def test_no_interval_means_no_probe_and_no_close(clock):
    communicator, _ = await open_session(NoHeartbeatConsumer)
    assert communicator.hello["interval_ms"] is None and communicator.hello["timeout_ms"] is None
    await clock.advance(1000)
    assert await communicator.receive_nothing()
    await communicator.send_json_to({"type": "ping", "id": "still"})
    assert (await communicator.receive_json_from())["id"] == "still"
    await communicator.disconnect()


async def test_non_heartbeat_json_reaches_the_user_untouched(clock):
    communicator, log = await open_session()
    frames = [
        {"type": "chat", "text": "hello"},
        {"type": "pingx", "id": 1},
        {"nested": {"type": "ping", "id": 1}},
        [1, 2, 3],
        "just a string",
    ]
    for frame in frames:
        await communicator.send_json_to(frame)
        assert await communicator.receive_json_from() == {"echo": frame}
    assert log[1:] == [("json", frame) for frame in frames]
    await communicator.disconnect()


async def test_text_and_binary_consumers_are_unaffected(clock):
    communicator, log = await open_session(TextConsumer)
    await communicator.send_to(text_data="plain text, not JSON")
    assert await communicator.receive_from() == "plain text, not JSON"
    await communicator.send_to(bytes_data=b"\x00\x01binary")
    assert await communicator.receive_from() == b"\x00\x01binary"
    await communicator.send_to(text_data='{"kind": "json but not ours"}')
    assert await communicator.receive_from() == '{"kind": "json but not ours"}'
    await communicator.send_to(text_data='says "type":"ping" in prose')
    assert await communicator.receive_from() == 'says "type":"ping" in prose'
    # Heartbeats still work on a text consumer.
    await communicator.send_to(text_data='{"type":"ping","id":"t"}')
    assert json.loads(await communicator.receive_from())["type"] == "pong"
    assert [entry[1] or entry[2] for entry in log] == [
        "plain text, not JSON",
        b"\x00\x01binary",
        '{"kind": "json but not ours"}',
        'says "type":"ping" in prose',
    ]
    await communicator.disconnect()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ('{"type":"ping","id":[1]}', "invalid_message"),
        ('{"type":"ping","id":true}', "invalid_message"),
        ('{"type":"ping","visible":"yes"}', "invalid_message"),
        ('{"type":"pong"}', "invalid_message"),
        ('{"type":"ping", "id": }', "invalid_json"),
        ('{"type":"ping","id":"' + "x" * 5000 + '"}', "frame_too_large"),
        ("{not json at all", "invalid_json"),
    ],
)
async def test_bad_heartbeat_frames_get_an_error_and_the_connection_stays(clock, frame, code):
    communicator, log = await open_session()
    await communicator.send_to(text_data=frame)
    error = await communicator.receive_json_from()
    assert error["type"] == "error"
    assert error["code"] == code
    assert error["detail"]
    await communicator.send_json_to({"type": "ping", "id": "after"})
    assert (await communicator.receive_json_from())["id"] == "after"
    assert log == [("connect",)]
    await communicator.disconnect()


async def test_binary_frame_on_a_json_consumer_gets_an_error(clock):
    communicator, _ = await open_session()
    await communicator.send_to(bytes_data=b"\xff\x00")
    error = await communicator.receive_json_from()
    assert error["code"] == "binary_not_supported"
    assert (await communicator.ping())["type"] == "pong"
    await communicator.disconnect()


async def test_ping_flood_is_closed_with_4429_and_a_retry_hint(clock, settings):
    settings.HEARTBEAT_RATE_LIMIT = 5.0
    settings.HEARTBEAT_RATE_BURST = 10
    settings.HEARTBEAT_RETRY_AFTER_MS = 3000
    communicator, _ = await open_session()
    for i in range(11):
        await communicator.send_json_to({"type": "ping", "id": i})
    pongs = [await communicator.receive_json_from() for _ in range(10)]
    assert [p["id"] for p in pongs] == list(range(10))
    notice = await communicator.receive_json_from()
    assert notice == {
        "type": "close", "code": 4429, "reason": "too many messages", "retry_after_ms": 3000,
    }
    closed = await communicator.receive_output()
    assert closed["code"] == 4429
    assert protocol.parse_retry_hint(closed["reason"]) == 3000
    await communicator.disconnect()


async def test_rate_limit_refills_over_time(clock, settings):
    settings.HEARTBEAT_RATE_LIMIT = 5.0
    settings.HEARTBEAT_RATE_BURST = 2
    communicator, _ = await open_session()
    for i in range(20):
        await clock.advance(0.25)  # 4 per second, under the limit of 5
        await communicator.send_json_to({"type": "ping", "id": i})
        assert (await communicator.receive_json_from())["id"] == i
    await communicator.disconnect()


def closes(log):
    """The (code, reason) of every session_closed signal a SignalLog recorded."""
    return [(sent["code"], sent["reason"]) for sent in log.of("session_closed")]


async def test_signals_report_open_and_clean_close(clock, heartbeat_signals):
    communicator, log = await open_session()
    await communicator.disconnect(code=1000)
    assert heartbeat_signals.names() == ["session_opened", "session_closed"]
    opened, = heartbeat_signals.of("session_opened")
    assert (opened["sender"], opened["session"].tab) == (JsonConsumer, "tab-1")
    assert closes(heartbeat_signals) == [(1000, "closed")]
    assert log[-1] == ("disconnect", 1000)
    assert not get_scheduler().sessions


async def test_transport_loss_is_recorded_as_such(clock, heartbeat_signals):
    communicator, _ = await open_session()
    await communicator.disconnect(code=1006)
    assert [reason for _, reason in closes(heartbeat_signals)] == ["transport_lost"]


async def test_a_failing_signal_receiver_does_not_break_the_session(clock, caplog):
    def broken(**kwargs):
        raise RuntimeError("receiver bug")

    signals.session_opened.connect(broken)
    try:
        communicator, _ = await open_session()
        assert (await communicator.ping())["type"] == "pong"
        await communicator.disconnect()
    finally:
        signals.session_opened.disconnect(broken)
    assert "receiver bug" in caplog.text


async def test_server_close_is_recorded_with_its_code(clock, heartbeat_signals):
    class Closer(JsonConsumer):
        async def receive_json(self, content, **kwargs):
            await self.close(code=4403)

    communicator, _ = await open_session(Closer)
    await communicator.send_json_to({"type": "go"})
    assert (await communicator.receive_output())["code"] == 4403
    await communicator.disconnect(code=4403)
    assert closes(heartbeat_signals) == [(4403, "server_closed")]


async def test_heartbeat_disconnect_event_closes_with_4000(clock):
    communicator, _ = await open_session()
    await get_channel_layer().send(communicator.consumer.channel_name,
                                   {"type": "heartbeat.disconnect"})
    closed = await communicator.receive_output()
    assert closed["code"] == 4000
    await communicator.disconnect(code=4000)


async def test_heartbeat_probe_event_sends_a_probe_and_records_rtt(clock):
    communicator, _ = await open_session()
    await communicator.go_silent()  # the test answers the probe itself, late
    await get_channel_layer().send(communicator.consumer.channel_name,
                                   {"type": "heartbeat.probe"})
    probe = await communicator.receive_json_from()
    assert probe["type"] == "ping"
    await clock.advance(0.04)
    await communicator.resume()
    await communicator.send_json_to({"type": "pong", "id": probe["id"]})
    await asyncio.sleep(0.01)
    assert communicator.heartbeat_session.rtt == pytest.approx(0.04)
    await communicator.disconnect()


async def test_a_consumer_that_crashes_ends_its_session(clock, heartbeat_signals):
    class Crasher(JsonConsumer):
        async def receive_json(self, content, **kwargs):
            raise RuntimeError("user bug")

    communicator, _ = await open_session(Crasher)
    await communicator.send_json_to({"type": "boom"})
    with pytest.raises(RuntimeError, match="user bug"):
        await communicator.receive_output()
    assert closes(heartbeat_signals) == [(1011, "server_error")]
    assert not get_scheduler().sessions


async def test_a_cancelled_consumer_ends_its_session_as_a_shutdown(clock, heartbeat_signals):
    communicator, _ = await open_session()
    communicator.future.cancel()  # what the server does to its apps on shutdown
    with pytest.raises(asyncio.CancelledError):
        await communicator.future
    assert closes(heartbeat_signals) == [(1001, "server_shutdown")]
    assert not get_scheduler().sessions

