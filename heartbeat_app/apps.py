import importlib.util
import logging

from django.apps import AppConfig

logger = logging.getLogger(__name__)


class HeartbeatAppConfig(AppConfig):
    """Registers the system checks of heartbeat_app."""

    name = "heartbeat_app"
    verbose_name = "Heartbeat and presence"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks, daphne_pace  # noqa: F401  (registers the checks)

        if daphne_pace.pace():
            logger.debug("Daphne's passes over every connection are paced")

        if importlib.util.find_spec("prometheus_client") is not None:
            from . import prometheus

            prometheus.install()  # with several workers: each one's metrics mirror
