"""Graceful drain: what a process does between SIGTERM and its server's own shutdown.

Every deploy and ``systemctl restart`` sends SIGTERM. Left to the server, the
clients see 1006 or 1012 with no hint, presence leaves wait for a tick that never
comes, and the session rows end ``instance_lost``. Drained, the process:

1. stops listening (``HEARTBEAT_DRAIN_STOP_LISTENING``): its listening sockets are
   closed, so a proxy's next connect is refused at once and goes to another process,
   instead of a returning tab being sent back here; handshakes that still arrive (a
   socket shared with other workers, a server this cannot reach) are refused with 4001
   and a retry hint, by the admission gate and the mixin;
2. closes every session with a ``close`` notice and 4001, each with a retry hint that
   puts the returns evenly over the spread, counted from the drain's start: the spread
   is ``HEARTBEAT_DRAIN_SPREAD`` seconds at the least, longer when it has more sessions
   than ``HEARTBEAT_DRAIN_RATE`` a second of it would send back, so the clients come
   back at a pace the processes still up can take;
3. keeps each drained tab's presence for its hint plus the leave grace, its tracker
   ticking until the last has run out, so a tab that came back on another process in
   that time replaces its meta (no blink) and the others leave, broadcast to the
   other processes;
4. writes the session rows (``server_shutdown``) and its instance's ``stopped_at``;
5. hands the signal back to the server, which shuts down as it would have.

Nothing waits longer than ``HEARTBEAT_DRAIN_TIMEOUT`` in all. A second SIGTERM
skips what is left.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Awaitable, Callable

from . import conf
from .admission import Gate
from .listeners import defer_autobahn_pformat, lengthen_close_timeout, stop_listening
from .recorder import Recorder
from .runtime import Runtime
from .tracker import Tracker

logger = logging.getLogger(__name__)

# Sessions closed before the drain yields to the event loop once.
CLOSE_BATCH = 64
# Seconds of HEARTBEAT_DRAIN_TIMEOUT kept for the closes and the last writes: the spread
# grows to at most the timeout less the leave grace and this.
DRAIN_MARGIN = 2.0

Closer = Callable[[int], Awaitable[None]]

_handler: dict = {"installed": False, "signalled": False, "previous": None}


async def drain(runtime: Runtime) -> dict[str, int]:
    """Drain the runtime's sessions now; return what was done (for logs and tests)."""
    if runtime.draining:
        return {"sessions": 0}
    runtime.draining = True
    runtime.service(Gate).draining = True
    clock = runtime.clock
    started = clock.monotonic()
    deadline = started + conf.get("HEARTBEAT_DRAIN_TIMEOUT")
    floor_ms = conf.get("HEARTBEAT_RETRY_MIN_MS")
    closers = list(runtime.closers.values())
    spread_ms = int(spread(len(closers)) * 1000)
    listeners = stop_listening() if conf.get("HEARTBEAT_DRAIN_STOP_LISTENING") else 0
    logger.warning("draining %d sessions (retry hints spread over %d ms, %d listening "
                   "sockets closed)", len(closers), spread_ms, listeners)
    for count, closer in enumerate(closers, 1):
        # When this tab is to come back, from the drain's start: the n returns evenly over
        # the spread in the order of the closes, each at random within its n-th, so they
        # keep to the spread (and the drain to its time) however long the closes take.
        due_ms = floor_ms + spread_ms * (count - 1 + runtime.rng()) / len(closers)
        try:
            await closer(max(floor_ms, int(due_ms - (clock.monotonic() - started) * 1000)))
        except Exception:
            logger.exception("closing a session for the drain failed")
        if count % CLOSE_BATCH == 0:
            await asyncio.sleep(0)
    tracker = runtime.existing(Tracker)
    if tracker is not None:
        # The tracker's own ticks finish the leaves once their grace is over and
        # broadcast them; wait for that, within the drain's time.
        tracker.ensure_running()
        while tracker.pending() and clock.monotonic() < deadline:
            await asyncio.sleep(min(conf.tick(), 0.1))
        await tracker.stop()
        if tracker.pending():
            logger.warning("drain timed out with %d sessions' presence not flushed",
                           len(tracker.local))
    recorder = runtime.existing(Recorder)
    if recorder is not None and conf.get("HEARTBEAT_RECORD_SESSIONS"):
        await recorder.stop()
        await recorder.step(force=True, final=True)
    logger.warning("drain done: %d sessions closed in %.1f s", len(closers),
                   clock.monotonic() - started)
    return {"sessions": len(closers)}


def spread(sessions: int) -> float:
    """Seconds over which a drain of ``sessions`` spreads their retry hints.

    ``HEARTBEAT_DRAIN_SPREAD`` at the least; ``sessions / HEARTBEAT_DRAIN_RATE`` when
    that is longer, so the processes still up are not sent more than they take (a tab
    they greet after its grace blinks); never so long that the last tabs' hint plus
    their grace outlasts ``HEARTBEAT_DRAIN_TIMEOUT``.
    """
    least = conf.get("HEARTBEAT_DRAIN_SPREAD") or 0.0
    rate = conf.get("HEARTBEAT_DRAIN_RATE")
    if not rate:
        return least
    room = conf.get("HEARTBEAT_DRAIN_TIMEOUT") - conf.get("PRESENCE_LEAVE_GRACE") - DRAIN_MARGIN
    return max(least, min(sessions / rate, room))


def prepare(runtime: Runtime) -> None:
    """Ready the process for a drain; called with every session's open, cheap after the first."""
    lengthen_close_timeout()
    defer_autobahn_pformat()
    install_signal_handler(runtime)


def install_signal_handler(runtime: Runtime) -> bool:
    """Drain ``runtime`` on SIGTERM, then pass the signal on to the server's own handler.

    Installed once per process, from the main thread (where servers run their
    loop), after the server installed its handlers, which it then wraps.
    """
    if _handler["installed"] or not conf.get("HEARTBEAT_DRAIN_ON_SIGTERM"):
        return False
    if threading.current_thread() is not threading.main_thread():
        return False
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGTERM)
    _handler.update(installed=True, previous=previous)

    def on_sigterm(signum, frame):
        if _handler["signalled"]:  # a second SIGTERM: no more waiting
            _pass_on(previous, signum, frame)
            return
        _handler["signalled"] = True
        loop.call_soon_threadsafe(_start, runtime, previous, signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    return True


def _start(runtime: Runtime, previous, signum, frame) -> None:
    async def drain_then_pass_on():
        try:
            await drain(runtime)
        except Exception:
            logger.exception("drain failed")
        finally:
            _pass_on(previous, signum, frame)

    asyncio.get_running_loop().create_task(drain_then_pass_on())


def _pass_on(previous, signum, frame) -> None:
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
