"""Channels' in-memory channel layer, with sends to groups and receives that scale.

``channels.layers.InMemoryChannelLayer`` (Channels 4) does three things per message that
cost a process of thousands of sessions dearly:

- each ``receive()`` and each ``group_send()`` first walks every channel and every
  group membership of the process for expired messages (``_clean_expired``): a pass over
  all of them per message;
- ``group_send()`` deep-copies the message once per member, and starts a task per member
  to put it in its queue;
- ``receive()`` builds a new ``asyncio.Queue`` at every call, used or not.

At 5,000 sessions in rooms of 100 this made a session's memory 2.6 times the bare
consumer's, most of it in deep copies of presence diffs waiting in queues, and a
handshake cost 1.5 times a bare one's (docs/benchmarks.md). This layer behaves the same
towards its users (the same expiry, capacity and ``ChannelFull`` rules; a group send to a
full channel skips it), but:

- expired messages and group memberships are looked for at most once in
  ``CLEAN_EVERY`` seconds: one may be delivered up to that much past its expiry;
- a group send copies the message once (deeply, so the sender may change its own dict
  afterwards) and gives each member a shallow copy of that: a handler may change the
  message's own keys (``event.pop("type")``), but the values inside it are shared by
  the members of the group and must not be changed in place;
- a queue is built only for a channel that has none.

Use it as ``{"default": {"BACKEND": "heartbeat_app.memorylayer.InMemoryChannelLayer"}}``.
Like Channels' own, it serves one process only.
"""

from __future__ import annotations

import asyncio
import time
from copy import deepcopy
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer as ChannelsInMemoryChannelLayer

# Seconds between two looks for expired messages and group memberships.
CLEAN_EVERY = 1.0


class InMemoryChannelLayer(ChannelsInMemoryChannelLayer):
    """Channels' in-memory layer: one copy per group send, expiry looked for once a second."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._cleaned_at = float("-inf")

    def _clean_expired(self) -> None:
        now = time.monotonic()
        if now - self._cleaned_at >= CLEAN_EVERY:
            self._cleaned_at = now
            super()._clean_expired()

    def _queue(self, channel: str) -> asyncio.Queue:
        queue = self.channels.get(channel)
        if queue is None:
            queue = self.channels[channel] = asyncio.Queue(maxsize=self.get_capacity(channel))
        return queue

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_channel_name(channel)
        assert "__asgi_channel__" not in message
        try:
            self._queue(channel).put_nowait((time.time() + self.expiry, deepcopy(message)))
        except asyncio.QueueFull:
            raise ChannelFull(channel) from None

    async def receive(self, channel: str) -> dict[str, Any]:
        self.require_valid_channel_name(channel)
        self._clean_expired()
        queue = self._queue(channel)
        try:
            _, message = await queue.get()
        finally:
            if queue.empty():
                self.channels.pop(channel, None)
        return message

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        assert isinstance(message, dict), "Message is not a dict"
        self.require_valid_group_name(group)
        self._clean_expired()
        members = self.groups.get(group)
        if not members:
            return
        shared = deepcopy(message)
        expires = time.time() + self.expiry
        for channel in list(members):
            try:
                self._queue(channel).put_nowait((expires, dict(shared)))
            except asyncio.QueueFull:
                pass  # a full channel misses a group message, as with Channels' layer
