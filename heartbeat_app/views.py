"""Views a project mounts: ``metrics`` for Prometheus, ``metrics_page`` for operators.

``path("metrics", heartbeat_app.views.metrics)`` serves the counters of the process
that answers (all workers' with prometheus_client's multiprocess mode). Nobody may
read it unless ``HEARTBEAT_METRICS_ALLOWED_IPS`` names the scraper's address or
network, or ``HEARTBEAT_METRICS_ALLOW_STAFF`` lets signed-in staff in.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import logging
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache

from . import runtime

logger = logging.getLogger(__name__)

# Read at each request (a scrape every few seconds), so override_settings needs no receiver.
ALLOWED_IPS_SETTING = "HEARTBEAT_METRICS_ALLOWED_IPS"  # addresses or CIDR networks; [] : none
ALLOW_STAFF_SETTING = "HEARTBEAT_METRICS_ALLOW_STAFF"  # signed-in active staff; False: no

NOT_INSTALLED = (
    "Metrics are off: prometheus_client is not installed. "
    "Install it with pip install django-heartbeat-app[metrics].\n"
)
REFUSED = (
    "Metrics are not available to this client. Add its address to "
    "HEARTBEAT_METRICS_ALLOWED_IPS, or set HEARTBEAT_METRICS_ALLOW_STAFF and sign in as staff.\n"
)


def allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The networks of HEARTBEAT_METRICS_ALLOWED_IPS; entries that do not parse are left out.

    Check heartbeat_app.E020 reports those entries.
    """
    networks = []
    for entry in getattr(settings, ALLOWED_IPS_SETTING, None) or ():
        try:
            networks.append(ipaddress.ip_network(str(entry).strip(), strict=False))
        except ValueError:
            continue
    return networks


def address_allowed(address: str | None) -> bool:
    """Whether a client address is in one of the allowed networks."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in allowed_networks())


async def _is_staff(request: HttpRequest) -> bool:
    if getattr(settings, ALLOW_STAFF_SETTING, False) is not True:
        return False
    auser = getattr(request, "auser", None)
    if auser is None:  # no AuthenticationMiddleware: nobody is signed in
        return False
    user = await auser()
    return bool(user.is_active and user.is_staff)


@never_cache
async def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition of this process's heartbeat metrics."""
    # Async so that it runs on the event loop whose sessions it counts, and whose
    # runtime the multiprocess mirror is started on.
    if not (address_allowed(request.META.get("REMOTE_ADDR")) or await _is_staff(request)):
        return HttpResponse(REFUSED, status=403, content_type="text/plain; charset=utf-8")
    if importlib.util.find_spec("prometheus_client") is None:
        return HttpResponse(NOT_INSTALLED, status=503, content_type="text/plain; charset=utf-8")
    from . import prometheus

    body, content_type = prometheus.exposition(request.headers.get("Accept", ""))
    return HttpResponse(body, content_type=content_type)


def snapshot_rows(snapshot: dict[str, dict]) -> list[dict[str, Any]]:
    """The snapshot as table rows: one per series, histograms with count, mean and max."""
    rows = []
    for name, metric in sorted(snapshot.items()):
        for key, value in sorted(metric["values"].items()):
            labels = ", ".join(f"{n}={v}" for n, v in zip(metric["labels"], key, strict=True))
            row = {"name": name, "kind": metric["kind"], "labels": labels, "help": metric["help"]}
            if metric["kind"] == "histogram":
                count = value["count"]
                row.update(value=count, mean=value["sum"] / count if count else None,
                           max=value["max"])
            else:
                row["value"] = value
            rows.append(row)
    return rows


async def _snapshot_on_the_loop() -> dict[str, dict]:
    # Read where the services write: a gauge read from a function (rooms) walks a
    # dict that the loop changes under a reader in another thread.
    return runtime.snapshot()


@staff_member_required
def metrics_page(request: HttpRequest) -> HttpResponse:
    """An admin page with the metrics of the process that serves it."""
    from django.contrib import admin

    context = {
        **admin.site.each_context(request),
        "title": "Heartbeat metrics of this process",
        "rows": snapshot_rows(async_to_sync(_snapshot_on_the_loop)()),
        "exporter": importlib.util.find_spec("prometheus_client") is not None,
    }
    return render(request, "admin/heartbeat_app/metrics.html", context)
