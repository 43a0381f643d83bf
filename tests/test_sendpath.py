"""The mixin's frames skip the send wrappers that pass a websocket.send unchanged
(heartbeat_app/sendpath.py), and keep every other wrapper."""

from channels.auth import AuthMiddlewareStack
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.sessions import InstanceSessionWrapper
from channels.testing import WebsocketCommunicator

from heartbeat_app.admission import AdmissionMiddleware
from heartbeat_app.consumers import HeartbeatMixin
from heartbeat_app.sendpath import frame_send, frames_out, passes_frames


async def server_send(message):
    """Stands for the server's own send, the end of the chain."""


def session_wrapped(send):
    return InstanceSessionWrapper({"cookies": {}}, send).send


def test_the_session_wrapper_and_the_gates_watch_are_skipped():
    async def watching(message):
        await server_send(message)

    chain = session_wrapped(passes_frames(watching, session_wrapped(server_send)))
    assert frame_send(chain) is server_send


def test_a_wrapper_the_package_does_not_know_is_kept():
    seen = []

    async def apps_own_middleware(message):
        seen.append(message)
        await server_send(message)

    assert frame_send(session_wrapped(apps_own_middleware)) is apps_own_middleware
    assert frame_send(server_send) is server_send


def test_a_session_wrapper_that_acts_on_frames_is_kept(monkeypatch):
    wrapped = session_wrapped(server_send)
    monkeypatch.setattr(wrapped.__self__, "save_message_types",
                        ["http.response.start", "websocket.send"])
    assert frame_send(wrapped) is wrapped


class Consumer(HeartbeatMixin, AsyncJsonWebsocketConsumer):
    heartbeat_interval = 5.0
    heartbeat_timeout = 5.0
    made: list = []

    async def connect(self):
        Consumer.made.append(self)
        await self.accept()


async def test_through_the_demos_stack_the_frames_go_straight_to_the_servers_send():
    app = AdmissionMiddleware(AuthMiddlewareStack(Consumer.as_asgi()))
    communicator = WebsocketCommunicator(app, "/ws/x/")
    connected, _ = await communicator.connect()
    assert connected
    hello = await communicator.receive_json_from()
    assert hello["type"] == "hello"
    await communicator.send_json_to({"type": "ping", "id": "p1"})
    assert (await communicator.receive_json_from())["type"] == "pong"
    consumer = Consumer.made[-1]
    assert consumer.base_send is not communicator.output_queue.put
    assert frames_out(consumer) == communicator.output_queue.put
    await communicator.disconnect()
