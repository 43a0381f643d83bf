"""Graceful drain: what a process does between SIGTERM and its server's own shutdown.

Every deploy and ``systemctl restart`` sends SIGTERM. Left to the server, the
clients see 1006 or 1012 with no hint, presence leaves wait for a tick that never
comes, and the session rows end ``instance_lost``. Drained, the process:

1. stops listening (``HEARTBEAT_DRAIN_STOP_LISTENING``): its listening sockets are
   closed, so a proxy's next connect is refused at once and goes to another process,
   instead of a returning tab being sent back here; handshakes that still arrive (a
   socket shared with other workers, a server this cannot reach) are refused with 4001
   and a retry hint, by the admission gate and the mixin;
2. closes every session with a ``close`` notice and 4001, each with a retry hint
   drawn over ``HEARTBEAT_DRAIN_SPREAD`` seconds, so the clients come back spread
   out, to the processes that are still up;
3. keeps its tracker ticking until every leave grace has run out, so a tab that
   came back on another process within the grace replaces its meta (no blink)
   and the others leave, broadcast to the other processes;
4. writes the session rows (``server_shutdown``) and its instance's ``stopped_at``;
5. hands the signal back to the server, which shuts down as it would have.

Nothing waits longer than ``HEARTBEAT_DRAIN_TIMEOUT`` in all. A second SIGTERM
skips what is left.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import signal
import sys
import threading
from collections.abc import Awaitable, Callable

from . import conf
from .admission import Gate
from .recorder import Recorder
from .runtime import Runtime
from .tracker import Tracker

logger = logging.getLogger(__name__)

# Sessions closed before the drain yields to the event loop once.
CLOSE_BATCH = 64

Closer = Callable[[int], Awaitable[None]]

_handler: dict = {"installed": False, "signalled": False, "previous": None}


async def drain(runtime: Runtime) -> dict[str, int]:
    """Drain the runtime's sessions now; return what was done (for logs and tests)."""
    if runtime.draining:
        return {"sessions": 0}
    runtime.draining = True
    runtime.service(Gate).draining = True
    clock = runtime.clock
    deadline = clock.monotonic() + conf.get("HEARTBEAT_DRAIN_TIMEOUT")
    spread_ms = int((conf.get("HEARTBEAT_DRAIN_SPREAD") or 0.0) * 1000)
    floor_ms = conf.get("HEARTBEAT_RETRY_MIN_MS")
    closers = list(runtime.closers.values())
    listeners = stop_listening() if conf.get("HEARTBEAT_DRAIN_STOP_LISTENING") else 0
    logger.warning("draining %d sessions (retry hints spread over %d ms, %d listening "
                   "sockets closed)", len(closers), spread_ms, listeners)
    for count, closer in enumerate(closers, 1):
        try:
            await closer(floor_ms + int(runtime.rng() * spread_ms))
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
    logger.warning("drain done: %d sessions closed", len(closers))
    return {"sessions": len(closers)}


def stop_listening() -> int:
    """Close this process's listening sockets; return how many were closed.

    Daphne listens through Twisted ports (``stopListening()``), uvicorn through
    asyncio servers (``Server.close()``). Each closes this process's descriptor only:
    a socket shared with sibling workers keeps listening for them, which then take
    the new connections. Open connections are not touched.
    """
    closed = 0
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is not None:
        from twisted.internet import tcp, unix

        for reader in list(reactor.getReaders()):
            if isinstance(reader, tcp.Port | unix.Port):
                try:
                    _accept_queued(reader)
                    reader.stopListening()
                    closed += 1
                except Exception:
                    logger.exception("stopping a listening port failed")
    closed += _close_asyncio_servers(asyncio.get_running_loop())
    return closed


def _accept_queued(port, rounds: int = 64) -> None:
    # Closing a listening socket resets every connection still queued in its accept
    # backlog (a proxy logs "recv() failed (104: Connection reset by peer)" and may
    # answer 502). Accept what is queued first: those handshakes are then refused
    # with 4001 and a short hint, like any that reach a draining process.
    poller = select.poll()
    poller.register(port.fileno(), select.POLLIN)
    for _ in range(rounds):
        if not poller.poll(0):
            return
        port.doRead()


def _close_asyncio_servers(loop: asyncio.AbstractEventLoop) -> int:
    # asyncio keeps no list of a loop's servers; each listening socket is a reader
    # whose callback is the loop's _accept_connection, with the Server among its
    # arguments. Loops without a selector (uvloop) are left to the server's own close.
    selector = getattr(loop, "_selector", None)
    accept = getattr(type(loop), "_accept_connection", None)
    if selector is None or accept is None:
        return 0
    servers = []
    for key in list(selector.get_map().values()):
        handle = key.data[0] if isinstance(key.data, tuple) and key.data else None
        callback = getattr(handle, "_callback", None)
        if getattr(callback, "__func__", None) is accept:
            server = next((a for a in handle._args if isinstance(a, asyncio.Server)), None)
            if server is not None and server not in servers:
                servers.append(server)
    for server in servers:
        server.close()
    return len(servers)


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
