"""The reaper: removes what lost processes and expired sessions left in the presence store.

One process at a time holds the reaper's lease (``SET NX PX`` in Redis). Each pass
removes the metas of instances silent past PRESENCE_INSTANCE_TTL and the expired
ones, hands the changes to the tracker as diffs, and discards the lost
processes' channels from every channel-layer group, so a ``kill -9`` leaves no
ghost.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from channels.layers import get_channel_layer

from . import conf
from .layers import discard_channels, group_name
from .stores import BaseStore, Change

logger = logging.getLogger(__name__)


class Reaper:
    """Reaper passes of one tracker, every PRESENCE_REAP_INTERVAL while it holds the lease."""

    def __init__(self, store: BaseStore, instance: str, *,
                 call: Callable[[str, Awaitable], Awaitable[Any]],
                 queue: Callable[[list[Change]], None],
                 beat: Callable[[], Awaitable[Any]] | None = None):
        self.store = store
        self.beat = beat  # the tracker's instance beat
        self.instance = instance
        self.call = call  # the tracker's timed, outage-aware store call
        self.queue = queue  # where the changes go to become diffs
        self.last_reap = 0.0

    async def maybe_reap(self, now: float) -> None:
        """Run a pass if one is due and this process holds (or takes) the lease."""
        if now - self.last_reap < conf.get("PRESENCE_REAP_INTERVAL"):
            return
        self.last_reap = now
        instance_ttl_ms = int(conf.get("PRESENCE_INSTANCE_TTL") * 1000)
        # A reaper that dies hands over within the instance TTL at the latest.
        lease_ms = min(int(conf.get("PRESENCE_REAP_INTERVAL") * 3000), instance_ttl_ms)
        if not await self.call("lease", self.store.acquire_lease(
                "reaper", self.instance, lease_ms)):
            return
        if self.beat is not None:
            # A tick that ran longer than the instance TTL (a busy process) would find
            # this very process lost, reap its members and drop its channels' groups.
            await self.beat()
        result = await self.call("reap", self.store.reap(instance_ttl_ms))
        self.queue(result.changes)
        layer = get_channel_layer()
        for change in result.changes:
            channel = change.meta.get("channel")
            if channel:
                await layer.group_discard(group_name(change.room), channel)
        for lost in result.lost_instances:
            logger.warning("server instance %s is lost: %d presence entries reaped",
                           lost["id"], sum(1 for c in result.changes
                                           if c.meta.get("instance") == lost["id"]))
            if lost.get("channel_prefix"):
                await discard_channels(layer, lost["channel_prefix"])
