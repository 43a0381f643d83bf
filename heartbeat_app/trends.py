"""Trends of the presence overview: sessions open and closes by reason, per minute of the hour.

From the session rows, in one aggregate query, overall and per server instance;
drawn by the admin's presence page as inline SVG.
"""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Count, Q
from django.db.models.functions import Trunc
from django.utils import timezone

from .models import Session
from .protocol import CloseReason


def server_label(instance_id: str | None) -> str:
    """host:pid of a server instance, its host cut from the left: pod names differ at the end."""
    if not instance_id:
        return "–"
    host, _, rest = instance_id.partition(":")
    pid = rest.split(":", 1)[0]
    if len(host) > 10:
        host = "…" + host[-8:]
    return f"{host}:{pid}" if pid else host


TREND_MINUTES = 60
#: One colour per close reason, in the order the closes chart stacks them.
REASON_COLOURS = {
    CloseReason.CLOSED: "#6e7781", CloseReason.TRANSPORT_LOST: "#bc4c00",
    CloseReason.TIMEOUT: "#cf222e", CloseReason.ADMIN: "#0969da",
    CloseReason.RATE_LIMITED: "#9a6700", CloseReason.SERVER_CLOSED: "#8250df",
    CloseReason.SERVER_ERROR: "#82071e", CloseReason.SERVER_SHUTDOWN: "#1b7c83",
    CloseReason.INSTANCE_LOST: "#bf3989",
}
OVERALL = "overall"


def session_trends(now=None) -> dict:
    """Per minute of the last hour, overall and per server instance: sessions open, closes.

    Returns ``{"minutes": [start of each minute], "series": {instance id or OVERALL:
    {"sessions": [count per minute], "closes": {reason: [count per minute]}}}}``; the last
    minute is the current one. A session counts in a minute if it was open at any time in it.
    """
    now = now or timezone.now()
    end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = end - timedelta(minutes=TREND_MINUTES)
    bounds = [start + timedelta(minutes=i) for i in range(TREND_MINUTES + 1)]
    # One query: grouped by instance, close reason and close minute (the closes), with the
    # sessions open in each minute as 60 conditional counts per group (summed below, as each
    # row is in one group). Open counts need no query per minute and no row per session;
    # the WHERE is on the indexed closed_at (IS NULL or >= start: two ranges of one index),
    # so rows closed before the hour are never read, however long the history.
    opened = {f"open_{i}": Count("pk", filter=Q(opened_at__lt=bounds[i + 1]) & (
        Q(closed_at__isnull=True) | Q(closed_at__gte=bounds[i]))) for i in range(TREND_MINUTES)}
    groups = (Session.objects.filter(Q(closed_at__isnull=True) | Q(closed_at__gte=start),
                                     opened_at__lt=end)
              .annotate(minute=Trunc("closed_at", "minute"))
              .values("instance_id", "close_reason", "minute")
              .annotate(closes=Count("pk"), **opened).order_by())
    series: dict = {}

    def empty():
        return {"sessions": [0] * TREND_MINUTES, "closes": {}}

    for group in groups:
        for key in (OVERALL, group["instance_id"]):
            line = series.setdefault(key, empty())
            for i in range(TREND_MINUTES):
                line["sessions"][i] += group[f"open_{i}"]
            if group["minute"] is not None:
                i = (group["minute"] - start) // timedelta(minutes=1)
                if 0 <= i < TREND_MINUTES:
                    reason = group["close_reason"] or CloseReason.CLOSED
                    line["closes"].setdefault(reason, [0] * TREND_MINUTES)[i] += group["closes"]
    series.setdefault(OVERALL, empty())
    return {"minutes": bounds[:-1], "series": series}


#: The charts' geometry, in SVG user units (the SVG scales to its box).
CHART_W, CHART_H, PLOT_LEFT, PLOT_TOP, PLOT_H = 440, 118, 30, 8, 86


def _chart(kind: str, key: str, minutes, stacks: dict) -> dict:
    """One bar chart for the template: stacked bars per minute, with their hooks and titles."""
    totals = [sum(values[i] for values in stacks.values()) for i in range(len(minutes))]
    top = max(totals) or 1
    step = (CHART_W - PLOT_LEFT - 4) / len(minutes)
    clock = [timezone.localtime(m).strftime("%H:%M") for m in minutes]
    bars = []
    for i in range(len(minutes)):
        base = 0
        for name, values in stacks.items():
            if not values[i]:
                continue
            height = values[i] / top * PLOT_H
            bars.append({"x": f"{PLOT_LEFT + i * step + 0.5:.2f}", "w": f"{step - 1:.2f}",
                         "y": f"{PLOT_TOP + PLOT_H - base - height:.2f}", "h": f"{height:.2f}",
                         "fill": REASON_COLOURS.get(name, "#1a7f37"), "minute": i,
                         "count": values[i], "title": f"{clock[i]}: {values[i]} {name}"})
            base += height
    label = "all servers" if key == OVERALL else server_label(key)
    what = "sessions open" if kind == "sessions" else "sessions closed, by reason"
    legend = [{"name": name, "colour": REASON_COLOURS.get(name, "#1a7f37"),
               "total": sum(values)} for name, values in stacks.items()] if kind == "closes" else []
    return {
        "kind": kind, "key": key, "bars": bars, "values": ",".join(map(str, totals)),
        "stacks": {name: ",".join(map(str, values)) for name, values in stacks.items()},
        "total": sum(totals), "peak": max(totals), "top": top, "legend": legend,
        "title": f"{what} per minute, last hour, {label}",
        "desc": f"{clock[0]} to {clock[-1]}: peak {max(totals)}, total {sum(totals)}"
                if kind == "closes" else f"{clock[0]} to {clock[-1]}: peak {max(totals)}, "
                                         f"now {totals[-1]}",
        "first": clock[0], "width": CHART_W, "height": CHART_H, "left": PLOT_LEFT,
        "right": CHART_W - 4, "top_y": PLOT_TOP, "base_y": PLOT_TOP + PLOT_H,
        "label_y": CHART_H - 2, "mid_x": (PLOT_LEFT + CHART_W) // 2,
        "mid_y": PLOT_TOP + PLOT_H // 2,
    }


def trend_charts(now=None) -> list[dict]:
    """Overall first, then each server instance: its label and its two charts."""
    trends = session_trends(now)
    minutes, series = trends["minutes"], trends["series"]
    keys = [OVERALL] + sorted((k for k in series if k != OVERALL), key=lambda k: (k is None, k))
    rows = []
    for key in keys:
        line = series[key]
        closes = {r: line["closes"][r] for r in [*REASON_COLOURS, *sorted(line["closes"])]
                  if r in line["closes"]}
        rows.append({"key": OVERALL if key == OVERALL else (key or ""),
                     "label": "All servers" if key == OVERALL else server_label(key),
                     "full": "every server instance" if key == OVERALL else
                     (key or "no server instance recorded"),
                     "charts": [_chart("sessions", key or "", minutes,
                                       {"sessions": line["sessions"]}),
                                _chart("closes", key or "", minutes, closes)]})
    return rows
