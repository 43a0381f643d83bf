"""The room is told when someone drops: a zombie closed, or a server that went away."""

from channels.layers import get_channel_layer
from django.dispatch import receiver

from heartbeat_app.protocol import LeaveReason
from heartbeat_app.signals import member_left, zombie_detected

from .consumers import ChatConsumer, group


async def notify(room, text):
    await get_channel_layer().group_send(group(room), {"type": "chat.notice", "text": text})


@receiver(zombie_detected)
async def on_zombie(sender, consumer, session, silence, **kwargs):
    if issubclass(sender, ChatConsumer):
        await notify(consumer.room, f"{session.user_key} lost the connection")


@receiver(member_left)
async def on_member_left(sender, room, key, reason, **kwargs):
    if reason == LeaveReason.INSTANCE_LOST:
        await notify(room, f"{key} dropped: their server went away")
