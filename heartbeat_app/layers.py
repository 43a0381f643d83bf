"""Channel-layer helpers: presence groups, a receive that survives outages, lost channels."""

from __future__ import annotations

import asyncio
import logging

logger = logging.getLogger(__name__)


def group_name(room: str) -> str:
    """The channel-layer group of a room's presence."""
    return f"presence.{room}"


_layer_outage = {"on": False}


def survive_outages(receive, on_recovery=None):
    """Wrap a layer's receive so that an outage is retried, not fatal to the consumer.

    channels_redis raises out of receive() while Redis is away, which would end
    every consumer of the process with 1011. ``on_recovery()`` is called when a
    receive works again after failing.
    """

    async def receive_surviving_outages():
        delay, failed = 0.1, False
        while True:
            inner = asyncio.ensure_future(receive())
            try:
                message = await asyncio.shield(inner)
            except asyncio.CancelledError:
                # Stopped: cancel the layer's receive but do not wait for it. A
                # channels_redis receive cancelled mid-read can swallow the
                # cancellation and wait on for ever, and the consumer (and a server's
                # graceful shutdown) with it.
                inner.cancel()
                raise
            except Exception as exc:
                if not _layer_outage["on"]:
                    _layer_outage["on"] = True  # one warning per outage, per process
                    logger.warning("channel layer receive failed, retrying: %r", exc)
                failed = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if failed and on_recovery is not None:
                on_recovery()
            if _layer_outage["on"]:
                _layer_outage["on"] = False
                logger.warning("channel layer receive works again")
            return message

    return receive_surviving_outages


async def discard_channels(layer, channel_prefix: str) -> int:
    """Remove every channel of a lost process from every group of a channels_redis layer.

    channels_redis never discards the channels of a worker that died, so they
    linger in groups until ``group_expiry`` (a day by default).
    """
    if not hasattr(layer, "ring_size") or not hasattr(layer, "connection"):
        return 0
    removed = 0
    prefix = channel_prefix.encode()
    for index in range(layer.ring_size):
        connection = layer.connection(index)
        async for key in connection.scan_iter(match=f"{layer.prefix}:group:*", count=500):
            stale = [m for m in await connection.zrange(key, 0, -1) if m.startswith(prefix)]
            if stale:
                removed += await connection.zrem(key, *stale)
    return removed


async def concurrently(calls, at_once: int = 64) -> list:
    """Await ``calls`` (coroutines) a chunk at a time; their results, in order.

    One after the other, a batch's group adds and room reads each took a loop
    iteration, and under a storm an iteration takes tens of milliseconds: the
    joins then fell seconds behind the accepts.
    """
    calls, results = list(calls), []
    try:
        for at in range(0, len(calls), at_once):
            results += await asyncio.gather(*calls[at:at + at_once])
    finally:
        for call in calls[len(results) + at_once:]:
            call.close()  # a chunk failed: the ones never started are not left unawaited
    return results
