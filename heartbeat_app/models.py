"""Session history for operators: one row per WebSocket connection, one per server process.

Rows are written on open and close and checkpointed in bulk by each process
(never a write per heartbeat). Status is derived when read, never stored.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Case, F, Q, Value, When
from django.db.models.functions import Coalesce, Now
from django.utils import timezone

from . import conf

LIVE, STALE, ZOMBIE, CLOSED = "live", "stale", "zombie", "closed"
STATUSES = (LIVE, STALE, ZOMBIE, CLOSED)
ALIVE, LOST, STOPPED = "alive", "lost", "stopped"


def lost_before(now=None):
    """Instances whose last beat is older than this are lost (``now``: this process's clock)."""
    now = now or timezone.now()
    return now - timedelta(seconds=conf.get("PRESENCE_INSTANCE_TTL"))


def lost_cutoff(now=None):
    """``lost_before()`` on the database's clock, as an expression; ``now`` overrides it.

    Beats are written with the database's clock, so a process whose own clock is
    off neither looks lost nor takes the others for lost (issue #11).
    """
    if now is not None:
        return lost_before(now)
    return Now() - timedelta(seconds=conf.get("PRESENCE_INSTANCE_TTL"))


class ServerInstanceQuerySet(models.QuerySet):
    def with_status(self, now=None):
        """Annotate ``status``: alive, lost (silent past its TTL) or stopped."""
        return self.annotate(status=Case(
            When(stopped_at__isnull=False, then=Value(STOPPED)),
            When(last_beat__lt=lost_cutoff(now), then=Value(LOST)),
            default=Value(ALIVE),
        ))


class ServerInstance(models.Model):
    """A server process (Daphne or uvicorn worker) that holds sessions."""

    id = models.CharField(max_length=120, primary_key=True)
    host = models.CharField(max_length=255)
    pid = models.IntegerField()
    started_at = models.DateTimeField()
    last_beat = models.DateTimeField(db_index=True)
    session_count = models.IntegerField(default=0)
    stopped_at = models.DateTimeField(null=True, blank=True)

    objects = ServerInstanceQuerySet.as_manager()

    class Meta:
        ordering = ["-last_beat"]
        verbose_name = "server instance"

    def __str__(self) -> str:
        return self.id

    def get_status(self, now=None) -> str:
        """alive, lost or stopped, as of ``now``."""
        if self.stopped_at is not None:
            return STOPPED
        return LOST if self.last_beat < lost_before(now) else ALIVE


class SessionQuerySet(models.QuerySet):
    def with_status(self, now=None):
        """Annotate ``status``: live, stale, zombie or closed.

        An open session is judged as of its row's last write (``recorded_at``, on
        the clock of the process that wrote its deadlines), when its silence was
        known exactly; a session whose process is lost or stopped is a zombie
        until the reaper closes it.
        """
        gone = Q(instance__isnull=True) | Q(instance__stopped_at__isnull=False) | Q(
            instance__last_beat__lt=lost_cutoff(now))
        # Rows written before recorded_at existed: as of their process's last beat.
        as_of = Coalesce(F("recorded_at"), F("instance__last_beat"))
        return self.annotate(status=Case(
            When(closed_at__isnull=False, then=Value(CLOSED)),
            When(gone, then=Value(ZOMBIE)),
            When(zombie_after__lte=as_of, then=Value(ZOMBIE)),
            When(stale_after__lte=as_of, then=Value(STALE)),
            default=Value(LIVE),
        ))

    def open(self):
        return self.filter(closed_at__isnull=True)


class Session(models.Model):
    """One WebSocket connection, from its accept to its end."""

    id = models.CharField(max_length=32, primary_key=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                             on_delete=models.SET_NULL, db_constraint=False,
                             related_name="+")
    user_key = models.CharField("member key", max_length=120, db_index=True)
    # Text, not a bounded CharField: PostgreSQL refused a row whose rooms went past the
    # bound, and with it the whole checkpoint of its process, at every tick.
    rooms = models.TextField(blank=True, help_text="Space-separated.")
    tab = models.CharField(max_length=64)
    instance = models.ForeignKey(ServerInstance, null=True, blank=True,
                                 on_delete=models.SET_NULL, db_constraint=False,
                                 related_name="sessions")
    channel_name = models.CharField(max_length=200, blank=True)
    path = models.CharField(max_length=300, blank=True)
    client_addr = models.CharField("client address", max_length=100, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)
    opened_at = models.DateTimeField(db_index=True)
    last_seen_at = models.DateTimeField("last seen")
    # Deadlines from last_seen_at: past stale_after the server probes; past
    # zombie_after it closes the session (or, with no timeout, has given up).
    stale_after = models.DateTimeField(null=True, blank=True)
    zombie_after = models.DateTimeField(null=True, blank=True)
    # When its process last wrote the row, on that process's clock, like the deadlines
    # above: the row is judged as of then. Rows are checkpointed a slice at a time, so
    # this is not the instance's last beat (which is on the database's clock).
    recorded_at = models.DateTimeField("recorded", null=True, blank=True)
    interval = models.FloatField(null=True, blank=True, help_text="Seconds.")
    timeout = models.FloatField(null=True, blank=True, help_text="Seconds.")
    rtt_ms = models.FloatField("RTT (ms)", null=True, blank=True)
    rtt_avg_ms = models.FloatField("typical RTT (ms)", null=True, blank=True)
    visible = models.BooleanField(null=True, blank=True)
    frames_in = models.IntegerField(default=0)
    probes_sent = models.IntegerField(default=0)
    last_probe_at = models.DateTimeField(null=True, blank=True)
    zombie_detected_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True, db_index=True)
    close_code = models.IntegerField(null=True, blank=True)
    close_reason = models.CharField(max_length=40, blank=True, db_index=True)

    objects = SessionQuerySet.as_manager()

    class Meta:
        ordering = ["-opened_at"]
        verbose_name = "WebSocket session"

    def __str__(self) -> str:
        return f"{self.user_key} ({self.id[:8]})"

    def get_status(self, now=None) -> str:
        """live, stale, zombie or closed, by the same rules as the changelist filter."""
        if self.closed_at is not None:
            return CLOSED
        instance = self.instance
        if instance is None or instance.get_status(now) != ALIVE:
            return ZOMBIE
        as_of = self.recorded_at or instance.last_beat
        if self.zombie_after is not None and self.zombie_after <= as_of:
            return ZOMBIE
        if self.stale_after is not None and self.stale_after <= as_of:
            return STALE
        return LIVE


def zombie_grace(interval: float | None, timeout: float | None) -> float | None:
    """Seconds of silence after which a session counts as a zombie in the admin.

    With a timeout, the server closes it then; without one (probed, never closed),
    three intervals without a word make it a zombie.
    """
    if interval is None:
        return None
    return interval + (timeout if timeout is not None else 2 * interval)


class PresenceRoom(models.Model):
    """No table: gives the presence overview its place and permission in the admin."""

    name = models.CharField(max_length=80, primary_key=True)

    class Meta:
        managed = False
        verbose_name = "presence room"
        verbose_name_plural = "presence"
