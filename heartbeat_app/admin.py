"""The operators' view: live, stale, zombie and closed sessions, server instances, presence."""

from __future__ import annotations

import logging
from datetime import timedelta

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q
from django.db.models.functions import Trunc
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from . import presence
from .models import (
    ALIVE,
    CLOSED,
    LIVE,
    LOST,
    STALE,
    STATUSES,
    ZOMBIE,
    PresenceRoom,
    ServerInstance,
    Session,
)
from .protocol import CloseCode, CloseReason

logger = logging.getLogger(__name__)

COLOURS = {
    LIVE: "#1a7f37", STALE: "#9a6700", ZOMBIE: "#cf222e", CLOSED: "#6e7781",
    ALIVE: "#1a7f37", LOST: "#cf222e", "stopped": "#6e7781",
}


def badge(status: str):
    return format_html(
        '<span class="hb-badge hb-{}" style="display:inline-block;padding:1px 8px;'
        'border-radius:10px;color:#fff;background:{};font-weight:600;font-size:11px">'
        "{}</span>", status, COLOURS.get(status, "#6e7781"), status)


def _when(moment):
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S") if moment else "–"


def _short_when(moment, now=None):
    """A time as narrow as it can be read: 14:02:11, with the date under it if not today."""
    if moment is None:
        return "–"
    local = timezone.localtime(moment)
    today = timezone.localtime(now or timezone.now()).date()
    date = "" if local.date() == today else format_html(
        '<span class="hb-detail">{}</span>', local.strftime("%b %d"))
    return format_html('<time class="hb-main" datetime="{}" title="{}">{}</time>{}',
                       local.isoformat(), _when(moment), local.strftime("%H:%M:%S"), date)


def _server(instance_id: str | None) -> str:
    """host:pid of a server instance, its host cut from the left: pod names differ at the end."""
    if not instance_id:
        return "–"
    host, _, rest = instance_id.partition(":")
    pid = rest.split(":", 1)[0]
    if len(host) > 10:
        host = "…" + host[-8:]
    return f"{host}:{pid}" if pid else host


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 0):.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.0f} h ago"


def _two_lines(main: str, detail: str = "", title: str = ""):
    """A list cell: a main line cut to the column's width, a quiet detail line under it."""
    return format_html('<span class="hb-main" title="{}">{}</span>{}', title or main, main,
                       format_html('<span class="hb-detail" title="{}">{}</span>', detail,
                                   detail) if detail else "")


class StatusFilter(admin.SimpleListFilter):
    """``?status=live|stale|zombie|closed``, with the number of sessions in each."""

    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        counts = dict(Session.objects.with_status().values_list("status").annotate(n=Count("id"))
                      .values_list("status", "n"))
        return [(status, f"{status} ({counts.get(status, 0)})") for status in STATUSES]

    def queryset(self, request, queryset):
        if self.value() in STATUSES:
            return queryset.filter(status=self.value())
        return queryset


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows are written by the servers only; operators read them and run actions."""

    def has_add_permission(self, request):
        return False

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields] + list(self.readonly_fields)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {**(extra_context or {}), "show_save": False,
                         "show_save_and_continue": False, "show_save_and_add_another": False,
                         "show_delete": False}
        return super().change_view(request, object_id, form_url, extra_context)


@admin.register(Session)
class SessionAdmin(ReadOnlyAdmin):
    # Eight columns fit a 1280 px laptop with the navigation open, the filters above the
    # list (admin/heartbeat_app/change_list.html): the tab and visibility go under the
    # member, the server under the rooms, the close code under the reason.
    list_display = ("short_id", "status_badge", "member", "where", "opened", "last_seen",
                    "rtt", "ended")
    list_filter = (StatusFilter, "close_reason", "instance")
    ordering = ("-opened_at",)
    date_hierarchy = "opened_at"
    list_per_page = 100
    actions = ("disconnect_sessions", "disconnect_members", "ban_members", "probe_sessions")
    readonly_fields = ("status_badge", "story")
    fieldsets = (
        (None, {"fields": ("status_badge", "story")}),
        ("Who", {"fields": ("user", "user_key", "rooms", "tab", "client_addr", "user_agent")}),
        ("Where", {"fields": ("instance", "path", "channel_name", "id")}),
        ("Liveness", {"fields": ("opened_at", "last_seen_at", "interval", "timeout",
                                 "stale_after", "zombie_after", "rtt_ms", "rtt_avg_ms",
                                 "visible", "frames_in", "probes_sent", "last_probe_at")}),
        ("End", {"fields": ("zombie_detected_at", "closed_at", "close_code",
                            "close_reason")}),
    )

    def get_search_fields(self, request):
        username = f"user__{get_user_model().USERNAME_FIELD}"
        return ("user_key", username, "rooms", "client_addr", "tab", "id", "instance__id")

    def get_queryset(self, request):
        return super().get_queryset(request).with_status().select_related("instance", "user")

    @admin.display(description="session", ordering="id")
    def short_id(self, obj):
        return obj.id[:8]

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        return badge(getattr(obj, "status", None) or obj.get_status())

    def _member_name(self, obj) -> str:
        return str(obj.user) if obj.user_id and obj.user else obj.user_key

    @admin.display(description="member", ordering="user_key")
    def member(self, obj):
        visible = {True: "visible", False: "hidden", None: ""}[obj.visible]
        detail = " · ".join(part for part in (f"tab {obj.tab}", visible) if part)
        name = self._member_name(obj)
        return _two_lines(name, detail, title=f"{name} ({obj.user_key})")

    @admin.display(description="rooms · server", ordering="rooms")
    def where(self, obj):
        rooms = obj.rooms.split()
        shown = rooms[0] if rooms else "–"
        if len(rooms) > 1:
            shown = f"{shown} +{len(rooms) - 1}"
        return format_html('<span class="hb-main" title="{}">{}</span>'
                           '<span class="hb-detail" title="{}">{}</span>',
                           " ".join(rooms), shown, obj.instance_id or "", _server(obj.instance_id))

    @admin.display(description="opened", ordering="opened_at")
    def opened(self, obj):
        return _short_when(obj.opened_at)

    @admin.display(description="last seen", ordering="last_seen_at")
    def last_seen(self, obj):
        if obj.closed_at is None:
            ago = (timezone.now() - obj.last_seen_at).total_seconds()
            return format_html('<span title="{}">{}</span>', _when(obj.last_seen_at), _ago(ago))
        return _short_when(obj.last_seen_at)

    @admin.display(description="RTT", ordering="rtt_ms")
    def rtt(self, obj):
        if obj.rtt_ms is None:
            return "–"
        return f"{obj.rtt_ms:.1f} ms"

    @admin.display(description="ended", ordering="close_reason")
    def ended(self, obj):
        """Why it ended, with the close code and its meaning under the reason."""
        if obj.closed_at is None:
            return "–"
        try:
            meaning = CloseCode(obj.close_code).description
        except (ValueError, TypeError):
            meaning = ""
        code = "" if obj.close_code is None else str(obj.close_code)
        return _two_lines(obj.close_reason or str(CloseReason.CLOSED), code,
                          title=" ".join(part for part in (code, meaning) if part))

    @admin.display(description="story")
    def story(self, obj):
        """The session's life, in order."""
        events = [(obj.opened_at, f"opened by {obj.user_key} (tab {obj.tab}) on "
                                  f"{obj.instance_id or 'an unknown server'}")]
        if obj.probes_sent:
            events.append((obj.last_probe_at, f"{obj.probes_sent} probe(s) sent; last here"))
        if obj.rtt_ms is not None:
            events.append((obj.last_seen_at, f"round trip {obj.rtt_ms:.1f} ms "
                                             f"(typical {obj.rtt_avg_ms or obj.rtt_ms:.1f} ms)"))
        events.append((obj.last_seen_at, "last heard"))
        if obj.zombie_detected_at:
            events.append((obj.zombie_detected_at,
                           "silent past interval + timeout: closed as a zombie"))
        if obj.closed_at:
            try:
                meaning = CloseCode(obj.close_code).description
            except (ValueError, TypeError):
                meaning = "close"
            events.append((obj.closed_at, f"ended: {obj.close_reason or CloseReason.CLOSED} "
                                          f"(code {obj.close_code}, {meaning})"))
        else:
            events.append((timezone.now(), f"still open: {obj.get_status()}"))
        events = [(at, text) for at, text in events if at is not None]
        events.sort(key=lambda item: item[0])
        return format_html("<ol class='hb-story'>{}</ol>", format_html_join(
            "", "<li><time>{}</time> — {}</li>",
            ((timezone.localtime(at).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3], text)
             for at, text in events)))

    def _send(self, request, queryset, event: dict, verb: str):
        layer = get_channel_layer()
        targets = [s for s in queryset.filter(closed_at__isnull=True) if s.channel_name]
        if layer is None or not targets:
            self.message_user(request, f"No open session to {verb}.", messages.WARNING)
            return
        sent = 0
        for session in targets:
            try:
                async_to_sync(layer.send)(session.channel_name, dict(event))
                sent += 1
            except Exception as exc:  # a layer outage must not crash the admin
                logger.warning("could not %s session %s: %r", verb, session.id, exc)
        return sent

    @admin.action(description="Disconnect selected sessions (close 4000)",
                  permissions=["change"])
    def disconnect_sessions(self, request, queryset):
        sent = self._send(request, queryset, {
            "type": "heartbeat.disconnect", "code": int(CloseCode.SERVER_CLOSE),
            "reason": f"closed by {request.user.get_username()}"}, "disconnect")
        if sent:
            self.message_user(request, f"Asked {sent} session(s) to close with 4000.")

    def _disconnect_members(self, request, queryset, code: CloseCode):
        keys = set(queryset.values_list("user_key", flat=True))
        every = Session.objects.filter(user_key__in=keys)
        sent = self._send(request, every, {
            "type": "heartbeat.disconnect", "code": int(code),
            "reason": f"closed by {request.user.get_username()}"}, "disconnect")
        if sent:
            self.message_user(request, f"Asked {sent} session(s) of {len(keys)} member(s) to "
                              f"close with {int(code)}.")

    @admin.action(description="Disconnect every session of these members (4000: may reconnect)",
                  permissions=["change"])
    def disconnect_members(self, request, queryset):
        self._disconnect_members(request, queryset, CloseCode.SERVER_CLOSE)

    @admin.action(description="Disconnect every session of these members (4403: may not "
                              "reconnect)", permissions=["change"])
    def ban_members(self, request, queryset):
        self._disconnect_members(request, queryset, CloseCode.FORBIDDEN)

    @admin.action(description="Probe selected sessions (server ping now)",
                  permissions=["change"])
    def probe_sessions(self, request, queryset):
        sent = self._send(request, queryset, {"type": "heartbeat.probe"}, "probe")
        if sent:
            from . import conf

            self.message_user(request, f"Probed {sent} session(s); their round trips appear "
                              f"within {conf.get('HEARTBEAT_CHECKPOINT_INTERVAL'):g} s.")


@admin.register(ServerInstance)
class ServerInstanceAdmin(ReadOnlyAdmin):
    # The id is host:pid:random, so host and pid need no columns of their own.
    list_display = ("id", "status_badge", "started", "beat", "stopped", "session_count",
                    "open_rows")
    readonly_fields = ("status_badge",)
    search_fields = ("id", "host")

    def get_queryset(self, request):
        return super().get_queryset(request).with_status().annotate(
            open_count=Count("sessions", filter=Q(sessions__closed_at__isnull=True)))

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        return badge(getattr(obj, "status", None) or obj.get_status())

    @admin.display(description="open rows", ordering="open_count")
    def open_rows(self, obj):
        return getattr(obj, "open_count", None)

    @admin.display(description="started", ordering="started_at")
    def started(self, obj):
        return _short_when(obj.started_at)

    @admin.display(description="last beat", ordering="last_beat")
    def beat(self, obj):
        if obj.stopped_at is None:
            ago = (timezone.now() - obj.last_beat).total_seconds()
            return format_html('<span title="{}">{}</span>', _when(obj.last_beat), _ago(ago))
        return _short_when(obj.last_beat)

    @admin.display(description="stopped", ordering="stopped_at")
    def stopped(self, obj):
        return _short_when(obj.stopped_at)


# Trends on the presence overview ----------------------------------------------------------

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
    label = "all servers" if key == OVERALL else _server(key)
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
                     "label": "All servers" if key == OVERALL else _server(key),
                     "full": "every server instance" if key == OVERALL else
                     (key or "no server instance recorded"),
                     "charts": [_chart("sessions", key or "", minutes,
                                       {"sessions": line["sessions"]}),
                                _chart("closes", key or "", minutes, closes)]})
    return rows


@admin.register(PresenceRoom)
class PresenceAdmin(admin.ModelAdmin):
    """Rooms and their members, read from the presence store with a bounded wait, and trends.

    The trends come from the session rows only, so they show while the store is down.
    """

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def changelist_view(self, request, extra_context=None):
        # This view replaces ModelAdmin's, and with it the permission check it makes:
        # staff without the view permission must not read who is where.
        if not self.has_view_permission(request):
            raise PermissionDenied
        room = request.GET.get("room", "")
        context = {**self.admin_site.each_context(request), "opts": self.model._meta,
                   "title": "Presence", "room": room, "error": None, "rooms": {},
                   "members": None, "trends": None}
        try:
            context["rooms"] = presence.rooms()
            if room:
                context["members"] = presence.members(room)
        except Exception as exc:  # the store is down or slow: say so, do not hang
            logger.warning("presence overview: store unavailable: %r", exc)
            context["error"] = f"The presence store did not answer: {exc!r}"
        if not room:
            context["trends"] = trend_charts()
        return TemplateResponse(request, "admin/heartbeat_app/presence.html", context)
