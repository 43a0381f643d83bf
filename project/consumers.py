"""The demo consumer: heartbeats from the mixin and a tiny chat per room."""

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from heartbeat_app.consumers import HeartbeatMixin

MAX_CHAT_LENGTH = 500


class RoomConsumer(HeartbeatMixin, AsyncJsonWebsocketConsumer):
    """``/ws/rooms/<room>/``: chat messages broadcast to everyone in the room."""

    def get_presence_rooms(self):
        return [self.room]

    async def connect(self):
        self.room = self.scope["url_route"]["kwargs"]["room"]
        self.room_group = f"room.{self.room}"
        await self.channel_layer.group_add(self.room_group, self.channel_name)
        await self.accept()

    async def receive_json(self, content, **kwargs):
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
