"""A tiny chat: messages to the room, who is here and who is away, notices when one drops."""

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from heartbeat_app import presence
from heartbeat_app.consumers import HeartbeatMixin


def group(room):
    return f"chat.{room}"


async def who(room):
    """The room's members: ``here`` with a visible tab, ``away`` with every tab hidden."""
    members = await presence.amembers(room)
    here = sorted(key for key, member in members.items()
                  if any(meta["visible"] for meta in member["metas"]))
    return {"here": here, "away": sorted(set(members) - set(here))}


class ChatConsumer(HeartbeatMixin, AsyncJsonWebsocketConsumer):
    """``/ws/chat/<room>/``: ``{"type": "chat", "text": ...}`` and ``{"type": "who"}``."""

    def get_presence_rooms(self):
        return [self.room]

    def get_presence_meta(self):
        return {"name": getattr(self.scope.get("user"), "username", "") or "guest"}

    async def connect(self):
        self.room = self.scope["url_route"]["kwargs"]["room"]
        await self.accept()
        await self.channel_layer.group_add(group(self.room), self.channel_name)

    async def receive_json(self, content, **kwargs):
        if content.get("type") == "chat":
            await self.channel_layer.group_send(group(self.room), {
                "type": "chat.message", "from": self.heartbeat_session.user_key,
                "text": str(content.get("text", ""))[:500],
            })
        elif content.get("type") == "who":
            await self.send_json({"type": "who", **await who(self.room)})

    async def chat_message(self, event):
        await self.send_json({"type": "chat", "from": event["from"], "text": event["text"]})

    async def chat_notice(self, event):
        if self.heartbeat_session.close_code is None:  # not to the one who dropped
            await self.send_json({"type": "notice", "text": event["text"]})

    async def disconnect(self, code):
        await self.channel_layer.group_discard(group(self.room), self.channel_name)
