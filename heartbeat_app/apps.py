import importlib.util

from django.apps import AppConfig


class HeartbeatAppConfig(AppConfig):
    """Registers the system checks of heartbeat_app."""

    name = "heartbeat_app"
    verbose_name = "Heartbeat and presence"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the checks)

        if importlib.util.find_spec("prometheus_client") is not None:
            from . import prometheus

            prometheus.install()  # with several workers: each one's metrics mirror
