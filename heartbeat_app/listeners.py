"""What the package reaches into the ASGI server for: its listening sockets, its close timer,
and one formatting cost of autobahn's on every connection.

ASGI gives an application no handle on the server's sockets, so the two things a
drain needs from below the protocol are found in the running process: Daphne's
Twisted ports (through the reactor) and uvicorn's asyncio servers (through the
event loop's selector). Anything not found is left to the server's own shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import pprint
import select
import sys

from . import conf

logger = logging.getLogger(__name__)

_tuned = {"close_timeout": False, "pformat": False}


def stop_listening() -> int:
    """Close this process's listening sockets; return how many were closed.

    Daphne listens through Twisted ports (``stopListening()``), uvicorn through
    asyncio servers (``Server.close()``). Each closes this process's descriptor only:
    a socket shared with sibling workers keeps listening for them, which then take
    the new connections. Open connections are not touched.
    """
    closed = 0
    for port in _twisted_ports():
        try:
            _accept_queued(port)
            port.stopListening()
            closed += 1
        except Exception:
            logger.exception("stopping a listening port failed")
    closed += _close_asyncio_servers(asyncio.get_running_loop())
    return closed


def lengthen_close_timeout() -> None:
    """Give Daphne's close handshakes ``HEARTBEAT_CLOSE_HANDSHAKE_TIMEOUT`` seconds.

    Autobahn, under Daphne, aborts a connection (a TCP reset) when the client has
    not answered a close frame within one second, counted from when the frame was
    queued, not sent. A loop busy for a second (a drain closing thousands of
    sessions, a burst of handshakes refused with 4001 or 4013) then resets
    connections whose close notice and retry hint are still in the server's write
    buffer: the client sees 1006 and no hint. Done once per process, with its
    first session; sessions already open get the new time too.
    """
    if _tuned["close_timeout"]:
        return
    _tuned["close_timeout"] = True
    seconds = conf.get("HEARTBEAT_CLOSE_HANDSHAKE_TIMEOUT")
    if seconds is None:
        return
    for port in _twisted_ports():
        ws_factory = getattr(getattr(port.factory, "server", None), "ws_factory", None)
        if ws_factory is None or not hasattr(ws_factory, "setProtocolOptions"):
            continue
        ws_factory.setProtocolOptions(closeHandshakeTimeout=seconds)
        for protocol in list(getattr(port.factory.server, "connections", {})):
            if hasattr(protocol, "closeHandshakeTimeout"):
                protocol.closeHandshakeTimeout = seconds


class _Deferred:
    """``pprint.pformat(value)``, worked out only when the text is used."""

    __slots__ = ("args", "kwargs")

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __str__(self) -> str:
        return pprint.pformat(*self.args, **self.kwargs)

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def defer_autobahn_pformat() -> bool:
    """Stop autobahn formatting a debug line nobody reads on every connection.

    Each WebSocket connection under Daphne pretty-prints autobahn's ~40 protocol
    options for a ``log.debug`` line, whether debug logging is on or not; in a restart
    storm that was 7.7 % of the process's samples (``bench.storm --profile``), paid by
    every handshake, refused ones too. Autobahn's module gets a ``pformat`` that
    formats only when the line is written; its own ``Timings.__str__``, which must
    return text, keeps the real one. Done once per process; False if autobahn is not
    loaded or not as expected.
    """
    if _tuned["pformat"]:
        return False
    _tuned["pformat"] = True
    module = sys.modules.get("autobahn.websocket.protocol")
    timings = getattr(module, "Timings", None)
    if module is None or getattr(module, "pformat", None) is not pprint.pformat or (
            timings is None):
        return False
    timings.__str__ = lambda self: pprint.pformat(self._timings)
    module.pformat = _Deferred
    return True


def _twisted_ports() -> list:
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None:
        return []
    from twisted.internet import tcp, unix

    return [r for r in list(reactor.getReaders()) if isinstance(r, tcp.Port | unix.Port)]


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
