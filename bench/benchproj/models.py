"""The presence row of the Django peers' design: one row per connection, touched per heartbeat."""

from django.db import models


class PeerPresence(models.Model):
    """As in django-channels-presence: a row per channel with its last_seen."""

    channel_name = models.CharField(max_length=255, unique=True)
    room = models.CharField(max_length=80)
    last_seen = models.DateTimeField()
