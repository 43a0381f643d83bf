"""The 75 % rule, proven against a real nginx in front of Daphne.

nginx closes a proxied WebSocket once nothing has crossed it for ``proxy_read_timeout``
(the timer is re-armed by traffic in either direction). With PROXY_TIMEOUT = 3 s:

- heartbeat at 75 % of it (HEARTBEAT_INTERVAL = 2.25), client pinging every interval:
  survives several timeouts' worth of idle;
- the same interval, a passive client that only answers the server's probes: survives
  (the server probes after interval + a phase of up to timeout / 4 + one tick, here
  2.25 + 0.225 + 0.1 s, still inside the proxy's 3 s);
- heartbeat above the proxy timeout (interval 4.5 s): cut by nginx;
- heartbeat off, a client that sends nothing: cut by nginx after about 3 s.

nginx runs as the test's own process (``daemon off``) with its config, pid and logs in
the test's temporary directory, on a free loopback port.
"""

import asyncio
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.servers import ServerProcess, free_port, scaled, server_env, wait_for_port

pytestmark = pytest.mark.e2e

PROXY_TIMEOUT = 3.0
RULE_INTERVAL = 0.75 * PROXY_TIMEOUT
SLOW_INTERVAL = 1.5 * PROXY_TIMEOUT
RULE_TIMEOUT = RULE_INTERVAL * 10 / 25
TICK = 0.1
IDLE = 4 * PROXY_TIMEOUT  # how long the survivors must last
# nginx's timers, the loopback and a shared machine.
SLACK = 1.0

CONFIG = """
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
{servers}
}}
"""

SERVER = """
    server {{
        listen 127.0.0.1:{listen};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_read_timeout {timeout}ms;
            proxy_send_timeout {timeout}ms;
        }}
    }}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None)


class Nginx:
    """An nginx of the test's own: one server block per upstream, each on a free port."""

    def __init__(self, tmp: Path, upstreams: list[int], timeout: float):
        self.tmp = tmp
        self.ports = [free_port() for _ in upstreams]
        servers = "".join(SERVER.format(listen=port, upstream=upstream, timeout=int(timeout * 1000))
                          for port, upstream in zip(self.ports, upstreams, strict=True))
        self.conf = tmp / "nginx.conf"
        self.conf.write_text(CONFIG.format(tmp=tmp, servers=servers))
        self.proc: subprocess.Popen | None = None

    def start(self, binary: str) -> "Nginx":
        self.proc = subprocess.Popen(
            [binary, "-c", str(self.conf), "-p", str(self.tmp), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=open(self.tmp / "stderr.log", "wb"))
        deadline = time.monotonic() + scaled(10)
        if not all(wait_for_port("127.0.0.1", port, deadline) for port in self.ports):
            self.stop()
            raise RuntimeError(f"nginx did not start: {self.errors()}")
        return self

    def errors(self) -> str:
        return "".join((self.tmp / name).read_text(errors="replace")
                       for name in ("stderr.log", "error.log") if (self.tmp / name).exists())

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: workers finish, then exit
            try:
                self.proc.wait(timeout=scaled(5))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def hold(port: int, *, ping_every: float | None, answer_probes: bool, limit: float):
    """Connect through nginx and stay until closed or ``limit`` s; return (lasted, code, stats)."""
    stats = {"pings": 0, "pongs": 0, "probes": 0}
    async with connect(f"ws://127.0.0.1:{port}/ws/rooms/proxy/", origin=f"http://127.0.0.1:{port}",
                       ping_interval=None) as ws:
        hello = json.loads(await ws.recv())
        opened = time.monotonic()

        async def pinger():
            while True:
                await asyncio.sleep(ping_every)
                stats["pings"] += 1
                await ws.send(json.dumps({"type": "ping", "id": stats["pings"]}))

        task = asyncio.create_task(pinger()) if ping_every else None
        try:
            async with asyncio.timeout(limit):
                async for raw in ws:
                    message = json.loads(raw)
                    if message["type"] == "pong":
                        stats["pongs"] += 1
                    elif message["type"] == "ping":
                        stats["probes"] += 1
                        if answer_probes:
                            await ws.send(json.dumps({"type": "pong", "id": message["id"]}))
        except (ConnectionClosed, TimeoutError):
            pass
        finally:
            if task:
                task.cancel()
        stats["interval_ms"] = hello["interval_ms"]
        return time.monotonic() - opened, ws.close_code, stats


@pytest.fixture
def nginx():
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (scripts/system-deps.sh installs it as root)")
    return binary


async def test_heartbeat_at_75_percent_of_proxy_read_timeout_keeps_connections(
        nginx, migrated_db, tmp_path):
    def daphne(name, interval):
        # The defaults' proportions (25 s / 10 s): a probe goes out after the interval
        # plus a random phase of up to timeout / 4, plus at most one tick.
        env = server_env(migrated_db, HEARTBEAT_INTERVAL=interval,
                         HEARTBEAT_TIMEOUT=str(RULE_TIMEOUT), HEARTBEAT_TICK=str(TICK))
        return ServerProcess(tmp_path, env, name=name).start()

    rule = daphne("rule", str(RULE_INTERVAL))
    slow = daphne("slow", str(SLOW_INTERVAL))
    off = daphne("off", "none")
    proxy = Nginx(tmp_path, [rule.port, slow.port, off.port], PROXY_TIMEOUT).start(nginx)
    rule_port, slow_port, off_port = proxy.ports
    try:
        pinging, passive, above, silent = await asyncio.gather(
            # The bundled client's way: a ping every interval.
            hold(rule_port, ping_every=RULE_INTERVAL, answer_probes=True, limit=IDLE),
            # A client that only answers the server's probes.
            hold(rule_port, ping_every=None, answer_probes=True, limit=IDLE),
            hold(slow_port, ping_every=None, answer_probes=True, limit=IDLE),
            hold(off_port, ping_every=None, answer_probes=False, limit=IDLE),
        )
        print(f"\n[nginx proxy_read_timeout {PROXY_TIMEOUT} s] "
              f"interval {RULE_INTERVAL} s, client pings: open {pinging[0]:.2f} s "
              f"(code {pinging[1]}, {pinging[2]['pongs']} pongs); "
              f"interval {RULE_INTERVAL} s, server probes: open {passive[0]:.2f} s "
              f"(code {passive[1]}, {passive[2]['probes']} probes); "
              f"interval {SLOW_INTERVAL} s: cut after {above[0]:.2f} s (code {above[1]}); "
              f"heartbeat off: cut after {silent[0]:.2f} s (code {silent[1]})")
        # 75 % of the proxy timeout: alive after four timeouts' worth of idle.
        assert pinging[1] is None and pinging[0] >= IDLE - 0.1, pinging
        assert passive[1] is None and passive[0] >= IDLE - 0.1, passive
        assert pinging[2]["pongs"] >= 4 and passive[2]["probes"] >= 4
        # Above the proxy timeout the proxy wins, and with no heartbeat at all, too.
        assert above[1] is not None and PROXY_TIMEOUT - 0.2 <= above[0] <= PROXY_TIMEOUT + SLACK
        assert silent[1] is not None and PROXY_TIMEOUT - 0.2 <= silent[0] <= PROXY_TIMEOUT + SLACK
        assert silent[2]["interval_ms"] is None
        assert "upstream timed out" in proxy.errors()
        for server in (rule, slow, off):
            assert "Traceback" not in server.log()
    finally:
        proxy.stop()
        for server in (rule, slow, off):
            server.stop()
