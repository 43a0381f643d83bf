"""The same kit from Django's TestCase."""

from chat.routing import application
from django.contrib.auth.models import User
from django.test import TestCase

from heartbeat_app.testing import HeartbeatCommunicator, HeartbeatTestMixin


class ZombieTests(HeartbeatTestMixin, TestCase):
    async def test_a_silent_client_is_closed_with_4408(self):
        user = await User.objects.acreate(username="dora")
        async with HeartbeatCommunicator(application, "/ws/chat/lobby/", user=user) as dora:
            await dora.go_silent()
            await self.heartbeat_clock.advance(25 + 10)
            self.assertEqual((await dora.receive_close())["code"], 4408)
        closed = self.heartbeat_signals.of("session_closed")[0]
        self.assertEqual((closed["code"], closed["reason"]), (4408, "timeout"))
