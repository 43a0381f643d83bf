"""A testing kit for consumers that use HeartbeatMixin; see docs/testing.md.

Importable before Django is set up (a conftest may import it): what needs the
app registry is loaded on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .clock import FakeClock, HeartbeatClock, active_clock
from .errors import HeartbeatTestError
from .signals import SIGNALS, SignalLog, capture_signals

if TYPE_CHECKING:
    from .cases import HeartbeatTestMixin
    from .communicator import HeartbeatCommunicator
    from .presence import (
        REMOTE_INSTANCE,
        assert_member,
        assert_not_member,
        join_remote_member,
        presence_snapshot,
        simulate_instance_lost,
    )

_LAZY = {
    "HeartbeatCommunicator": "communicator",
    "HeartbeatTestMixin": "cases",
    "REMOTE_INSTANCE": "presence",
    "assert_member": "presence",
    "assert_not_member": "presence",
    "join_remote_member": "presence",
    "presence_snapshot": "presence",
    "simulate_instance_lost": "presence",
}

__all__ = [
    "FakeClock", "HeartbeatClock", "HeartbeatCommunicator", "HeartbeatTestError",
    "HeartbeatTestMixin", "REMOTE_INSTANCE", "SIGNALS", "SignalLog", "active_clock",
    "assert_member", "assert_not_member", "capture_signals", "join_remote_member",
    "presence_snapshot", "simulate_instance_lost",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{module}", __name__), name)
