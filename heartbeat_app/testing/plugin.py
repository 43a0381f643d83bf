"""The kit's pytest plugin (entry point ``pytest11``): fixtures for HeartbeatMixin tests.

Loaded by pytest before Django is set up, so nothing of the app is imported here
until a fixture runs. The names are the kit's own (``heartbeat_*``), so they sit
next to a project's ``fake_clock`` or ``make_runtime`` fixtures without a clash.
"""

import pytest


@pytest.fixture
def heartbeat_clock():
    """A HeartbeatClock for the whole process: ``await heartbeat_clock.advance(seconds)``.

    Every event loop of the test gets a runtime on it (no background tasks), and
    presence a store of its own (on Redis: a key prefix of its own, deleted after).
    """
    from heartbeat_app.testing import HeartbeatClock

    clock = HeartbeatClock().activate()
    yield clock
    clock.deactivate()


@pytest.fixture
def heartbeat_signals():
    """The heartbeat signals sent during the test, as a SignalLog."""
    from heartbeat_app.testing import capture_signals

    with capture_signals() as log:
        yield log
