"""The lift: a client whose network vanishes mid-session, with no FIN and no RST.

Two network namespaces of the test's own, joined by a veth pair on TEST-NET-1
(192.0.2.0/24), which exists only inside them: Daphne and an observer in one, the
client in the other. Taking the client's end of the link down makes its packets stop
without a close handshake, as in a lift or a tunnel. The server must close the
session with 4408 within ``interval + timeout + 1 tick``, broadcast its presence leave
with reason ``timeout``, and record ``timeout`` on its admin row.

Needs root (CAP_NET_ADMIN) and iproute2; elsewhere it skips with the reason, and
under CI a skip fails the run.
"""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

from heartbeat_app.options import anonymous_token
from tests.servers import ROOT, scaled, server_env, stop_process

pytestmark = pytest.mark.e2e

INTERVAL, TIMEOUT, TICK = 1.0, 1.0, 0.1
BOUND = INTERVAL + TIMEOUT + TICK
# The client pings every PING_EVERY, so its last frame left at most that long before the cut.
PING_EVERY = 0.3
# Process wake-ups and log polling on a shared machine.
SLACK = 0.3
SERVER_ADDR, CLIENT_ADDR, PREFIX = "192.0.2.1", "192.0.2.2", 24
PORT = 8000  # the namespaces are empty: any port is free there
VETH = "hbveth"
WATCHER = [sys.executable, "-m", "tests.clients.watcher"]
LIFETIME = "40"  # seconds the watchers stay; they scale it


def ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=scaled(10))


def namespaces_unavailable() -> str | None:
    """Why this machine cannot make network namespaces, or None if it can."""
    if not shutil.which("ip"):
        return "iproute2 ('ip') is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN); the suite runs unprivileged"
    name = f"hbprobe-{uuid.uuid4().hex[:8]}"
    made = ip("netns", "add", name)
    if made.returncode != 0:
        return f"'ip netns add' failed: {made.stderr.strip()}"
    ip("netns", "del", name)
    return None


@pytest.fixture
def lift():
    """Two fresh namespaces, server and client, joined by a veth pair; removed afterwards."""
    reason = namespaces_unavailable()
    if reason:
        pytest.skip(f"the lift test cannot cut a link here: {reason}")
    tag = uuid.uuid4().hex[:8]
    server_ns, client_ns = f"hbf-srv-{tag}", f"hbf-cli-{tag}"
    try:
        for step in (
            ["netns", "add", server_ns],
            ["netns", "add", client_ns],
            ["link", "add", VETH, "netns", server_ns, "type", "veth",
             "peer", "name", VETH, "netns", client_ns],
            ["-n", server_ns, "addr", "add", f"{SERVER_ADDR}/{PREFIX}", "dev", VETH],
            ["-n", client_ns, "addr", "add", f"{CLIENT_ADDR}/{PREFIX}", "dev", VETH],
            ["-n", server_ns, "link", "set", VETH, "up"],
            ["-n", client_ns, "link", "set", VETH, "up"],
            ["-n", server_ns, "link", "set", "lo", "up"],
            ["-n", client_ns, "link", "set", "lo", "up"],
        ):
            done = ip(*step)
            assert done.returncode == 0, f"ip {' '.join(step)}: {done.stderr}"
        yield server_ns, client_ns
    finally:
        for ns in (server_ns, client_ns):
            ip("netns", "del", ns)  # also removes the veth pair


class Proc:
    """A process in a namespace, its output collected line by line."""

    def __init__(self, ns: str, argv: list[str], env: dict[str, str], log: Path | None = None):
        self.lines: list[str] = []
        out = open(log, "ab") if log else subprocess.PIPE
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], cwd=ROOT, env=env,
                                     stdout=out, stderr=subprocess.STDOUT)
        if log:
            out.close()
        else:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def messages(self) -> list[dict]:
        out = []
        for line in list(self.lines):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def stop(self):
        stop_process(self.proc)


def until(predicate, timeout, step=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def leave_of(watcher: Proc, key: str):
    """(time, reason) of the first presence leave of ``key`` the watcher saw."""
    for item in watcher.messages():
        msg = item.get("msg") or {}
        if msg.get("type") == "presence_diff" and key in msg.get("leaves", {}):
            return item["t"], msg["leaves"][key]["metas"][0]["reason"]
    return None


def joined(watcher: Proc, key: str) -> bool:
    for item in watcher.messages():
        msg = item.get("msg") or {}
        if msg.get("type") in {"presence_diff", "presence_state"}:
            if key in msg.get("joins", msg.get("members", {})):
                return True
    return False


def session_row(database_url: str, session_id: str):
    path = database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path, timeout=scaled(5)) as db:
        return db.execute(
            "SELECT close_code, close_reason, closed_at FROM heartbeat_app_session WHERE id = ?",
            (session_id,),
        ).fetchone()


def test_link_cut_mid_session_is_closed_4408_with_presence_leave_and_admin_row(
        lift, migrated_db, tmp_path):
    server_ns, client_ns = lift
    env = {**os.environ, **server_env(
        migrated_db,
        HEARTBEAT_INTERVAL=str(INTERVAL), HEARTBEAT_TIMEOUT=str(TIMEOUT),
        HEARTBEAT_TICK=str(TICK), PRESENCE_LEAVE_GRACE="0.3",
        ALLOWED_HOSTS=f"{SERVER_ADDR},127.0.0.1",
    ), "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "daphne-lift.log"
    server = Proc(server_ns, [sys.executable, "-m", "daphne", "-b", "0.0.0.0", "-p", str(PORT),
                              "project.asgi:application"], env, log=log)
    room = f"lift-{uuid.uuid4().hex[:6]}"
    watchers: list[Proc] = []
    try:
        assert until(lambda: "Listening on TCP address" in log.read_text(errors="replace"),
                     scaled(30)), \
            log.read_text(errors="replace")
        observer = Proc(server_ns, [*WATCHER,
                                    f"ws://127.0.0.1:{PORT}/ws/rooms/{room}/?tab=observer",
                                    f"http://127.0.0.1:{PORT}", str(PING_EVERY), LIFETIME], env)
        watchers.append(observer)
        victim = Proc(client_ns, [*WATCHER,
                                  f"ws://{SERVER_ADDR}:{PORT}/ws/rooms/{room}/?tab=victim"
                                  f"&anon={quote(anonymous_token('victim'))}",
                                  f"http://{SERVER_ADDR}:{PORT}", str(PING_EVERY), LIFETIME], env)
        watchers.append(victim)
        hello = until(lambda: next((m["msg"] for m in victim.messages()
                                    if m.get("msg", {}).get("type") == "hello"), None), scaled(20))
        assert hello, victim.lines
        assert until(lambda: joined(observer, "anon:victim"), scaled(10)), observer.lines

        # Healthy over the link for longer than interval + timeout: no false zombie.
        time.sleep(INTERVAL + TIMEOUT + 0.5)
        assert "silent for" not in log.read_text(errors="replace")
        pongs_before = sum(m.get("msg", {}).get("type") == "pong" for m in victim.messages())
        assert pongs_before >= 5

        # The lift doors close: the client's link goes down. No FIN, no RST, no close frame.
        cut_done = ip("-n", client_ns, "link", "set", VETH, "down")
        cut = time.monotonic()
        assert cut_done.returncode == 0, cut_done.stderr

        needle = f"heartbeat session {hello['session']} silent for"
        seen = until(lambda: needle in log.read_text(errors="replace") and time.monotonic(),
                     scaled(BOUND + 5), step=0.005)
        assert seen, log.read_text(errors="replace")
        closed_after = seen - cut
        left = until(lambda: leave_of(observer, "anon:victim"), scaled(5))
        assert left, observer.lines
        leave_after = left[0] - cut
        row = until(lambda: (r := session_row(migrated_db, hello["session"])) and r[2] and r,
                    scaled(5))
        print(f"\n[lift] link cut -> 4408 close after {closed_after:.3f} s, presence leave on "
              f"the observer after {leave_after:.3f} s (bound {BOUND} s + {SLACK} s slack; "
              f"last ping at most {PING_EVERY} s before the cut); admin row {row[:2]}")
        assert INTERVAL + TIMEOUT - PING_EVERY - 0.05 <= closed_after <= BOUND + SLACK
        assert left[1] == "timeout"
        assert leave_after <= BOUND + TICK + SLACK
        assert row[0] == 4408 and row[1] == "timeout"
        # The client never heard of it: no close reached it across the dead link.
        assert not any("closed" in m for m in victim.messages())
        # The observer's own session went on undisturbed.
        assert not any("closed" in m for m in observer.messages())
        assert "Traceback" not in log.read_text(errors="replace")
    finally:
        for proc in watchers:
            proc.stop()
        server.stop()
