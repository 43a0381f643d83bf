"""Shared helpers of the benchmarks: servers pinned to a CPU, client processes, results, docs.

Method (the same as the measured limits the targets come from): the server under test
runs pinned to CPU 0 (``taskset -c 0``), load clients to CPU 1; server CPU is read from
/proc (psutil user+sys) over the measurement window; ratios are measured side by side
in one run, because the machine is shared and noisy.

The benchmarks run as modules from the repository root (``python -m bench.pingpong``),
so ``bench`` and ``tests`` import without touching ``sys.path``; the processes they
start run the same way, with the repository as their working directory.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

from tests.servers import ServerProcess

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
DOC = ROOT / "docs" / "benchmarks.md"
IMG = ROOT / "docs" / "img"
PY = sys.executable
HOST = "127.0.0.1"
REDIS_URL = "redis://127.0.0.1:6379/12"  # database 12; every key starts with "hbbench"
SERVER_CPU, CLIENT_CPU = 0, 1
NOFILE = 20000


def _raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(NOFILE, hard), hard))


class Workdir:
    """A temporary folder with a migrated SQLite database for the servers of one run."""

    def __init__(self, name: str):
        self.path = Path(tempfile.mkdtemp(prefix=f"hbbench-{name}-"))
        self.database_url = f"sqlite:///{self.path / 'db.sqlite3'}"
        subprocess.run([PY, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT,
                       check=True, timeout=300, env=self.env({}))

    def env(self, extra: dict[str, str]) -> dict[str, str]:
        # The servers import the benchmark project as "benchproj", from bench/.
        env = {**os.environ,
               "PYTHONPATH": os.pathsep.join([str(ROOT), str(BENCH)]),
               "DJANGO_SETTINGS_MODULE": "benchproj.settings",
               "DATABASE_URL": self.database_url,
               "ALLOWED_HOSTS": "127.0.0.1,localhost",
               "PYTHONUNBUFFERED": "1",
               "REDIS_URL": "",
               "HEARTBEAT_RATE_LIMIT": "off",
               "PRESENCE_KEY_PREFIX": "hbbench:presence",
               "BENCH_LAYER_PREFIX": "hbbench:asgi"}
        env.update(extra)
        return env


class Server(ServerProcess):
    """A benchmark server (daphne, uvicorn, or the pure websockets server), pinned to a CPU.

    The tests' ServerProcess, serving ``bench/benchproj`` from a Workdir, with a listen
    backlog a connect storm does not overflow, the open-file limit raised, and its CPU
    time and memory read from /proc.
    """

    app = "benchproj.asgi:application"
    stop_grace = 15.0

    def __init__(self, work: Workdir, kind: str, env: dict[str, str] | None = None, *,
                 name: str = "server", cpu: int | None = SERVER_CPU, port: int | None = None):
        super().__init__(work.path, work.env(env or {}), kind=kind, name=name, host=HOST,
                         port=port)
        self.work, self.cpu = work, cpu
        self.ps: psutil.Process | None = None

    def command(self) -> list[str]:
        if self.kind == "daphne":
            cmd = [PY, "-m", "daphne", "-v", "0", "-e",
                   f"tcp:port={self.port}:interface={self.host}:backlog=2048", self.app]
        elif self.kind == "uvicorn":
            cmd = [PY, "-m", "uvicorn", self.app, "--host", self.host, "--port",
                   str(self.port), "--backlog", "2048", "--log-level", "warning"]
        elif self.kind == "wslib":
            cmd = [PY, "-m", "bench.wsserver", self.host, str(self.port)]
        else:
            raise ValueError(self.kind)
        if self.cpu is not None:
            cmd = ["taskset", "-c", str(self.cpu), *cmd]
        return cmd

    def start(self) -> Server:
        super().start(preexec_fn=_raise_nofile)
        self.ps = psutil.Process(self.proc.pid)
        return self

    def cpu_seconds(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def rss(self) -> int:
        return self.ps.memory_info().rss


def client_command(module: str, *args, cpu: int | None = CLIENT_CPU) -> list[str]:
    """The command line of ``python -m bench.<module> args...``, pinned to ``cpu``."""
    cmd = [PY, "-m", f"bench.{module}", *map(str, args)]
    return ["taskset", "-c", str(cpu), *cmd] if cpu is not None else cmd


def spawn_client(module: str, *args, cpu: int | None = CLIENT_CPU, **kw) -> subprocess.Popen:
    """A client process that reads commands on stdin and writes JSON lines on stdout."""
    return subprocess.Popen(client_command(module, *args, cpu=cpu), cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            bufsize=1, preexec_fn=_raise_nofile, **kw)


def read_json_line(proc: subprocess.Popen) -> dict:
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"client exited with {proc.wait()}")
    return json.loads(line)


def pct(values, p: float) -> float | None:
    """The p-th percentile (nearest rank) of values, or None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def median(values):
    """The median (the mean of the middle two for an even count), or None when empty."""
    import statistics

    return statistics.median(values) if values else None


# Redis ------------------------------------------------------------------------

def redis_client():
    import redis

    return redis.Redis.from_url(REDIS_URL)


def redis_cleanup() -> int:
    """Delete every key this benchmark suite writes (prefix hbbench, database 12)."""
    r = redis_client()
    keys = list(r.scan_iter(match="hbbench*", count=1000))
    for i in range(0, len(keys), 1000):
        r.delete(*keys[i:i + 1000])
    r.close()
    return len(keys)


# Facts, results, docs, plots ---------------------------------------------------

def machine() -> dict:
    """What the figures were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for dist in ("Django", "channels", "channels-redis", "daphne", "uvicorn", "websockets",
                 "redis", "Twisted"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        versions["Redis server"] = redis_client().info("server")["redis_version"]
    except Exception:
        pass
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu, "cpus": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(), "python": platform.python_version(),
        "versions": versions, "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def machine_line(m: dict) -> str:
    v = ", ".join(f"{k} {x}" for k, x in m["versions"].items())
    return (f"Measured {m['date']} on {m['cpus']} × {m['cpu']}, {m['ram_gib']} GiB RAM, "
            f"Linux {m['kernel']}, CPython {m['python']}; {v}. Load average at the start: "
            f"{' / '.join(map(str, m['loadavg']))} (the machine is shared: other work ran "
            f"beside these runs).")


def head_commit() -> str:
    """The commit the checkout is at (short), the code a result was measured on."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True).stdout.strip() or "?"


def commit_line(data: dict) -> str:
    """``Commit `abc1234`. `` for a section, if its results name their commit."""
    return f"Commit `{data['commit']}`. " if data.get("commit") else ""


def save_results(name: str, data: dict) -> Path:
    """Write a benchmark's results; those that do not name their commit get HEAD's."""
    data.setdefault("commit", head_commit())
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(scrub(json.dumps(data, indent=1, sort_keys=False)) + "\n")
    return path


def scrub(text: str) -> str:
    """Results name files relative to the checkout and the interpreter, not this machine."""
    text = text.replace(str(ROOT) + "/", "")
    return text.replace(sys.prefix + "/", "<venv>/").replace(sys.base_prefix + "/", "<python>/")


def update_doc(name: str, body: str) -> None:
    """Replace the section between this benchmark's markers in docs/benchmarks.md."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    block = f"{start}\n{body.strip()}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)


def plot_path(name: str) -> Path:
    IMG.mkdir(parents=True, exist_ok=True)
    return IMG / f"bench-{name}.png"


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "font.size": 9})
    return plt


def fmt(x, digits: int = 0) -> str:
    if x is None:
        return "–"
    if digits == 0:
        return f"{x:,.0f}"
    return f"{x:,.{digits}f}"


class LoadClient:
    """A bench/loadclient.py process, driven line by line."""

    def __init__(self, cpu: int | None = CLIENT_CPU, **cfg):
        self.proc = spawn_client("loadclient", json.dumps(cfg), cpu=cpu)

    def cmd(self, line: str) -> dict:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return read_json_line(self.proc)

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def read(self) -> dict:
        return read_json_line(self.proc)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=20)
            except Exception:
                self.proc.kill()
                self.proc.wait()


def connect_all(clients: list[LoadClient]) -> list[dict]:
    """Send connect to every client process at once and gather the answers."""
    for c in clients:
        c.send("connect")
    return [c.read() for c in clients]
