"""The demo consumer: heartbeats from the mixin and a tiny chat per room."""

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from heartbeat_app.consumers import HeartbeatMixin

MAX_CHAT_LENGTH = 500
#: Rooms whose name starts so need a signed-in user (the demo's policy).
PRIVATE_PREFIX = "private-"


class RoomConsumer(HeartbeatMixin, AsyncJsonWebsocketConsumer):
    """``/ws/rooms/<room>/``: chat messages broadcast to everyone in the room."""

    def get_presence_rooms(self):
        return [self.room]

    def can_join_presence(self, room):
        """A room named ``private-…`` needs a signed-in user; any other is open to all."""
        if not room.startswith(PRIVATE_PREFIX):
            return True
        return bool(getattr(self.scope.get("user"), "is_authenticated", False))

    async def connect(self):
        self.room = self.scope["url_route"]["kwargs"]["room"]
        # accept() asks can_join_presence(); a refused connection is closing on return.
        await self.accept()
        session = self.heartbeat_session
        if session is None or session.close_code is not None:
            return  # refused (or gone): the room's chat is not for it
        self.room_group = f"room.{self.room}"
        await self.channel_layer.group_add(self.room_group, self.channel_name)

    async def receive_json(self, content, **kwargs):
        if not hasattr(self, "room_group"):
            return  # a refused connection, until its close completes
        if not isinstance(content, dict) or content.get("type") != "chat":
            await self.send_json({
                "type": "error", "code": "unknown_type",
                "detail": 'The demo room understands {"type": "chat", "text": "..."}.',
            })
            return
        text = content.get("text")
        if not isinstance(text, str) or not text.strip():
            await self.send_json({
                "type": "error", "code": "invalid_message", "detail": '"text" must be a string.',
            })
            return
        session = self.heartbeat_session
        await self.channel_layer.group_send(self.room_group, {
            "type": "chat.message",
            "text": text[:MAX_CHAT_LENGTH],
            "from": session.user_key if session else "",
        })

    async def chat_message(self, event):
        await self.send_json({"type": "chat", "text": event["text"], "from": event["from"]})

    async def disconnect(self, code):
        if hasattr(self, "room_group"):
            await self.channel_layer.group_discard(self.room_group, self.channel_name)
