"""The demo consumer: heartbeats and presence from the mixin, and a tiny chat per room."""

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.core.exceptions import ValidationError

from heartbeat_app.consumers import HeartbeatMixin
from heartbeat_app.layers import group_name

MAX_CHAT_LENGTH = 500
#: Rooms whose name starts so need a signed-in user (the demo's policy).
PRIVATE_PREFIX = "private-"
#: What a tab may say about itself with presence_update: {"status": one of these}.
STATUSES = ("available", "busy")


class RoomConsumer(HeartbeatMixin, AsyncJsonWebsocketConsumer):
    """``/ws/rooms/<room>/``: present in that room at connect, in others by ``join`` frames.

    Chat goes to the members of a room through the room's presence group, so it follows
    the tab from room to room with no group of its own to keep in step.
    """

    def get_presence_rooms(self):
        return [self.room]

    def can_join_presence(self, room):
        """A room named ``private-…`` needs a signed-in user; any other is open to all."""
        if not room.startswith(PRIVATE_PREFIX):
            return True
        return bool(getattr(self.scope.get("user"), "is_authenticated", False))

    def get_presence_meta(self):
        """A signed-in user's name, so the member list can show it."""
        user = self.scope.get("user")
        # Any object a middleware put in the scope, not necessarily a Django user.
        get_username = getattr(user, "get_username", None)
        if getattr(user, "is_authenticated", False) and callable(get_username):
            return {"nick": get_username()}
        return {}

    def clean_presence_state(self, room, state):
        """The demo's state is ``{"status": "available" | "busy"}`` and nothing else."""
        if set(state) - {"status"} or state.get("status") not in STATUSES:
            raise ValidationError('The state is {"status": "available"} or {"status": "busy"}.')
        return state

    async def connect(self):
        self.room = self.scope["url_route"]["kwargs"]["room"]
        # accept() asks can_join_presence(); a refused connection is closing on return.
        await self.accept()

    def _rooms(self):
        session = self.heartbeat_session
        if session is None or session.close_code is not None:
            return []  # refused (or gone): no room is its
        return session.rooms

    async def receive_json(self, content, **kwargs):
        session = self.heartbeat_session
        if session is None or session.close_code is not None:
            return  # a refused connection, until its close completes
        if not isinstance(content, dict) or content.get("type") != "chat":
            await self.send_json({
                "type": "error", "code": "unknown_type",
                "detail": 'The demo room understands '
                          '{"type": "chat", "room": "...", "text": "..."}.',
            })
            return
        room = content.get("room", self.room)
        if not isinstance(room, str) or room not in self._rooms():
            await self.send_json({
                "type": "error", "code": "not_in_room", "room": str(room)[:80],
                "detail": "Join the room before chatting in it.",
            })
            return
        text = content.get("text")
        if not isinstance(text, str) or not text.strip():
            await self.send_json({
                "type": "error", "code": "invalid_message", "detail": '"text" must be a string.',
            })
            return
        await self.channel_layer.group_send(group_name(room), {
            "type": "chat.message",
            "room": room,
            "text": text[:MAX_CHAT_LENGTH],
            "from": session.user_key,
        })

    async def chat_message(self, event):
        if event["room"] in self._rooms():  # not a room it left since
            await self.send_json({"type": "chat", "room": event["room"], "text": event["text"],
                                  "from": event["from"]})
