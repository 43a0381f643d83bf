"""End to end: the admin on one Daphne process acts on a session held by another."""

import asyncio
import http.cookiejar
import json
import os
import re
import time
import urllib.parse
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.servers import ServerProcess, scaled, server_env

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


class AdminBrowser:
    """A logged-in admin user over plain HTTP, with cookies and the CSRF token."""

    def __init__(self, base):
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def csrf(self):
        return next(c.value for c in self.jar if c.name == "csrftoken")

    def get(self, path):
        with self.opener.open(self.base + path, timeout=scaled(10)) as response:
            return response.read().decode()

    def post(self, path, data):
        body = urllib.parse.urlencode({**data, "csrfmiddlewaretoken": self.csrf()},
                                      doseq=True).encode()
        request = urllib.request.Request(self.base + path, data=body,
                                         headers={"Referer": self.base + path})
        with self.opener.open(request, timeout=scaled(10)) as response:
            return response.read().decode()

    def login(self, username, password):
        self.get("/admin/login/")
        page = self.post("/admin/login/?next=/admin/",
                         {"username": username, "password": password, "next": "/admin/"})
        assert "Log out" in page or "logout" in page, page[:500]


async def test_disconnect_action_reaches_a_session_on_another_process(admin_db, redis_url,
                                                                      tmp_path):
    env = server_env(admin_db, REDIS_URL=redis_url.rsplit("/", 1)[0] + "/13",
                     PRESENCE_KEY_PREFIX=f"hbadmin-{os.urandom(3).hex()}",
                     HEARTBEAT_INTERVAL="5", HEARTBEAT_TIMEOUT="5")
    a = ServerProcess(tmp_path, env, name="A").start()
    b = ServerProcess(tmp_path, env, name="B").start()
    try:
        bystander = await connect(f"{a.url}/ws/rooms/ops/?tab=bystander", origin=a.origin)
        ws = await connect(f"{b.url}/ws/rooms/ops/?tab=victim", origin=b.origin,
                           ping_interval=None)
        hello = json.loads(await ws.recv())
        browser = AdminBrowser(f"http://{a.host}:{a.port}")
        await asyncio.to_thread(browser.login, "ops", "ops-pass")
        page = ""
        deadline = time.monotonic() + scaled(10)
        while hello["session"][:8] not in page and time.monotonic() < deadline:
            page = await asyncio.to_thread(browser.get,
                                           "/admin/heartbeat_app/session/?status=live")
            await asyncio.sleep(0.2)
        assert hello["session"][:8] in page, "the session row never showed up as live"
        await asyncio.to_thread(browser.post, "/admin/heartbeat_app/session/", {
            "action": "disconnect_sessions", "_selected_action": [hello["session"]]})
        try:
            async with asyncio.timeout(scaled(10)):
                async for _ in ws:
                    pass
        except ConnectionClosed:
            pass
        assert ws.close_code == 4000
        deadline = time.monotonic() + scaled(10)
        while time.monotonic() < deadline:
            page = await asyncio.to_thread(
                browser.get, f"/admin/heartbeat_app/session/{hello['session']}/change/")
            if "ended: admin" in page:
                break
            await asyncio.sleep(0.2)
        assert re.search(r"ended: admin \(code 4000", page), page[-2000:]
        instances = await asyncio.to_thread(browser.get, "/admin/heartbeat_app/serverinstance/")
        for server in (a, b):  # both processes registered, each with a session, alive
            row = re.search(rf":{server.proc.pid}:.*?</tr>", instances, re.S)
            assert row and "hb-alive" in row.group(0), instances[-3000:]
        await bystander.close()
        for server in (a, b):
            assert "Traceback" not in server.log(), server.log()
    finally:
        a.stop()
        b.stop()
