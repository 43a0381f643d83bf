"""Presence store calls: timed, counted, and turned into one outage state.

Every call is bounded by PRESENCE_STORE_TIMEOUT and its latency recorded by
operation. An unreachable store puts presence in a degraded state, warned about
once; the first call that works again asks for a rebuild (every live session
joined again, fresh states sent). A call that was only late because the event
loop itself lags is retried later and declares no outage.
"""

from __future__ import annotations

import asyncio
import logging

from . import conf
from .runtime import Runtime
from .stores import StoreUnavailable

logger = logging.getLogger(__name__)

# Loop lag (seconds) above which a store call that times out is the loop's fault.
LAGGING = 0.1


class StoreCalls:
    """The store calls of one tracker, and the outage state they share."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.clock = runtime.clock
        self.metrics = runtime.metrics
        self.degraded = False
        self.rebuild_needed = False

    async def call(self, op: str, coro):
        """Await one store call (``op`` names it in the metrics); StoreUnavailable if not."""
        started = self.clock.monotonic()
        try:
            result = await asyncio.wait_for(coro, conf.get("PRESENCE_STORE_TIMEOUT"))
        except TimeoutError as exc:
            if self.runtime.lag > LAGGING:
                # The event loop is behind, not the store: the call just could not
                # be served in time. Retry later without declaring an outage, whose
                # recovery would re-join every session of an already busy process.
                self.metrics.store_calls_late.inc()
                raise StoreUnavailable("presence store call late: the event loop lags") \
                    from exc
            self._outage(exc)
            raise StoreUnavailable(str(exc)) from exc
        except (StoreUnavailable, ConnectionError, OSError) as exc:
            self._outage(exc)
            raise StoreUnavailable(str(exc)) from exc
        finally:
            self.metrics.store_seconds.observe(self.clock.monotonic() - started, op=op)
        if self.degraded:
            self.degraded = False
            self.rebuild_needed = True
            logger.warning("presence store is back: rebuilding presence from live sessions")
        return result

    def _outage(self, exc: Exception) -> None:
        if not self.degraded:
            self.degraded = True
            self.metrics.outages.inc()
            logger.warning("presence store unavailable, presence degraded: %s", exc)
