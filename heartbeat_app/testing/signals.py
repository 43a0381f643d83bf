"""Recording the package's signals in a test, instead of connecting receivers by hand."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .. import signals as heartbeat_signals

#: The signals of heartbeat_app.signals, by name.
SIGNALS = ("session_opened", "zombie_detected", "session_closed", "member_joined", "member_left")


class SignalLog:
    """The signals sent while recording: ``(name, kwargs)`` in the order they were sent."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def names(self) -> list[str]:
        """The names of the signals sent, in order."""
        return [name for name, _ in self.events]

    def of(self, name: str) -> list[dict[str, Any]]:
        """The keyword arguments (``sender`` included) of every send of one signal."""
        if name not in SIGNALS:
            raise ValueError(f"No heartbeat signal is called {name!r}: one of {SIGNALS}.")
        return [kwargs for sent, kwargs in self.events if sent == name]

    def clear(self) -> None:
        """Forget what was recorded so far."""
        self.events.clear()

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        return iter(self.events)

    def __repr__(self) -> str:
        return f"<SignalLog {self.names()}>"


@contextmanager
def capture_signals(*names: str) -> Iterator[SignalLog]:
    """Record the named heartbeat signals (all of them by default) while the block runs."""
    for name in names:
        if name not in SIGNALS:
            raise ValueError(f"No heartbeat signal is called {name!r}: one of {SIGNALS}.")
    log = SignalLog()
    connected = []
    for name in names or SIGNALS:
        signal = getattr(heartbeat_signals, name)

        # Async, so asend_robust runs it on the loop at once: a sync receiver would
        # run in a thread and could land after the test looked.
        async def receiver(sender, _name=name, **kwargs):
            kwargs.pop("signal", None)
            log.events.append((_name, {"sender": sender, **kwargs}))

        uid = f"heartbeat_app.testing:{id(log)}:{name}"
        signal.connect(receiver, weak=False, dispatch_uid=uid)
        connected.append((signal, uid))
    try:
        yield log
    finally:
        for signal, uid in connected:
            signal.disconnect(dispatch_uid=uid)
