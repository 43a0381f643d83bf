"""Daphne's passes over every connection, paced: a slice every tenth of a second.

Daphne's ``Server`` runs ``application_checker`` every second and ``timeout_checker``
every two seconds, each a pass over every connection in one go. At 19,000 connections
those passes held the event loop long enough to be 12 % of a saturated process's
samples (docs/benchmarks.md, *19k-current-profile*), and every frame of every session
waited behind them. ``pace()`` replaces both with passes over a tenth of the
connections every tenth of a second: each connection is still checked once a second
(timeouts every two), and no pass holds the loop for more than its slice. The checks
themselves are Daphne's own (``daphne/server.py``, 4.x, BSD licence), taken one
connection at a time. HEARTBEAT_PACE_DAPHNE = False leaves Daphne as it is.

The application check does nothing for a connection that is open and whose application
still runs, which is nearly every connection of a busy server. So it is made only for
the connections that changed: those Daphne was told disconnected, and those whose
application finished (a done callback on the future Daphne made for it), every tenth
of a second until reaped. A sweep over every connection, a hundredth of them every
tenth of a second (each once in ``SWEEP_PERIOD``), is the safety net for any change
that came another way. At 19,000 connections this is about 2,000 checks a second, not
19,000.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
import weakref
from collections.abc import Callable
from concurrent.futures import CancelledError
from typing import Any

from . import conf

logger = logging.getLogger(__name__)

# Slices per period: a pass every PERIOD / SLICES seconds over that share of the connections.
SLICES = 10
# Daphne's periods, kept: application_checker every second, timeout_checker every two.
APPLICATION_PERIOD, TIMEOUT_PERIOD = 1.0, 2.0
# The application sweep over every connection, the safety net of the changed ones.
SWEEP_PERIOD = 10.0
_patched: dict[str, Callable] = {}
_METHODS = ("application_checker", "timeout_checker", "create_application",
            "protocol_disconnected")


def pace() -> bool:
    """Pace Daphne's Server, if Daphne is what runs and the setting allows; True if paced.

    Daphne's command line imports its server before it loads the application, so a
    process that has not imported it is not Daphne: nothing is imported for it (the
    import takes a third of a second, which ``migrate`` or uvicorn would pay for nothing).
    """
    if not conf.get("HEARTBEAT_PACE_DAPHNE") or _patched:
        return bool(_patched)
    module = sys.modules.get("daphne.server")
    if module is None:
        return False
    Server = module.Server  # noqa: N806 (the class, as Daphne names it)
    ours = {"application_checker": _application_checker, "timeout_checker": _timeout_checker,
            "create_application": _create_application,
            "protocol_disconnected": _protocol_disconnected}
    for name in _METHODS:
        _patched[name] = getattr(Server, name)
        setattr(Server, name, ours[name])
    return True


def unpace() -> None:
    """Give Daphne its own passes back (tests)."""
    if _patched:
        from daphne.server import Server

        for name in _METHODS:
            setattr(Server, name, _patched.pop(name))


def changed(server: Any) -> set:
    """The connections of ``server`` its application check is due for."""
    dirty = server.__dict__.get("_heartbeat_changed")
    if dirty is None:
        dirty = server.__dict__["_heartbeat_changed"] = set()
    return dirty


def _create_application(self, protocol, scope):
    queue = _patched["create_application"](self, protocol, scope)
    future = self.connections.get(protocol, {}).get("application_instance")
    if future is not None:
        future.add_done_callback(lambda _: changed(self).add(protocol))
        _protocols[future] = protocol
    return queue


# Daphne's protocol of each application's task (the task the ASGI application runs in).
_protocols: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def stop_reading(task: asyncio.Future | None) -> bool:
    """Read no more from the connection of the application running in ``task``; True if
    stopped. For a flooding client closed with 4429: what it had sent meanwhile is then
    neither read nor parsed (Daphne's WebSocket protocol would parse every frame of it while
    the close handshake waits behind them); the close frame still goes out, and the
    connection is dropped at the close handshake's timeout. Only under Daphne, paced."""
    protocol = _protocols.get(task) if task is not None else None
    transport = getattr(protocol, "transport", None)
    if transport is None or not hasattr(transport, "pauseProducing"):
        return False
    transport.pauseProducing()
    return True


def _protocol_disconnected(self, protocol) -> None:
    _patched["protocol_disconnected"](self, protocol)
    changed(self).add(protocol)


class _Walk:
    """A pass over a snapshot of the connections, a slice a call."""

    __slots__ = ("items", "at")

    def __init__(self) -> None:
        self.items: list = []
        self.at = 0

    def next_slice(self, connections: dict, slices: int) -> list:
        if self.at >= len(self.items):
            self.items, self.at = list(connections), 0
        size = max(1, math.ceil(len(self.items) / slices))
        part = self.items[self.at:self.at + size]
        self.at += size
        return part


def _walk(server: Any, name: str) -> _Walk:
    walk = server.__dict__.get(name)
    if walk is None:
        walk = server.__dict__[name] = _Walk()
    return walk


def _slice(server: Any, name: str, slices: int = SLICES) -> list[tuple[Any, dict]]:
    """The next slice's connections still there (not gone since the snapshot), with details."""
    connections = server.connections
    return [(protocol, connections[protocol])
            for protocol in _walk(server, name).next_slice(connections, slices)
            if protocol in connections]


def _again(server: Any, check: Callable[[Any], None], period: float, method) -> None:
    from twisted.internet import reactor

    try:
        check(server)
    finally:
        reactor.callLater(period / SLICES, method)


def _application_checker(self) -> None:
    _again(self, check_applications, APPLICATION_PERIOD, self.application_checker)


def _timeout_checker(self) -> None:
    _again(self, check_timeouts, TIMEOUT_PERIOD, self.timeout_checker)


def check_applications(server) -> None:
    """Daphne's application_checker over the changed connections and the sweep's next slice."""
    connections, dirty = server.connections, changed(server)
    for protocol in list(dirty):
        details = connections.get(protocol)
        if details is not None:
            _check_application(server, protocol, details)
        if protocol not in connections or "disconnected" not in connections[protocol]:
            # Reaped, or open with its application done and its future dropped: nothing
            # more until it disconnects. A disconnected one whose application still runs
            # stays, for Daphne's close timeout.
            dirty.discard(protocol)
    slices = round(SWEEP_PERIOD / APPLICATION_PERIOD * SLICES)
    for protocol, details in _slice(server, "_heartbeat_app_walk", slices):
        _check_application(server, protocol, details)


def check_timeouts(server) -> None:
    """Daphne's timeout_checker over the next slice of ``server``'s connections."""
    for protocol, _ in _slice(server, "_heartbeat_timeout_walk"):
        protocol.check_timeouts()


def _check_application(self, protocol, details: dict) -> None:
    # Daphne's application_checker, for one connection.
    disconnected = details.get("disconnected", None)
    application_instance = details.get("application_instance", None)
    if disconnected and time.time() - disconnected > self.application_close_timeout:
        if application_instance and not application_instance.done():
            logger.warning("Application instance %r for connection %s took too long to shut "
                           "down and was killed.", application_instance, repr(protocol))
            application_instance.cancel()
    if application_instance and application_instance.done():
        try:
            exception = application_instance.exception()
        except (CancelledError, asyncio.CancelledError):
            pass
        else:
            if exception:
                if isinstance(exception, KeyboardInterrupt):
                    self.stop()
                else:
                    logging.getLogger("daphne.server").error(
                        "Exception inside application: %s", exception, exc_info=exception)
                    if not disconnected:
                        protocol.handle_exception(exception)
        del details["application_instance"]
        application_instance = None
    if not application_instance and disconnected:
        del self.connections[protocol]
