"""The admin in a real browser: a client frozen with SIGSTOP is found among the zombies.

Headless Debian Chromium driven by Playwright, against a real Daphne. The server
runs with HEARTBEAT_TIMEOUT=None (probe, never close), so a frozen client stays
open and the admin shows it as a zombie (three intervals without a word) instead
of a closed session. Screenshots go to docs/img/ with
HEARTBEAT_UPDATE_SCREENSHOTS=1.
"""

import json
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
            page = browser.new_page(viewport={"width": 1700, "height": 620})
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
            page.screenshot(path=str(shots / "admin-sessions.png"))
            page.goto(f"{base}/admin/heartbeat_app/session/{zombie_id}/change/")
            assert "still open: zombie" in page.content()
            browser.close()
    finally:
        for proc in clients:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()
        server.stop()
