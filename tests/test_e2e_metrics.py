"""End to end metrics: a real Prometheus scraping two Daphne processes, the view under
uvicorn, and uvicorn --workers 2 in prometheus_client's multiprocess mode.

Everything listens on loopback; every wait is bounded. HEARTBEAT_UPDATE_SCREENSHOTS=1
writes the dashboard's picture to docs/dashboards/ (HEARTBEAT_METRICS_SOAK=<seconds>
adds that much churn first, for a picture worth looking at).
"""

from __future__ import annotations

import asyncio
import http.client
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.servers import (
    ROOT,
    START_TIMEOUT,
    ServerProcess,
    free_port,
    scaled,
    server_env,
    stop_process,
)

pytestmark = [pytest.mark.e2e]

SCRAPE_INTERVAL = 1.0
# Each value must reach Prometheus: the server's tick, a scrape, a query.
SEEN_WITHIN = scaled(15.0)
# Labels a heartbeat series may carry in Prometheus: its own bounded ones and the target's.
ALLOWED_LABELS = {"__name__", "instance", "job", "reason", "op", "why", "le"}
DASHBOARD_DIR = ROOT / "docs" / "dashboards"


def load_renderer():
    spec = importlib.util.spec_from_file_location("dashboard_render", DASHBOARD_DIR / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# A real Prometheus --------------------------------------------------------------------


class Prometheus:
    """A Prometheus server on a free loopback port, its storage in a tmp dir."""

    def __init__(self, binary: str, workdir: Path, targets: list[str]):
        self.binary = binary
        self.workdir = workdir
        self.targets = targets
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "prometheus.log"

    def start(self) -> Prometheus:
        config = self.workdir / "prometheus.yml"
        config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": f"{SCRAPE_INTERVAL:g}s", "scrape_timeout": "900ms",
                       "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "heartbeat", "metrics_path": "/metrics",
                                "static_configs": [{"targets": self.targets}]}],
        }))
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={config}",
             f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"prometheus did not start:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def api(self, path: str, **params) -> dict:
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=scaled(5)) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """An instant query's results: [{"metric": {...}, "value": [t, "v"]}, ...]."""
        return self.api("query", query=expr)["result"]

    def value(self, expr: str) -> float | None:
        """The value of a query that has one result (None if it has none)."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    async def until(self, expr: str, predicate, timeout: float = SEEN_WITHIN):
        """Poll ``expr`` until ``predicate(value)``; the last value either way."""
        deadline = time.monotonic() + timeout
        value = self.value(expr)
        while not predicate(value) and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            value = self.value(expr)
        return value


@pytest.fixture(scope="session")
def prometheus_binary():
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("no prometheus binary: apt-get install prometheus (scripts/system-deps.sh)")
    return binary


@pytest.fixture
def start_prometheus(prometheus_binary, tmp_path):
    made = []

    def start(targets: list[str]) -> Prometheus:
        workdir = tmp_path / f"prometheus-{len(made)}"
        workdir.mkdir()
        server = Prometheus(prometheus_binary, workdir, targets)
        made.append(server)
        return server.start()

    yield start
    for server in made:
        server.stop()


# Clients ------------------------------------------------------------------------------


class Client:
    """A WebSocket session of the demo: pings, answers probes, or goes silent (a zombie)."""

    def __init__(self, server: ServerProcess, room: str, *, pings: bool = True,
                 answers: bool = True):
        self.url = f"{server.url}/ws/rooms/{room}/"
        self.origin = server.origin
        self.pings = pings
        self.answers = answers
        self.closed: int | None = None
        self.ws = None
        self.task = None

    async def open(self) -> Client:
        self.ws = await connect(self.url, origin=self.origin, ping_interval=None,
                                open_timeout=scaled(10))
        hello = json.loads(await self.ws.recv())
        assert hello["type"] == "hello", hello
        self.task = asyncio.create_task(self._run())
        return self

    def silence(self) -> None:
        """Stop pinging and answering: from now on this client is a zombie."""
        self.pings = self.answers = False

    async def _run(self) -> None:
        async def pinger():
            n = 0
            while True:
                await asyncio.sleep(0.2)
                if self.pings:
                    n += 1
                    await self.ws.send(json.dumps({"type": "ping", "id": n}))

        task = asyncio.create_task(pinger())
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                if message["type"] == "ping" and self.answers:
                    await self.ws.send(json.dumps({"type": "pong", "id": message["id"]}))
        except ConnectionClosed:
            pass
        finally:
            task.cancel()
            self.closed = self.ws.close_code

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.task is not None:
            await asyncio.wait([self.task], timeout=scaled(5))


async def close_all(clients: list[Client]) -> None:
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


@pytest.fixture
def room():
    """A room of this test only: other runs may share the Redis and its layer's groups."""
    return f"metrics-{os.urandom(4).hex()}"


# Scraping a server directly -------------------------------------------------------------


def scrape(server: ServerProcess, source: str = "127.0.0.1") -> tuple[int, str]:
    """GET /metrics from a loopback ``source`` address; (status, body)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=scaled(5),
                                      source_address=(source, 0))
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def values(text: str) -> dict[tuple[str, tuple], float]:
    """Samples of an exposition: (name, sorted labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def v(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


# A real Prometheus, two Daphne processes on Redis ----------------------------------------


@pytest.mark.redis
async def test_prometheus_reads_sessions_zombies_and_closes_of_two_daphne_processes(
        migrated_db, redis_url, tmp_path, start_prometheus, room):
    env = server_env(migrated_db, REDIS_URL=redis_url,
                     PRESENCE_KEY_PREFIX=f"hbmetrics-{os.urandom(4).hex()}")
    a = ServerProcess(tmp_path, env, name="A").start()
    b = ServerProcess(tmp_path, env, name="B").start()
    clients: list[Client] = []
    started = time.time()
    try:
        ia, ib = f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"
        prom = start_prometheus([ia, ib])
        assert await prom.until("sum(up)", lambda x: x == 2) == 2, prom.query("up")

        # On A: one client that pings, one that only answers probes (its round trips are
        # measured). On B: one that pings, and one that will stop answering: a zombie.
        clients += [await Client(a, room).open(), await Client(a, room, pings=False).open(),
                    await Client(b, room).open()]
        zombie = await Client(b, room).open()
        clients.append(zombie)
        zombie.silence()

        on = {"A": f'instance="{ia}"', "B": f'instance="{ib}"'}
        assert await prom.until(f"heartbeat_zombies_total{{{on['B']}}}", lambda x: x == 1) == 1
        await asyncio.wait([zombie.task], timeout=scaled(5))
        assert zombie.closed == 4408
        assert await prom.until(f"heartbeat_sessions{{{on['B']}}}", lambda x: x == 1) == 1
        assert await prom.until(f"heartbeat_rtt_seconds_count{{{on['A']}}}",
                                lambda x: x and x >= 1) >= 1
        assert prom.value(f"heartbeat_sessions{{{on['A']}}}") == 2
        assert prom.value("sum(heartbeat_sessions)") == 3
        assert prom.value(f"heartbeat_sessions_opened_total{{{on['A']}}}") == 2
        assert prom.value(f"heartbeat_sessions_opened_total{{{on['B']}}}") == 2
        assert prom.value(f'heartbeat_sessions_closed_total{{{on["B"]},reason="timeout"}}') == 1
        assert prom.value(f'heartbeat_sessions_closed_total{{{on["A"]},reason="timeout"}}') == 0
        assert prom.value(f"heartbeat_zombies_total{{{on['A']}}}") == 0
        assert prom.value(f"heartbeat_probes_total{{{on['B']}}}") >= 1
        assert prom.value(f"heartbeat_pings_total{{{on['A']}}}") >= 1
        assert prom.value(f"heartbeat_presence_rooms{{{on['A']}}}") == 1
        assert prom.value("min(heartbeat_loop_lag_seconds_count)") > 0
        rtt = prom.value(f"heartbeat_rtt_seconds_sum{{{on['A']}}}"
                         f" / heartbeat_rtt_seconds_count{{{on['A']}}}")
        assert 0 < rtt < 0.5, rtt
        stored = prom.value(f'sum(heartbeat_presence_store_seconds_count{{{on["A"]}}})')
        assert stored >= 1  # the Redis store answered A's joins and refreshes
        print(f"\n[metrics] through Prometheus: mean probe round trip on A {rtt * 1000:.2f} ms,"
              f" {stored:g} store calls on A")

        if os.environ.get("HEARTBEAT_METRICS_SOAK"):
            await churn(a, b, room, clients, float(os.environ["HEARTBEAT_METRICS_SOAK"]))

        # A clean close counts as "closed", a zombie as "timeout": as each client saw it.
        await close_all([c for c in clients if c.closed is None])
        timeouts = sum(1 for c in clients if c.closed == 4408)
        closes = len(clients) - timeouts
        by_reason = 'sum(heartbeat_sessions_closed_total{{reason="{}"}})'
        assert await prom.until(by_reason.format("closed"), lambda x: x == closes) == closes
        assert prom.value(by_reason.format("timeout")) == timeouts
        assert prom.value("sum(heartbeat_zombies_total)") == timeouts
        assert prom.value("sum(heartbeat_sessions_opened_total)") == len(clients)
        assert await prom.until("sum(heartbeat_sessions)", lambda x: x == 0) == 0

        # Every series a heartbeat metric has in Prometheus: bounded labels only.
        series = prom.api("series", **{"match[]": '{__name__=~"heartbeat_.*"}'})
        assert series
        for labels in series:
            assert set(labels) <= ALLOWED_LABELS, labels

        # Every query of the dashboard runs, and the picture is drawn from them.
        renderer = load_renderer()
        dashboard = json.loads((DASHBOARD_DIR / "heartbeat.json").read_text())
        for _, targets in renderer.expressions(dashboard, rate_interval="10s"):
            for expr, _ in targets:
                prom.query(expr)  # raises on a query Prometheus refuses
        out_dir = (DASHBOARD_DIR if os.environ.get("HEARTBEAT_UPDATE_SCREENSHOTS") == "1"
                   else tmp_path)
        counts = renderer.render(prom.url, started, time.time(), out_dir / "heartbeat.png",
                                 step=1, rate_interval="10s")
        assert counts["Sessions open"] >= 1 and counts["Zombies per minute"] >= 1
        assert (out_dir / "heartbeat.png").stat().st_size > 10_000
    finally:
        await close_all(clients)
        a.stop()
        b.stop()


async def churn(a: ServerProcess, b: ServerProcess, room: str, clients: list[Client],
                seconds: float) -> None:
    """Sessions come and go for a while, a few of them zombies (for the docs' picture)."""
    rng = random.Random(14)
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
        server = rng.choice([a, b])
        clients.append(await Client(server, room, pings=rng.random() < 0.7).open())
        live = [c for c in clients if c.closed is None]
        if n % 3 == 0 and len(live) > 4:
            await rng.choice(live).close()
        if n % 7 == 0:
            rng.choice(live).silence()
        await asyncio.sleep(rng.uniform(0.5, 1.5))


# The view under Daphne and uvicorn ------------------------------------------------------


@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
async def test_the_view_serves_loopback_and_refuses_another_address(migrated_db, tmp_path,
                                                                    kind, room):
    server = ServerProcess(tmp_path, server_env(migrated_db), kind=kind).start()
    client = None
    try:
        client = await Client(server, room).open()
        status, body = await asyncio.to_thread(scrape, server)
        assert status == 200, body
        samples = values(body)
        assert v(samples, "heartbeat_sessions") == 1
        assert v(samples, "heartbeat_sessions_opened_total") == 1
        # The demo lets 127.0.0.1 and ::1 in; 127.0.0.2 is loopback too, but not allowed.
        status, body = await asyncio.to_thread(scrape, server, "127.0.0.2")
        assert status == 403
        assert "heartbeat_sessions" not in body
    finally:
        if client is not None:
            await client.close()
        server.stop()


# uvicorn --workers 2: prometheus_client's multiprocess mode ------------------------------


class Workers(ServerProcess):
    """uvicorn with several worker processes behind one port."""

    def __init__(self, *args, workers: int = 2, **kwargs):
        super().__init__(*args, kind="uvicorn", **kwargs)
        self.workers = workers

    def command(self) -> list[str]:
        return [*super().command(), "--workers", str(self.workers)]


def per_worker(path: Path, scratch: Path) -> dict[int, dict]:
    """Each worker's own samples, read from its files alone (pid -> samples)."""
    out = {}
    pids = {int(f.stem.rsplit("_", 1)[1]) for f in path.glob("*.db")}
    for pid in pids:
        alone = scratch / str(pid)
        alone.mkdir(parents=True, exist_ok=True)
        for f in path.glob(f"*_{pid}.db"):
            shutil.copy(f, alone / f.name)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, str(alone))
        out[pid] = values(generate_latest(registry).decode())
        shutil.rmtree(alone)
    return out


async def scrapes_agree(server: ServerProcess, expected: dict[str, float], times: int = 12,
                        timeout: float = SEEN_WITHIN) -> list[dict]:
    """Scrape until ``times`` scrapes in a row show ``expected``; return the last ones."""
    deadline = time.monotonic() + timeout
    run: list[dict] = []
    while len(run) < times and time.monotonic() < deadline:
        status, body = await asyncio.to_thread(scrape, server)
        assert status == 200, body
        samples = values(body)
        if all(v(samples, name) == want for name, want in expected.items()):
            run.append(samples)
        else:
            run = []
            await asyncio.sleep(0.1)
    assert len(run) == times, (
        f"expected {expected}, last scrape: "
        f"{ {name: v(samples, name) for name in expected} }")
    return run


async def test_uvicorn_workers_2_add_up_in_multiprocess_mode(migrated_db, tmp_path, room):
    path = tmp_path / "multiproc"
    path.mkdir()
    env = server_env(migrated_db, PROMETHEUS_MULTIPROC_DIR=str(path))
    server = Workers(tmp_path, env).start()
    clients: list[Client] = []
    try:
        # Sessions until both workers have some: the kernel hands connections out.
        for _ in range(8):
            clients += [await Client(server, room).open() for _ in range(4)]
            await asyncio.sleep(scaled(1.5))  # a mirror copy
            opened = {pid: v(s, "heartbeat_sessions_opened_total")
                      for pid, s in per_worker(path, tmp_path / "alone").items()}
            if sum(1 for n in opened.values() if n) >= 2:
                break
        busy = {pid: n for pid, n in opened.items() if n}
        assert len(busy) == 2, opened
        n = len(clients)
        print(f"\n[metrics] uvicorn --workers 2: sessions per worker {sorted(busy.values())}")

        # Whichever worker answers, a scrape shows both workers' sessions.
        await scrapes_agree(server, {"heartbeat_sessions": n,
                                     "heartbeat_sessions_opened_total": n})

        # kill -9 of one worker: its sessions leave the gauge, its counts stay.
        victim, lost = next(iter(busy.items()))
        os.kill(victim, signal.SIGKILL)
        await scrapes_agree(server, {"heartbeat_sessions": n - lost,
                                     "heartbeat_sessions_opened_total": n})

        # The others go silent: zombies, counted by the surviving worker.
        for client in clients:
            client.silence()
        await scrapes_agree(server, {
            "heartbeat_sessions": 0, "heartbeat_sessions_opened_total": n,
            "heartbeat_zombies_total": n - lost,
        })
        status, body = await asyncio.to_thread(scrape, server)
        timeouts = v(values(body), "heartbeat_sessions_closed_total", reason="timeout")
        assert timeouts == n - lost
    finally:
        await close_all(clients)
        server.stop()
