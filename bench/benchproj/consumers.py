"""Comparison consumers for the benchmarks; none of them uses heartbeat_app.

- ``BareConsumer``: a plain AsyncWebsocketConsumer that answers a ping with a pong,
  the floor any heartbeat layer is measured against.
- ``BareGroupConsumer``: a plain AsyncWebsocketConsumer that joins a group of its room
  at connect (as the demo's consumer joins its room's presence group), greets with a
  ``hello`` frame, and leaves the group at disconnect: the floor of a handshake.
- ``PeerDbConsumer``: the design of the Django presence peers, written plainly (not
  their code): a row per connection, and an ORM ``UPDATE ... last_seen`` for every
  heartbeat before the pong goes out.
"""

import json
import time

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.utils import timezone

from .models import PeerPresence


def _pong(text):
    try:
        message = json.loads(text)
    except ValueError:
        return None
    if not isinstance(message, dict) or message.get("type") != "ping":
        return None
    return json.dumps({"type": "pong", "id": message.get("id"),
                       "server_time": int(time.time() * 1000)})


class BareConsumer(AsyncWebsocketConsumer):
    """Answers ``{"type":"ping"}`` with a pong; nothing else."""

    async def receive(self, text_data=None, bytes_data=None):
        reply = _pong(text_data) if text_data is not None else None
        if reply is not None:
            await self.send(text_data=reply)


class BareGroupConsumer(BareConsumer):
    """``/ws/baregroup/<room>/``: joins the room's group, says hello, answers pings."""

    async def connect(self):
        self.group = f"bare.{self.scope['url_route']['kwargs']['room']}"
        await self.accept()
        if self.channel_layer is not None:
            await self.channel_layer.group_add(self.group, self.channel_name)
        await self.send(text_data=json.dumps({"type": "hello", "session": self.channel_name}))

    async def disconnect(self, code):
        if self.channel_layer is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)


@database_sync_to_async
def _join(channel, room):
    PeerPresence.objects.update_or_create(
        channel_name=channel, defaults={"room": room, "last_seen": timezone.now()})


@database_sync_to_async
def _touch(channel):
    PeerPresence.objects.filter(channel_name=channel).update(last_seen=timezone.now())


@database_sync_to_async
def _leave(channel):
    PeerPresence.objects.filter(channel_name=channel).delete()


class PeerDbConsumer(AsyncWebsocketConsumer):
    """A database write per heartbeat, as the Django peers do."""

    async def connect(self):
        self.peer_key = self.channel_name or f"conn-{id(self)}"
        await self.accept()
        await _join(self.peer_key, "bench")

    async def receive(self, text_data=None, bytes_data=None):
        reply = _pong(text_data) if text_data is not None else None
        if reply is not None:
            await _touch(self.peer_key)
            await self.send(text_data=reply)

    async def disconnect(self, code):
        await _leave(self.peer_key)
