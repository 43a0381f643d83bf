"""The presence overview's trends: sessions open and closes by reason, per minute of the hour."""

import re
from datetime import timedelta
from itertools import count

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from heartbeat_app import stores
from heartbeat_app.models import ServerInstance, Session
from heartbeat_app.trends import OVERALL, TREND_MINUTES, session_trends

URL = "/admin/heartbeat_app/presenceroom/"
ids = count()


@pytest.fixture(autouse=True)
def memory_store(settings):
    settings.PRESENCE_STORE = "memory"
    stores.reset_store()
    yield
    stores.reset_store()


def window(now):
    """The start of the first minute of the hour the trends cover (the last is now's)."""
    return now.replace(second=0, microsecond=0) - timedelta(minutes=TREND_MINUTES - 1)


def minute(start, i, seconds=5):
    return start + timedelta(minutes=i, seconds=seconds)


def instance(name, now):
    return ServerInstance.objects.create(id=f"{name}:1:abc", host=name, pid=1,
                                         started_at=now - timedelta(hours=3), last_beat=now)


def session(opened_at, closed_at=None, reason="", instance=None):
    return Session.objects.create(
        id=f"s{next(ids):031d}", user_key="k", tab="t", instance=instance, opened_at=opened_at,
        last_seen_at=closed_at or opened_at, closed_at=closed_at,
        close_code=1000 if closed_at else None, close_reason=reason)


def expect(*spans):
    """Per-minute counts: 1 in each minute of each (first, last) span, inclusive."""
    values = [0] * TREND_MINUTES
    for first, last in spans:
        for i in range(first, last + 1):
            values[i] += 1
    return values


def only(i, n=1):
    values = [0] * TREND_MINUTES
    values[i] = n
    return values


@pytest.fixture
def rows(db):
    """Rows on two instances and none, at chosen minutes of the hour, and one too old."""
    now = timezone.now()
    start = window(now)
    a, b = instance("web-a", now), instance("web-b", now)
    session(now - timedelta(minutes=90), instance=a)  # open all hour
    session(minute(start, 10), minute(start, 20), "timeout", instance=a)
    session(now - timedelta(hours=2), minute(start, 5, 30), "", instance=b)  # blank: closed
    session(now - timedelta(hours=3), now - timedelta(hours=2), "timeout", instance=b)  # gone
    session(minute(start, 50), minute(start, 55), "transport_lost")  # no instance
    session(minute(start, 50, 40), minute(start, 55, 50), "transport_lost", instance=b)
    return now, a, b


def test_buckets_count_sessions_open_in_each_minute_and_closes_by_reason(rows):
    now, a, b = rows
    trends = session_trends(now)
    assert len(trends["minutes"]) == TREND_MINUTES
    assert trends["minutes"][0] == window(now)
    series = trends["series"]
    assert set(series) == {OVERALL, a.id, b.id, None}
    assert series[a.id]["sessions"] == expect((0, 59), (10, 20))
    assert series[a.id]["closes"] == {"timeout": only(20)}
    assert series[b.id]["sessions"] == expect((0, 5), (50, 55))
    assert series[b.id]["closes"] == {"closed": only(5), "transport_lost": only(55)}
    assert series[None]["sessions"] == expect((50, 55))
    assert series[OVERALL]["sessions"] == expect((0, 59), (10, 20), (0, 5), (50, 55), (50, 55))
    assert series[OVERALL]["closes"] == {"timeout": only(20), "closed": only(5),
                                         "transport_lost": only(55, 2)}


def test_an_empty_hour_has_an_overall_series_of_zeros(db):
    series = session_trends()["series"]
    assert series == {OVERALL: {"sessions": [0] * TREND_MINUTES, "closes": {}}}


def test_trends_are_one_query_however_many_rows_and_instances(db):
    now = timezone.now()
    start = window(now)
    with CaptureQueriesContext(connection) as one:
        session_trends(now)
    assert len(one) == 1
    superuser = User.objects.create_superuser("root", "r@example.com", "pw")
    from django.test import Client

    client = Client()
    client.force_login(superuser)
    counts = []
    for instances, per_instance in ((1, 2), (6, 20)):
        for n in range(instances):
            server = instance(f"web-{len(counts)}-{n}", now)
            for i in range(per_instance):
                session(minute(start, i % 60), minute(start, (i + 3) % 60 or 59),
                        ("timeout", "admin", "transport_lost")[i % 3], instance=server)
        with CaptureQueriesContext(connection) as page:
            response = client.get(URL)
        assert response.status_code == 200
        charts = response.content.decode().count('data-chart="sessions"')
        assert charts == 1 + ServerInstance.objects.count()
        counts.append(len(page))
    assert counts[0] == counts[1], counts


def test_page_renders_the_numbers_in_its_chart_hooks(rows, admin_client):
    now, a, b = rows
    for _ in range(2):  # again if a minute began while the page was drawn
        before = timezone.now()
        page = admin_client.get(URL).content.decode()
        series = session_trends(before)["series"]
        if window(timezone.now()) == window(before):
            break
    shift = (window(before) - window(now)) // timedelta(minutes=1)  # since the rows were made

    def attribute(kind, key, name):
        tag = re.search(rf'<svg data-chart="{kind}" data-instance="{re.escape(key)}"[^>]*>', page)
        return re.search(rf'{name}="([^"]*)"', tag.group(0)).group(1)

    assert attribute("sessions", "overall", "data-values") == ",".join(
        map(str, series[OVERALL]["sessions"]))
    assert attribute("closes", a.id, "data-reason-timeout") == ",".join(
        map(str, only(20 - shift)))
    assert attribute("closes", "overall", "data-total") == "4"
    assert attribute("closes", b.id, "data-values") == ",".join(
        map(str, [sum(v) for v in zip(*series[b.id]["closes"].values(), strict=True)]))
    assert 'role="img"' in page and "sessions open per minute, last hour, all servers" in page


def test_trends_need_the_presence_view_permission(rows, client):
    staff = User.objects.create_user("staff", is_staff=True)
    sessions_only = Permission.objects.get(codename="view_session",
                                           content_type__app_label="heartbeat_app")
    staff.user_permissions.add(sessions_only)
    client.force_login(staff)
    response = client.get(URL)
    assert response.status_code == 403
    assert "data-chart" not in response.content.decode()
    presence = Permission.objects.get(codename="view_presenceroom",
                                      content_type__app_label="heartbeat_app")
    staff = User.objects.get(pk=staff.pk)
    staff.user_permissions.remove(sessions_only)
    staff.user_permissions.add(presence)
    client.force_login(staff)
    response = client.get(URL)
    assert response.status_code == 200
    assert 'data-chart="closes"' in response.content.decode()
    plain = User.objects.create_user("plain")
    client.force_login(plain)
    response = client.get(URL)
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_trends_show_while_the_store_is_down(rows, admin_client, settings):
    settings.PRESENCE_STORE = "redis"
    settings.PRESENCE_REDIS_URL = "redis://127.0.0.1:1/0"
    settings.PRESENCE_STORE_TIMEOUT = 0.5
    stores.reset_store()
    page = admin_client.get(URL).content.decode()
    assert "The presence store did not answer" in page
    assert page.count('data-chart="sessions"') == 4  # overall, two instances, none


def test_room_pages_leave_the_trends_out(rows, admin_client):
    page = admin_client.get(URL, {"room": "ops"}).content.decode()
    assert "data-chart" not in page
