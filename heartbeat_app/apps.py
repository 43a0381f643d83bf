from django.apps import AppConfig


class HeartbeatAppConfig(AppConfig):
    """Registers the system checks of heartbeat_app."""

    name = "heartbeat_app"
    verbose_name = "Heartbeat and presence"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the checks)
