"""The admin in a real browser: zombies found, and the list read on a laptop screen.

Headless Debian Chromium driven by Playwright, against a real Daphne. In the first
test the server runs with HEARTBEAT_TIMEOUT=None (probe, never close), so a frozen
client stays open and the admin shows it as a zombie (three intervals without a
word) instead of a closed session. The second seeds rows as wide as real ones and
checks that the session list, whatever its order, and the server instances need no
horizontal scroll at 1366 x 768 and 1280 x 720. Screenshots go to docs/img/ with
HEARTBEAT_UPDATE_SCREENSHOTS=1.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from playwright.sync_api import sync_playwright

from tests.conftest import ADMIN_PASSWORD, ADMIN_USER
from tests.servers import ROOT, ServerProcess, scaled, server_env

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-dev-shm-usage", "--disable-quic"]
ROOM = "ops-demo"  # its own room, so the pages show only this test's sessions
INTERVAL = 2.0  # stale after 2-2.5 s of silence, zombie after 6 s (3 intervals)


def start_client(server, tab, every="0.5"):
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.clients.well_behaved",
         f"{server.url}/ws/rooms/{ROOM}/?tab={tab}", server.origin, every],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    hello = json.loads(proc.stdout.readline())
    return proc, hello["session"]


def test_frozen_client_is_listed_as_a_zombie(admin_db, tmp_path, shots):
    server = ServerProcess(tmp_path, server_env(
        admin_db, HEARTBEAT_INTERVAL=str(INTERVAL), HEARTBEAT_TIMEOUT="none",
        HEARTBEAT_CHECKPOINT_INTERVAL="0.3")).start()
    clients = []
    try:
        live, live_id = start_client(server, "live")
        clients.append(live)
        gone, gone_id = start_client(server, "gone")
        gone.kill()  # the transport goes: closed
        gone.wait()
        zombie, zombie_id = start_client(server, "zombie")
        clients.append(zombie)
        stale, stale_id = start_client(server, "stale")
        clients.append(stale)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            page.set_default_timeout(scaled(30) * 1000)  # every wait, navigation included
            base = f"http://{server.host}:{server.port}"
            page.goto(f"{base}/admin/login/?next=/admin/heartbeat_app/session/")
            page.fill("#id_username", ADMIN_USER)
            page.fill("#id_password", ADMIN_PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_url("**/admin/heartbeat_app/session/")
            zombie.send_signal(signal.SIGSTOP)
            time.sleep(4.0)
            stale.send_signal(signal.SIGSTOP)
            time.sleep(3.0)  # zombie silent ~7 s (over 6), stale ~3 s (over 2.5)
            zombies = page.goto(f"{base}/admin/heartbeat_app/session/?status=zombie&q={ROOM}")
            assert zombies.ok
            rows = page.locator("#result_list tbody tr")
            texts = [rows.nth(i).inner_text() for i in range(rows.count())]
            assert any(zombie_id[:8] in t for t in texts), texts
            assert not any(live_id[:8] in t or stale_id[:8] in t for t in texts), texts
            page.screenshot(path=str(shots / "admin-zombies.png"))
            page.goto(f"{base}/admin/heartbeat_app/session/?q={ROOM}")
            badges = {}
            for session_id in (live_id, stale_id, zombie_id, gone_id):
                row = page.locator("#result_list tbody tr", has_text=session_id[:8])
                badges[session_id] = row.locator(".hb-badge").inner_text()
            assert badges == {live_id: "live", stale_id: "stale", zombie_id: "zombie",
                              gone_id: "closed"}
            page.goto(f"{base}/admin/heartbeat_app/session/{zombie_id}/change/")
            assert "still open: zombie" in page.content()
            browser.close()
    finally:
        for proc in clients:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()
        server.stop()


# The list on a laptop ---------------------------------------------------------------------

#: Rows as wide as real ones get: every status and close reason, a user name, an anonymous
#: key, long room names (up to 80 characters) and tab ids (64), Kubernetes pod names.
SEED = r'''
import secrets
from datetime import timedelta

from django.contrib.auth.models import User
from django.utils import timezone

from heartbeat_app.models import ServerInstance, Session

now = timezone.now()
alive = ServerInstance.objects.create(
    id="web-7f9c8d6b5-x2kqp:48213:9f3a2c1b", host="web-7f9c8d6b5-x2kqp", pid=48213,
    started_at=now - timedelta(hours=5), last_beat=now, session_count=4)
lost = ServerInstance.objects.create(
    id="web-7f9c8d6b5-m8zrt:51877:0c4d2e9a", host="web-7f9c8d6b5-m8zrt", pid=51877,
    started_at=now - timedelta(hours=6), last_beat=now - timedelta(hours=1),
    session_count=2)
stopped = ServerInstance.objects.create(
    id="ip-10-0-12-34.eu-west-1.compute.internal:7:1a2b3c4d",
    host="ip-10-0-12-34.eu-west-1.compute.internal", pid=7,
    started_at=now - timedelta(days=1), last_beat=now - timedelta(hours=2),
    stopped_at=now - timedelta(hours=2))
margaret = User.objects.create_user("margaret.hamilton")
grace = User.objects.create_user("grace")
long_room = "incident-2026-11-30-payments-eu-west-1-degraded-latency-war-room-follow-up-q4"
rows = [
    # status, user, key, rooms, tab, instance, opened ago, seen ago, rtt, visible, code, reason
    ("live", margaret, None, "lobby", "Xk3-9QzLw1", alive, 7200, 3, 12.4, True, None, ""),
    ("live", grace, None, "lobby support-queue-emea dev", "tab-2", alive, 600, 1, 48.0, True,
     None, ""),
    ("stale", None, "anon:5d1c0b7f3e9a2d4c8b61", "support-queue-emea private-ops-escalations",
     "Q" * 64, alive, 1800, 27, None, False, None, ""),
    ("zombie", None, "anon:0f9e8d7c6b5a49382716", long_room, "zz-1", lost, 3600, 200, 230.5,
     None, None, ""),
    ("closed", margaret, None, "lobby", "Xk3-9QzLw1", stopped, 86400, 7300, 15.0, True,
     1001, "server_shutdown"),
    ("closed", None, "anon:77aa88bb99cc00dd11ee", "dev", "t-9", lost, 5000, 4000, None,
     False, 1006, "instance_lost"),
    ("closed", grace, None, "lobby", "tab-1", alive, 4000, 3000, 33.3, True, 1006,
     "transport_lost"),
    ("closed", None, "anon:1234567890abcdef1234", long_room, "a" * 64, alive, 3000, 2900,
     None, True, 4408, "timeout"),
    ("closed", None, "anon:fedcba0987654321fedc", "lobby", "b7", alive, 2500, 2400, 9.1,
     True, 4429, "rate_limited"),
    ("closed", margaret, None, "private-ops-escalations", "c8", alive, 2000, 1900, 11.0,
     False, 4000, "admin"),
]
for status, user, key, rooms, tab, instance, opened, seen, rtt, visible, code, reason in rows:
    opened_at = now - timedelta(seconds=opened)
    seen_at = now - timedelta(seconds=seen)
    Session.objects.create(
        id=secrets.token_hex(16), user=user, user_key=key or str(user.pk), rooms=rooms, tab=tab,
        instance=instance, path="/ws/rooms/%s/" % rooms.split()[0],
        client_addr="2001:db8:85a3::8a2e:370:7334", user_agent="Mozilla/5.0",
        opened_at=opened_at, last_seen_at=seen_at,
        stale_after=seen_at + timedelta(seconds=25 if status != "stale" else 25 - 30),
        zombie_after=seen_at + timedelta(seconds=35), interval=25.0, timeout=10.0,
        rtt_ms=rtt, rtt_avg_ms=rtt, visible=visible, probes_sent=1 if rtt else 0,
        closed_at=seen_at if code else None, close_code=code, close_reason=reason)
'''
LAPTOPS = [(1366, 768), (1280, 720)]


@pytest.fixture
def seeded_db(tmp_path):
    """A database of its own, migrated, with a superuser and the rows of SEED."""
    url = f"sqlite:///{tmp_path / 'laptop.sqlite3'}"
    env = {**os.environ, **server_env(url)}
    for command in (["migrate", "--noinput", "-v", "0"],
                    ["shell", "-c", SEED],
                    ["shell", "-c", f"from django.contrib.auth.models import User; "
                                    f"User.objects.create_superuser('{ADMIN_USER}', "
                                    f"'ops@example.com', '{ADMIN_PASSWORD}')"]):
        subprocess.run([sys.executable, "manage.py", *command], cwd=ROOT, env=env, check=True,
                       timeout=120)
    return url


def overflow(page) -> dict:
    """How far the page and the session table reach past the viewport, in CSS pixels."""
    return page.evaluate("""() => {
        const doc = document.documentElement, table = document.getElementById('result_list');
        const box = table.getBoundingClientRect();
        const cells = [...table.querySelectorAll('th, td')];
        table.style.width = '1px';  // shrunk to its narrowest: how much room is left
        const spare = table.parentElement.clientWidth - table.getBoundingClientRect().width;
        table.style.width = '';
        return {
            spare: Math.floor(spare),
            page: doc.scrollWidth - doc.clientWidth,
            table: Math.ceil(box.right - doc.clientWidth),
            container: table.parentElement.scrollWidth - table.parentElement.clientWidth,
            cell: Math.max(...cells.map(c => Math.ceil(c.getBoundingClientRect().right))
                           ) - doc.clientWidth,
            columns: [...table.querySelectorAll('thead th')].map(
                th => th.innerText.trim() + ' ' + Math.round(th.getBoundingClientRect().width)),
        };
    }""")


@pytest.mark.parametrize("width, height", LAPTOPS)
def test_session_list_fits_a_laptop_screen(seeded_db, tmp_path, shots, width, height):
    """Every column, "ended" included, on screen at laptop widths: no horizontal scroll."""
    # The alive instance's beat was written by the seed: alive for the test's length.
    server = ServerProcess(tmp_path, server_env(seeded_db, PRESENCE_INSTANCE_TTL="900")).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            page = browser.new_page(viewport={"width": width, "height": height})
            base = f"http://{server.host}:{server.port}"
            page.goto(f"{base}/admin/login/?next=/admin/heartbeat_app/session/")
            page.fill("#id_username", ADMIN_USER)
            page.fill("#id_password", ADMIN_PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_url("**/admin/heartbeat_app/session/")
            assert page.locator("#result_list tbody tr").count() == 10
            page.screenshot(path=str(tmp_path / f"laptop-{width}.png"))
            if width == 1280:  # the docs' picture: the narrower laptop
                page.screenshot(path=str(shots / "admin-sessions.png"))
            # A sorted column's header grows by its sort widgets: every order must fit.
            for column in range(1, 9):
                for order in (str(column), f"-{column}"):
                    page.goto(f"{base}/admin/heartbeat_app/session/?o={order}")
                    measured = overflow(page)
                    assert measured["page"] <= 0 and measured["container"] <= 0, (order, measured)
                    assert measured["table"] <= 0 and measured["cell"] <= 0, (order, measured)
            page.goto(f"{base}/admin/heartbeat_app/serverinstance/")
            assert page.locator("#result_list tbody tr").count() == 3
            page.screenshot(path=str(tmp_path / f"instances-{width}.png"))
            measured = overflow(page)
            assert measured["page"] <= 0 and measured["container"] <= 0, measured
            browser.close()
    finally:
        server.stop()


# Trends on the presence overview ----------------------------------------------------------

TREND_SEED = r'''
from datetime import timedelta

from django.utils import timezone

from heartbeat_app.models import ServerInstance, Session

now = timezone.now()
start = now.replace(second=0, microsecond=0) - timedelta(minutes=59)
servers = [ServerInstance.objects.create(
    id=f"web-7f9c8d6b5-{name}:{pid}:9f3a2c1b", host=f"web-7f9c8d6b5-{name}", pid=pid,
    started_at=now - timedelta(hours=5), last_beat=now) for name, pid in
    (("x2kqp", 48213), ("m8zrt", 51877))]
reasons = ["closed", "transport_lost", "timeout", "admin", "rate_limited"]
n = 0
for s, server in enumerate(servers):
    for i in range(0, 59, 1 + s):  # a session opened each minute (every other on the second)
        n += 1
        lasts = 4 + (i * 7) % 11
        closed = start + timedelta(minutes=i + lasts, seconds=20) if i + lasts < 59 else None
        Session.objects.create(
            id=f"trend{n:027d}", user_key=f"k{n}", tab="t", instance=server,
            opened_at=start + timedelta(minutes=i, seconds=10), last_seen_at=closed or now,
            closed_at=closed, close_code=1000 if closed else None,
            close_reason=reasons[(i + s) % 5] if closed else "")
'''


def test_presence_overview_draws_the_hour_trends(tmp_path, shots):
    """Sessions and closes by reason per minute, overall and per instance, as inline SVG."""
    url = f"sqlite:///{tmp_path / 'trends.sqlite3'}"
    env = {**os.environ, **server_env(url)}
    for command in (["migrate", "--noinput", "-v", "0"], ["shell", "-c", TREND_SEED],
                    ["shell", "-c", f"from django.contrib.auth.models import User; "
                                    f"User.objects.create_superuser('{ADMIN_USER}', "
                                    f"'ops@example.com', '{ADMIN_PASSWORD}')"]):
        subprocess.run([sys.executable, "manage.py", *command], cwd=ROOT, env=env, check=True,
                       timeout=120)
    server = ServerProcess(tmp_path, server_env(url)).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            base = f"http://{server.host}:{server.port}"
            page.goto(f"{base}/admin/login/?next=/admin/heartbeat_app/presenceroom/")
            page.fill("#id_username", ADMIN_USER)
            page.fill("#id_password", ADMIN_PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_url("**/admin/heartbeat_app/presenceroom/")
            charts = page.locator("svg[data-chart]")
            assert charts.count() == 6  # sessions and closes: overall and two instances
            data = {}
            for i in range(charts.count()):
                chart = charts.nth(i)
                key = (chart.get_attribute("data-chart"), chart.get_attribute("data-instance"))
                values = [int(v) for v in chart.get_attribute("data-values").split(",")]
                assert len(values) == 60, key
                assert chart.locator("rect").count() > 0, key
                assert chart.bounding_box()["width"] > 300, key  # drawn, not collapsed
                data[key] = values
            instances = [k for kind, k in data if kind == "sessions" and k != "overall"]
            assert len(instances) == 2
            for kind in ("sessions", "closes"):
                summed = [sum(data[(kind, k)][i] for k in instances) for i in range(60)]
                assert data[(kind, "overall")] == summed, kind
            # The first minute: the first session of each server (or, if a minute began
            # between the seed and the page, those and the busier server's second).
            assert data[("sessions", "overall")][0] in (2, 3)
            assert sum(data[("closes", "overall")]) > 10
            label = page.locator('svg[data-chart="closes"][data-instance="overall"] > title')
            assert label.text_content().startswith("sessions closed, by reason per minute")
            page.locator("#hb-trends").scroll_into_view_if_needed()
            page.locator("#hb-trends").screenshot(path=str(shots / "admin-trends.png"))
            browser.close()
    finally:
        server.stop()
