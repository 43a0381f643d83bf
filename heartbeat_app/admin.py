"""The operators' view: live, stale, zombie and closed sessions, server instances, presence."""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q
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
from .trends import server_label as _server
from .trends import trend_charts

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

    def has_change_permission(self, request, obj=None):
        # The list's actions need "change"; a row itself is never saved from a form.
        return obj is None and super().has_change_permission(request)

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
