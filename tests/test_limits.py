"""What one client may cost: a budget for every frame, a bounded inbox, no anonymous history."""

import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.testing import WebsocketCommunicator
from django.db import connections

from heartbeat_app.consumers import HeartbeatMixin
from heartbeat_app.models import Session
from heartbeat_app.recorder import Recorder


class Echo(HeartbeatMixin, AsyncJsonWebsocketConsumer):
    heartbeat_interval = 10.0
    heartbeat_timeout = 5.0

    async def receive_json(self, content, **kwargs):
        if self.scope.get("stuck"):
            await self.scope["stuck"].wait()  # a handler that does not keep up
        await self.send_json({"echo": content})


async def opened(**scope):
    communicator = WebsocketCommunicator(Echo.as_asgi(), "/ws/?tab=t")
    communicator.scope.update(scope)
    assert (await communicator.connect())[0]
    assert (await communicator.receive_json_from())["type"] == "hello"
    return communicator


async def closed_with(communicator):
    """Skip frames to the close notice, and return it with the close."""
    while True:
        message = await communicator.receive_output(timeout=2)
        if message["type"] == "websocket.send" and '"type":"close"' in message["text"]:
            notice = message["text"]
            close = await communicator.receive_output(timeout=2)
            return notice, close


async def test_app_frames_over_the_budget_close_4429_and_are_not_handled(settings,
                                                                        make_runtime):
    settings.HEARTBEAT_MESSAGE_RATE = 1.0
    settings.HEARTBEAT_MESSAGE_BURST = 5
    make_runtime()
    c = await opened()
    for n in range(8):  # a chat flood: none of it is a heartbeat
        await c.send_json_to({"type": "chat", "n": n})
    notice, close = await closed_with(c)
    assert '"code":4429' in notice and "retry_after_ms" in notice
    assert close == {"type": "websocket.close", "code": 4429,
                     "reason": "too many messages; retry_after_ms=5000"}
    await c.disconnect()


async def test_a_consumer_far_behind_its_client_closes_it_4429(settings, make_runtime):
    settings.HEARTBEAT_INBOX_MAX = 10
    settings.HEARTBEAT_MESSAGE_RATE = None
    make_runtime()
    stuck = asyncio.Event()
    c = await opened(stuck=stuck)
    for n in range(30):
        await c.send_json_to({"n": n})
    notice, close = await closed_with(c)
    assert close["code"] == 4429
    stuck.set()
    await c.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_anonymous_sessions_can_be_left_out_of_the_history(settings, make_runtime):
    from types import SimpleNamespace

    settings.HEARTBEAT_RECORD_SESSIONS = True
    settings.HEARTBEAT_RECORD_ANONYMOUS = False
    runtime = make_runtime()
    anonymous = await opened()
    member = await opened(user=SimpleNamespace(pk=5, is_authenticated=True))
    await runtime.service(Recorder).step(force=True)
    await anonymous.disconnect()
    await member.disconnect()
    await runtime.service(Recorder).step(force=True)
    rows = await sync_to_async(list)(Session.objects.values_list("user_key", flat=True))
    assert rows == ["5"]
    await sync_to_async(connections.close_all)()


@pytest.mark.parametrize("style", ["kv", "json"])
async def test_each_open_and_close_is_one_structured_log_line(settings, make_runtime, caplog,
                                                             style):
    import json
    import logging

    settings.HEARTBEAT_SESSION_LOG = style
    make_runtime()
    logger = logging.getLogger("heartbeat_app.sessions")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="heartbeat_app.sessions"):
            c = await opened()
            await c.disconnect(code=1000)
    finally:
        logger.removeHandler(caplog.handler)
    # (caplog may hold a record twice: once through its own handler, once through ours)
    lines = list(dict.fromkeys(r.getMessage() for r in caplog.records
                               if r.name == "heartbeat_app.sessions"))
    assert len(lines) == 2
    if style == "json":
        opened_line, closed_line = (json.loads(line) for line in lines)
        assert opened_line["event"] == "open" and closed_line["event"] == "close"
        assert (closed_line["code"], closed_line["reason"]) == (1000, "closed")
        assert closed_line["session"] == opened_line["session"]
        assert "duration_s" in closed_line and "rtt_ms" in closed_line
    else:
        assert lines[0].startswith("event=open session=")
        assert "event=close" in lines[1] and "code=1000 reason=closed" in lines[1]
        assert "member=anon:" in lines[1] and "rtt_ms=-" in lines[1]
