"""Delete closed session rows older than the retention, and stopped or lost instances' rows."""

from django.core.management.base import BaseCommand, CommandError

from heartbeat_app import conf
from heartbeat_app.models import ServerInstance, Session
from heartbeat_app.recorder import retention_cutoff


class Command(BaseCommand):
    help = ("Delete closed WebSocket session rows older than --days "
            "(default HEARTBEAT_SESSION_RETENTION_DAYS), in batches.")

    def add_arguments(self, parser):
        parser.add_argument("--days", type=float, default=None,
                            help="Keep closed sessions this many days.")
        parser.add_argument("--batch-size", type=int, default=1000,
                            help="Rows deleted per statement (default 1000), so a big prune "
                                 "never holds a long lock.")

    def handle(self, *args, days=None, batch_size=1000, **options):
        if days is None:
            days = conf.get("HEARTBEAT_SESSION_RETENTION_DAYS")
        if days is None:
            self.stdout.write("HEARTBEAT_SESSION_RETENTION_DAYS is None: nothing pruned.")
            return
        if days < 0 or batch_size < 1:
            raise CommandError("--days must be 0 or more and --batch-size at least 1.")
        cutoff = retention_cutoff(days)
        old = Session.objects.filter(closed_at__isnull=False, closed_at__lt=cutoff)
        total = 0
        while True:
            ids = list(old.values_list("pk", flat=True)[:batch_size])
            if not ids:
                break
            total += Session.objects.filter(pk__in=ids).delete()[0]
        # Server instances that stopped or went silent before the cutoff and hold no row.
        instances = ServerInstance.objects.filter(last_beat__lt=cutoff).exclude(
            pk__in=Session.objects.filter(instance__isnull=False).values("instance"))
        gone = instances.delete()[0]
        self.stdout.write(f"Deleted {total} closed session(s) older than {days:g} day(s) "
                          f"and {gone} server instance row(s).")
