"""The kit for Django's test cases: TestCase, TransactionTestCase, SimpleTestCase."""

from __future__ import annotations

from .clock import HeartbeatClock
from .signals import capture_signals


class HeartbeatTestMixin:
    """Gives each test ``self.heartbeat_clock`` (active) and ``self.heartbeat_signals``.

    Put it before the test case class: ``class ChatTests(HeartbeatTestMixin, TestCase)``.
    Write the tests as ``async def`` methods: a communicator lives on one event loop.
    """

    heartbeat_clock: HeartbeatClock

    def setUp(self) -> None:
        super().setUp()
        self.heartbeat_clock = HeartbeatClock().activate()
        self.addCleanup(self.heartbeat_clock.deactivate)
        recording = capture_signals()
        self.heartbeat_signals = recording.__enter__()
        self.addCleanup(recording.__exit__, None, None, None)
