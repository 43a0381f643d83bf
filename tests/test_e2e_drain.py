"""SIGTERM drains a real server: 4001 with hints, leaves flushed to the other process, rows.

Two processes share one Redis and one database; A (Daphne or uvicorn) holds the
clients and gets SIGTERM, B (Daphne) holds an observer. Figures are printed (-s).
"""

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import pytest
import redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.servers import ROOT, ServerProcess, scaled, server_env, until

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

TICK, GRACE, SPREAD = 0.1, 1.0, 1.0
# From SIGTERM to the observer seeing every leave: a drained tab's meta is kept for its
# hint (200 ms + up to the spread) plus the grace, then one tick.
LEAVE_BOUND = 0.2 + SPREAD + GRACE + TICK
SLACK = 1.0


def drain_env(database_url, redis_url, prefix):
    return server_env(
        database_url, REDIS_URL=redis_url, PRESENCE_KEY_PREFIX=prefix,
        HEARTBEAT_TICK=str(TICK), PRESENCE_LEAVE_GRACE=str(GRACE),
        HEARTBEAT_DRAIN_SPREAD=str(SPREAD), HEARTBEAT_RETRY_MIN_MS="200",
        HEARTBEAT_CHECKPOINT_INTERVAL="0.5", HEARTBEAT_INTERVAL="5", HEARTBEAT_TIMEOUT="5")


def logged_in_cookie(database_url: str, username: str) -> str:
    """A session cookie of a user of the e2e database, made the way Django's login makes it."""
    code = (
        "from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY;"
        "from django.contrib.auth.models import User;"
        "from django.contrib.sessions.backends.db import SessionStore;"
        f"u, _ = User.objects.get_or_create(username={username!r});"
        "s = SessionStore(); s[SESSION_KEY] = str(u.pk);"
        "s[BACKEND_SESSION_KEY] = 'django.contrib.auth.backends.ModelBackend';"
        "s[HASH_SESSION_KEY] = u.get_session_auth_hash(); s.create(); print(s.session_key)")
    out = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT,
                         env={**os.environ, **server_env(database_url)}, check=True,
                         timeout=scaled(60), capture_output=True, text=True)
    return f"sessionid={out.stdout.strip().splitlines()[-1]}"


class Client:
    """A client that answers probes and remembers what the server told it."""

    def __init__(self, server, tab, cookie=None, room="deploy"):
        self.url = f"{server.url}/ws/rooms/{room}/?tab={tab}"
        self.origin = server.origin
        self.cookie = cookie
        self.notice = None
        self.members: dict[str, set] = {}  # key -> refs
        self.member_leaves: list[tuple[float, str]] = []  # a member's last meta left
        self.hello = None

    async def start(self):
        headers = {"Cookie": self.cookie} if self.cookie else None
        self.ws = await connect(self.url, origin=self.origin, ping_interval=None,
                                additional_headers=headers)
        self.task = asyncio.create_task(self.run())
        return self

    def apply(self, message):
        if message["type"] == "presence_state":
            self.members = {k: {m["ref"] for m in v["metas"]}
                            for k, v in message["members"].items()}
        elif message["type"] == "presence_diff":
            for key, value in message["joins"].items():
                self.members.setdefault(key, set()).update(m["ref"] for m in value["metas"])
            for key, value in message["leaves"].items():
                refs = self.members.get(key, set())
                refs.difference_update(m["ref"] for m in value["metas"])
                if not refs and key in self.members:
                    del self.members[key]
                    self.member_leaves.append((time.monotonic(), key))

    async def run(self):
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                if message["type"] == "ping":
                    await self.ws.send(json.dumps({"type": "pong", "id": message["id"]}))
                elif message["type"] == "close":
                    self.notice = message
                elif message["type"] == "hello":
                    self.hello = message
                self.apply(message)
        except ConnectionClosed:
            pass  # the close code is on self.ws


async def connect_refused(port: int) -> bool:
    """Whether a TCP connect to the port on loopback is refused."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port),
                                           scaled(2))
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


def rows(database_url, session_ids):
    path = database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        marks = ",".join("?" * len(session_ids))
        return db.execute(f"SELECT close_code, close_reason FROM heartbeat_app_session "
                          f"WHERE id IN ({marks})", list(session_ids)).fetchall()


def stopped_instances(database_url):
    path = database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        return db.execute("SELECT id FROM heartbeat_app_serverinstance "
                          "WHERE stopped_at IS NOT NULL").fetchall()


@pytest.fixture
def shared_redis(redis_url):
    url = redis_url.rsplit("/", 1)[0] + "/11"
    redis.Redis.from_url(url).flushdb()
    yield url
    redis.Redis.from_url(url).flushdb()


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
async def test_sigterm_drains_clients_flushes_leaves_and_rows(kind, migrated_db, shared_redis,
                                                              tmp_path):
    env = drain_env(migrated_db, shared_redis, f"hbdrain-{os.urandom(3).hex()}")
    a = ServerProcess(tmp_path, env, kind=kind, name="A").start()
    b = ServerProcess(tmp_path, env, name="B").start()
    try:
        observer = await Client(b, "observer").start()
        returning_cookie = logged_in_cookie(migrated_db, f"returning-{kind}")
        returning = await Client(a, "tab-r", cookie=returning_cookie).start()
        leavers = [await Client(a, f"tab-{i}").start() for i in range(5)]
        assert await until(lambda: len(observer.members) == 7, scaled(10)), observer.members
        returning_key = next(k for k in observer.members if not k.startswith("anon:"))
        await asyncio.sleep(scaled(1.0))  # a checkpoint writes the rows
        sent = time.monotonic()
        a.proc.send_signal(signal.SIGTERM)
        # Every client of A is told to come back, with a hint within the spread.
        drained = [returning, *leavers]
        for client in drained:
            await asyncio.wait_for(client.task, scaled(5))
        closes = [c.ws.close_code for c in drained]
        hints = [c.notice["retry_after_ms"] for c in drained]
        assert closes == [4001] * 6
        assert all(200 <= h <= 200 + SPREAD * 1000 for h in hints), hints
        # A stopped listening before it closed anyone: a proxy's next connect is refused
        # at once (and goes to B) while A is still flushing its leaves.
        refused = await connect_refused(a.port)
        assert a.proc.poll() is None, "A exited before its drain's grace was over"
        assert refused, "A still accepts connections while it drains"
        # The returning tab comes back at once, on B, as the same member: no blink.
        back = await Client(b, "tab-r", cookie=returning_cookie).start()
        assert await until(lambda: back.hello is not None, scaled(5))
        # The others leave within the grace, seen by the observer on B.
        assert await until(lambda: len(observer.members) == 2,
                           scaled(LEAVE_BOUND + SLACK + 5))
        first_leave = min(at for at, _ in observer.member_leaves) - sent
        last_leave = max(at for at, _ in observer.member_leaves) - sent
        assert first_leave >= min(hints) / 1000 + GRACE  # kept for its hint and the grace
        print(f"\n[drain {kind}] 6 clients closed 4001, hints {sorted(hints)} ms; "
              f"last leave seen on B {last_leave:.2f} s after SIGTERM "
              f"(bound {LEAVE_BOUND:.1f} s + slack)")
        assert last_leave <= LEAVE_BOUND + SLACK
        assert returning_key in observer.members
        assert returning_key not in [key for _, key in observer.member_leaves]
        # A exits by itself, its rows say server_shutdown and its instance is stopped.
        a.proc.wait(timeout=scaled(20))
        ids = [c.hello["session"] for c in drained]
        assert sorted(rows(migrated_db, ids)) == [(4001, "server_shutdown")] * 6
        assert len(stopped_instances(migrated_db)) >= 1
        assert "drain done: 6 sessions closed in" in a.log()
        assert "drain timed out" not in a.log()
        await back.ws.close()
        await observer.ws.close()
    finally:
        a.stop()
        b.stop()


async def first_bytes(sock: socket.socket, size: int, timeout: float = 15) -> str:
    """The first ``size`` bytes a socket receives, or how it ended before them."""
    loop = asyncio.get_running_loop()
    data = b""
    try:
        while len(data) < size:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, size - len(data)),
                                           scaled(timeout))
            if not chunk:
                return f"closed after {data!r}"
            data += chunk
    except ConnectionResetError:
        return f"reset after {data!r}" if data else "reset"
    except TimeoutError:
        return "no answer"
    return data.decode(errors="replace")


class BacklogServer(ServerProcess):
    """Daphne with an accept backlog of 1,024 (its default of 50 would hold few)."""

    def command(self):
        return [sys.executable, "-m", "daphne", "-e",
                f"tcp:port={self.port}:interface={self.host}:backlog=1024", self.app]


async def test_handshakes_queued_when_the_drain_starts_are_answered_not_reset(
        migrated_db, shared_redis, tmp_path):
    """Connections waiting in the accept backlog get 101 and 4001, not a TCP reset.

    Closing a listening socket resets what its backlog holds (a proxy answers those
    with 502). The process is stopped (SIGSTOP) while the connections queue, gets
    SIGTERM, and is continued: its drain accepts the queue before it stops listening.
    """
    env = drain_env(migrated_db, shared_redis, f"hbdrain-{os.urandom(3).hex()}")
    env["HEARTBEAT_MAX_HANDSHAKES"] = "1000"
    a = BacklogServer(tmp_path, env, name="A").start()
    count = 600
    try:
        # A session first: a process installs its drain with its first session.
        held = await Client(a, "tab-held").start()
        assert await until(lambda: held.hello is not None, scaled(5))
        a.proc.send_signal(signal.SIGSTOP)
        host = a.origin.split("//", 1)[1]
        request = (f"GET /ws/rooms/queued/ HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   f"Sec-WebSocket-Version: 13\r\nOrigin: {a.origin}\r\n\r\n").encode()
        # Plain sockets: an asyncio stream that has seen a reset raises at once and
        # drops what it holds unread, while recv() hands over what came before one.
        loop = asyncio.get_running_loop()
        socks = []
        for _ in range(count):
            sock = socket.socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", a.port))
            await loop.sock_sendall(sock, request)
            socks.append(sock)
        a.proc.send_signal(signal.SIGTERM)
        a.proc.send_signal(signal.SIGCONT)
        answers = await asyncio.gather(*(first_bytes(s, 12) for s in socks))
        for sock in socks:
            sock.close()
        tally = {k: answers.count(k) for k in set(answers)}
        print(f"\n[drain backlog] {count} queued handshakes answered: {tally}")
        assert tally == {"HTTP/1.1 101": count}, tally
        a.proc.wait(timeout=scaled(20))
    finally:
        if a.proc.poll() is None:
            a.proc.send_signal(signal.SIGCONT)
        a.stop()


async def read_until_close_frame(sock: socket.socket, timeout: float) -> bytes:
    """Read a WebSocket stream until a close frame (opcode 8) has arrived; return it all."""
    loop = asyncio.get_running_loop()
    data = b""
    deadline = time.monotonic() + scaled(timeout)
    while b"\r\n\r\n" not in data or not _has_close_frame(data.split(b"\r\n\r\n", 1)[1]):
        left = deadline - time.monotonic()
        assert left > 0, f"no close frame within {timeout} s: {data[:200]!r}"
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), left)
        assert chunk, f"closed before a close frame: {data[:200]!r}"
        data += chunk
    return data


def _has_close_frame(frames: bytes) -> bool:
    at = 0
    while at + 2 <= len(frames):
        opcode, length = frames[at] & 0x0F, frames[at + 1] & 0x7F
        at += 2
        if length == 126:
            length, at = int.from_bytes(frames[at:at + 2], "big"), at + 2
        elif length == 127:
            length, at = int.from_bytes(frames[at:at + 8], "big"), at + 8
        if at + length > len(frames):
            return False
        if opcode == 8:
            return True
        at += length
    return False


@pytest.mark.parametrize("setting, waits_at_least, waits_under", [
    # The app's setting: a client has 5 s to answer a close frame (counted from queuing
    # it: under load the frame goes out later, so the bound leaves room).
    ("5", 2.5, None),
    ("none", None, 2.5),  # Daphne's own: a second, then a reset
])
async def test_daphne_gives_a_close_answer_the_time_the_setting_says(
        setting, waits_at_least, waits_under, migrated_db, tmp_path):
    """A client that does not answer a close frame is reset after the close handshake timeout.

    Autobahn counts its one second from when the close frame is queued: a loop busy for
    that long (a drain, a burst of refused handshakes) resets connections whose close
    notice is still unsent. HEARTBEAT_CLOSE_HANDSHAKE_TIMEOUT lengthens it.
    """
    env = server_env(migrated_db, HEARTBEAT_CONNECT_RATE="0.01",
                     HEARTBEAT_CLOSE_HANDSHAKE_TIMEOUT=setting)
    server = ServerProcess(tmp_path, env, name="close").start()
    try:
        # The first handshake takes the one token and opens a session (the process
        # readies itself with its first session); the second is refused with 4013.
        first = await Client(server, "tab-first").start()
        assert await until(lambda: first.hello is not None, scaled(5))
        host = server.origin.split("//", 1)[1]
        request = (f"GET /ws/rooms/lobby/ HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   f"Sec-WebSocket-Version: 13\r\nOrigin: {server.origin}\r\n\r\n").encode()
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", server.port))
            await loop.sock_sendall(sock, request)
            got = await read_until_close_frame(sock, 10)
            closed_at = time.monotonic()
            assert got.startswith(b"HTTP/1.1 101"), got[:40]
            assert b'"code":4013' in got.replace(b" ", b""), got  # the notice, with its hint
            # Not answered: the server ends the connection when its timeout runs out.
            ending = await first_bytes(sock, 1, timeout=20)  # scaled inside
            waited = time.monotonic() - closed_at
        finally:
            sock.close()
        print(f"\n[close timeout {setting}] connection ended ({ending}) {waited:.2f} s "
              "after the close frame")
        assert ending in {"reset", "closed after b''"}, ending
        if waits_at_least is not None:
            assert waited >= waits_at_least
        if waits_under is not None:
            assert waited < scaled(waits_under)
        await first.ws.close()
    finally:
        server.stop()
