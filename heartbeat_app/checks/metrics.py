"""Checks of the metrics exporter and of the metrics view's settings."""

from __future__ import annotations

import importlib.util
import ipaddress
import os

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register


@register(Tags.compatibility)
def check_metrics(app_configs=None, **kwargs) -> list:
    """Check that metrics can be exported, and the settings of the metrics view."""
    problems = []
    counting = getattr(settings, "HEARTBEAT_METRICS", True)
    if not isinstance(counting, bool):
        problems.append(Error(
            f"HEARTBEAT_METRICS must be True or False (refused: {counting!r}).",
            hint="True (the default) counts sessions, pings and probes for the metrics view; "
                 "False counts nothing.",
            id="heartbeat_app.E021",
        ))
    # Metrics turned off on purpose need no exporter.
    if counting is not False and importlib.util.find_spec("prometheus_client") is None:
        problems.append(Warning(
            "Metrics are off: prometheus_client is not installed, so the metrics view "
            "answers 503 and nothing is exported.",
            hint="pip install django-heartbeat-app[metrics]; or set HEARTBEAT_METRICS = False "
                 "if you do not want metrics.",
            id="heartbeat_app.W020",
        ))

    allowed = getattr(settings, "HEARTBEAT_METRICS_ALLOWED_IPS", [])
    staff = getattr(settings, "HEARTBEAT_METRICS_ALLOW_STAFF", False)
    bad = []
    if isinstance(allowed, str | bytes) or not isinstance(allowed, list | tuple | set):
        bad = [allowed]
    else:
        for entry in allowed:
            try:
                ipaddress.ip_network(str(entry).strip(), strict=False)
            except ValueError:
                bad.append(entry)
    if bad or not isinstance(staff, bool):
        problems.append(Error(
            "HEARTBEAT_METRICS_ALLOWED_IPS must be a list of IP addresses or networks and "
            f"HEARTBEAT_METRICS_ALLOW_STAFF a boolean (refused: {bad!r} and {staff!r}).",
            hint='For example ["127.0.0.1", "::1", "10.0.0.0/8"] and False.',
            id="heartbeat_app.E020",
        ))
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get(
        "prometheus_multiproc_dir")
    if path and not (os.path.isdir(path) and os.access(path, os.W_OK)):
        problems.append(Warning(
            f"PROMETHEUS_MULTIPROC_DIR is {path!r}, which is not a writable directory: "
            "the workers cannot write their metrics.",
            hint="Create an empty directory for it before the server starts, and empty it "
                 "at each start (see docs/metrics.md).",
            id="heartbeat_app.W021",
        ))
    return problems
