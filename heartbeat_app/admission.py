"""Admission control: a cap on WebSocket handshakes in flight and on the connect rate.

A restart sends every client back at once. A process that starts every handshake
it is offered works on thousands at a time, finishes each after the server's own
handshake timeout (Daphne's is 5 s) and completes none: congestion collapse. The
gate below admits what the process can finish, and answers everyone else at once,
cheaply, with when to come back: the connection is accepted, gets a ``close``
notice with ``retry_after_ms`` and is closed with 4013 (4001 while the server
drains). Not 1013: Daphne cannot send it (autobahn allows only 1000 and
3000-4999), and one code everywhere is simpler for clients. The hints are
paced: each refused client is given the next free slot at the rate the
process measurably completes handshakes, so they come back no
faster than it can take them. Nothing refused reaches the rest of the ASGI
stack: no session or auth middleware, no channel layer, no store, no database.

Put it outermost, around everything else of the WebSocket side::

    "websocket": AdmissionMiddleware(AllowedHostsOriginValidator(AuthMiddlewareStack(...)))
"""

from __future__ import annotations

import logging
import random
from collections import deque
from contextlib import contextmanager
from typing import Any

from . import conf, protocol
from .protocol import CloseCode
from .runtime import Runtime, Service, get_runtime
from .sendpath import passes_frames

logger = logging.getLogger(__name__)

# Weight of the newest handshake in the smoothed handshake duration.
DURATION_SMOOTHING = 0.05
# Seconds a handshake is assumed to take before one was measured.
FIRST_DURATION = 0.05
# The lowest and highest rates (per second) the hints are paced at.
MIN_RATE, MAX_RATE = 20.0, 5000.0
# No hint sends a client further away than this: a client that comes back too early is
# refused again cheaply, while a promise of minutes would leave the process idle.
MAX_HINT_MS = 30_000
# Hints are spread by up to this fraction on top of the slot, so no two clients share one.
HINT_JITTER = 0.2
# Seconds over which completed handshakes are counted, and how much faster than that
# count the hints are paced. A burst of refusals (each one a handshake too) slows the
# handshakes it delays, so the process takes several times more once the clients come
# back paced; one back too early is refused again, cheaply (docs/benchmarks.md, the
# reconnect storm).
COMPLETION_WINDOW = 2.0
PROBE_UP = 6.0


class Gate(Service):
    """The handshake gate of one event loop: what is in flight, what was measured."""

    name = "gate"

    def __init__(self, runtime: Runtime):
        super().__init__(runtime)
        self.in_flight = 0
        self.draining = False
        self.duration = FIRST_DURATION  # seconds from admission to accept, smoothed
        self._next_slot = 0.0
        self._completed: deque[float] = deque()  # monotonic times of recent completions
        self._tokens: float | None = None
        self._stamp = 0.0
        self._rng = random.Random()

    # Decisions ---------------------------------------------------------------

    def admit(self) -> str | None:
        """Take a slot for a handshake, or say why not (``draining``, ``in_flight``, ``rate``)."""
        if self.draining:
            return "draining"
        cap = conf.get("HEARTBEAT_MAX_HANDSHAKES")
        if cap is not None and self.in_flight >= cap:
            return "in_flight"
        if not self._take_token():
            return "rate"
        self.in_flight += 1
        return None

    def _take_token(self) -> bool:
        rate = conf.get("HEARTBEAT_CONNECT_RATE")
        if rate is None:
            return True
        now = self.clock.monotonic()
        burst = max(1.0, float(rate))
        if self._tokens is None:
            self._tokens = burst
        else:
            self._tokens = min(burst, self._tokens + (now - self._stamp) * rate)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def finished(self, admitted_at: float, measure: bool = True) -> None:
        """A handshake admitted at ``admitted_at`` is over (accepted, refused or dropped)."""
        self.in_flight = max(0, self.in_flight - 1)
        if measure:
            self.measure(admitted_at)

    def measure(self, admitted_at: float) -> None:
        """Smooth in the time from admission to accept, the basis of the paced hints."""
        now = self.clock.monotonic()
        took = max(0.0, now - admitted_at)
        self.duration += DURATION_SMOOTHING * (took - self.duration)
        self._completed.append(now)
        self._recent(now)

    def _recent(self, now: float) -> int:
        """Handshakes completed in the COMPLETION_WINDOW seconds before ``now``."""
        while self._completed and now - self._completed[0] > COMPLETION_WINDOW:
            self._completed.popleft()
        return len(self._completed)

    @property
    def rate(self) -> float:
        """Handshakes a second the process takes: the cap over the time one takes.

        Little's law: with the cap in flight, completions run at cap / duration.
        When the process is saturated, that is what it does; when it is not, it
        overestimates, so hints come out short, and a client back too early is
        refused again, cheaply. It never starves the process as a low guess would.
        Under a burst of refusals the handshakes take longer than the process needs
        once the burst is over, so the rate is at least PROBE_UP times what completed
        in the last COMPLETION_WINDOW seconds.
        """
        configured = conf.get("HEARTBEAT_CONNECT_RATE")
        if configured:
            return float(configured)
        cap = conf.get("HEARTBEAT_MAX_HANDSHAKES") or 128
        measured = PROBE_UP * self._recent(self.clock.monotonic()) / COMPLETION_WINDOW
        return min(MAX_RATE, max(MIN_RATE, cap / max(self.duration, 1e-4), measured))

    def retry_after_ms(self, why: str) -> int:
        """When a refused client should come back: the next free slot at the measured rate."""
        now = self.clock.monotonic()
        if why == "draining":
            # Come back at once, elsewhere: a balancer that sent a returning tab to the
            # draining process again would otherwise push it past its leave grace (a blink).
            floor = conf.get("HEARTBEAT_RETRY_MIN_MS")
            return floor + int(floor * HINT_JITTER * self._rng.random())
        self._next_slot = min(max(now, self._next_slot) + 1.0 / self.rate,
                              now + MAX_HINT_MS / 1000)
        wait = (self._next_slot - now) * (1 + HINT_JITTER * self._rng.random())
        return max(int(wait * 1000), conf.get("HEARTBEAT_RETRY_MIN_MS"))


# The scope key under which the middleware hands a handshake's ticket to the consumer.
TICKET = "heartbeat.admission"


class Ticket:
    """A handshake's slot in the gate: given back at accept, or later if the consumer holds it."""

    def __init__(self, release):
        self.held = False
        self.release = release


@contextmanager
def held(scope):
    """Keep the handshake in flight for the gate until the block is done.

    The mixin holds it over accept, ``hello`` and the presence joins when
    HEARTBEAT_HOLD_UNTIL_JOINED is on: a process whose joins fall behind its
    accepts then refuses (4013) instead of greeting tabs whose presence reaches the
    store after their old process's grace. Off by default: each refusal is a
    handshake too (accepted, told, closed), and on a saturated process they slowed
    the joins further: 3,000 sessions with Redis took 43.5 s to connect instead of
    6.5 s (docs/deployment.md).
    """
    ticket = scope.get(TICKET) if conf.get("HEARTBEAT_HOLD_UNTIL_JOINED") else None
    if ticket is not None:
        ticket.held = True
    try:
        yield
    finally:
        if ticket is not None:
            ticket.release()


def get_gate() -> Gate:
    """The handshake gate of the running loop's runtime."""
    return get_runtime().service(Gate)


class AdmissionMiddleware:
    """ASGI middleware: admit WebSocket handshakes the process can finish, pace the rest."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket":
            return await self.app(scope, receive, send)
        gate = get_gate()
        why = gate.admit()
        if why is not None:
            await self._refuse(gate, why, receive, send)
            return None
        finished = measured = False
        admitted_at = gate.clock.monotonic()

        def finish() -> None:
            nonlocal finished
            if not finished:
                finished = True
                gate.finished(admitted_at, measure=not measured)

        ticket = Ticket(finish)

        async def send_watching_the_handshake(message: dict[str, Any]) -> None:
            nonlocal measured
            kind = message["type"]
            if kind == "websocket.close" or (kind == "websocket.accept" and not ticket.held):
                finish()
            elif kind == "websocket.accept" and not measured:
                # Held on past accept: the slot stays taken, but the hints' pace is
                # still the handshake's own time, not the presence joins'.
                measured = True
                gate.measure(admitted_at)
            await send(message)

        try:
            return await self.app(dict(scope, **{TICKET: ticket}),
                                  receive, passes_frames(send_watching_the_handshake, send))
        finally:
            finish()

    @staticmethod
    async def _refuse(gate: Gate, why: str, receive, send) -> None:
        gate.metrics.refused.inc(why=why)
        message = await receive()
        if message.get("type") != "websocket.connect":
            return
        code = CloseCode.DRAINING if why == "draining" else CloseCode.SERVER_BUSY
        text = "server restarting" if why == "draining" else "server busy, try again later"
        retry = gate.retry_after_ms(why)
        logger.debug("handshake refused (%s): come back in %d ms", why, retry)
        # Accepted, told, closed: a refused handshake (HTTP 403) shows only 1006 in
        # browsers, and the hint would never arrive.
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send",
                    "text": protocol.dumps(protocol.close_notice(code, text, retry))})
        await send({"type": "websocket.close", "code": int(code),
                    "reason": protocol.close_reason(text, retry)})
