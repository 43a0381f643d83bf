"""Real server processes for the end-to-end tests and the benchmarks, and the tests' time unit.

Daphne or uvicorn on a free loopback port, with its log in a file; ``bench/benchlib.py``
builds its pinned servers on the same class. Every real wait of the end-to-end, fault and
browser tests (timeouts, deadlines, polling limits) goes through ``scaled()``: set
``HEARTBEAT_TEST_TIME_FACTOR=3`` on a slow or busy machine and they all wait three times
as long. The heartbeat settings given to the servers are behaviour under test and are
never scaled.
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _time_factor() -> float:
    raw = os.environ.get("HEARTBEAT_TEST_TIME_FACTOR", "1")
    try:
        factor = float(raw)
    except ValueError:
        factor = math.nan
    if not (math.isfinite(factor) and factor > 0):
        raise RuntimeError(
            f"HEARTBEAT_TEST_TIME_FACTOR must be a positive number such as 1 or 2.5, "
            f"not {raw!r}."
        )
    return factor


#: How much longer than nominal the tests wait, from HEARTBEAT_TEST_TIME_FACTOR (default 1).
TIME_FACTOR = _time_factor()


def scaled(seconds: float) -> float:
    """A wait of ``seconds`` on a nominal machine, scaled by HEARTBEAT_TEST_TIME_FACTOR.

    The one unit of real waiting, as the websockets test suite scales its ``MS``.
    """
    return seconds * TIME_FACTOR


async def until(predicate, timeout: float, step: float = 0.02) -> bool:
    """Poll ``predicate()`` until it holds or ``timeout`` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(step)
    return bool(predicate())


def _run_secret_key() -> str:
    """DJANGO_SECRET_KEY if set, else a random key made once per run.

    The servers run the demo with DEBUG off, where it refuses its public key. The tests
    sign anonymous tokens in this process for the servers to accept, so a Django set up
    here (pytest's) signs with the same key.
    """
    key = os.environ.get("DJANGO_SECRET_KEY")
    if key:
        return key  # the test settings read it too
    key = secrets.token_urlsafe(50)
    from django.conf import settings

    if settings.configured:
        settings.SECRET_KEY = key
    return key


#: SECRET_KEY of every server this run starts (and of this process's Django).
SECRET_KEY = _run_secret_key()


START_TIMEOUT = scaled(30.0)  # seconds until a started server must listen
STOP_GRACE = scaled(10.0)  # seconds between SIGTERM and SIGKILL


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, deadline: float) -> bool:
    """Whether ``host:port`` accepts a connection before ``deadline`` (time.monotonic())."""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def stop_process(proc: subprocess.Popen, grace: float = STOP_GRACE) -> None:
    """Terminate a process, kill it if it lingers past ``grace`` seconds, reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait(timeout=grace)


#: The servers started and not stopped yet: a failing test's report shows the end of
#: their logs (tests/conftest.py), so a failure in CI can be read without a rerun.
STARTED: list[ServerProcess] = []
LOG_TAIL_LINES = 40


class ServerProcess:
    """One ASGI server process serving ``app`` on a loopback port, with its log in a file.

    Subclasses change what runs by overriding ``command()`` (and ``app``); ``start()``
    takes extra ``subprocess.Popen`` arguments. A context manager: ``with`` starts and stops.
    """

    app = "project.asgi:application"
    stop_grace = STOP_GRACE

    def __init__(self, log_dir: Path, env: dict[str, str], *, kind: str = "daphne",
                 name: str = "server", host: str = "127.0.0.1", port: int | None = None):
        self.kind = kind
        self.host = host
        self.port = port or free_port(host)
        self.log_path = Path(log_dir) / f"{name}-{self.port}.log"
        self.env = {**os.environ, **env}
        self.env.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
        # DEBUG off, as in production, with a key of this run (the demo's is public).
        self.env.setdefault("DJANGO_DEBUG", "0")
        self.env.setdefault("DJANGO_SECRET_KEY", SECRET_KEY)
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        """The server's command line."""
        if self.kind == "daphne":
            return [sys.executable, "-m", "daphne", "-b", self.host, "-p", str(self.port),
                    self.app]
        if self.kind == "uvicorn":
            return [sys.executable, "-m", "uvicorn", self.app, "--host", self.host,
                    "--port", str(self.port), "--log-level", "warning"]
        raise ValueError(f"unknown server kind {self.kind!r}")

    def start(self, **popen: Any) -> ServerProcess:
        """Start the process and wait until it listens; ``popen`` goes to subprocess.Popen."""
        STARTED.append(self)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.command(), cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            **popen,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        if not wait_for_port(self.host, self.port, deadline) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError(f"{self.kind} did not start:\n{self.log()}")
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, needle: str, timeout: float) -> float | None:
        """Poll the log for ``needle``; return the monotonic time it was seen, or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log():
                return time.monotonic()
            time.sleep(0.01)
        return None

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=scaled(10))

    def stop(self) -> None:
        if self in STARTED:
            STARTED.remove(self)
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)
        stop_process(self.proc, grace=self.stop_grace)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def server_env(database_url: str, **overrides: str) -> dict[str, str]:
    """Environment of a demo server with shrunk heartbeat settings, for the e2e tests."""
    env = {
        "DATABASE_URL": database_url,
        "HEARTBEAT_INTERVAL": "1.0",
        "HEARTBEAT_TIMEOUT": "1.0",
        "HEARTBEAT_TICK": "0.1",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "REDIS_URL": "",
        # The closed-loop round-trip measurements would trip the flood limit.
        "HEARTBEAT_RATE_LIMIT": "off",
        "HEARTBEAT_MESSAGE_RATE": "off",
        # pytest-django exports the test settings; the servers run the demo's own.
        "DJANGO_SETTINGS_MODULE": "project.settings",
        # DEBUG off unless the developer's environment says otherwise, so with a key: the
        # demo refuses its public one. Tokens signed by the tests are valid on the servers.
        "DJANGO_DEBUG": os.environ.get("DJANGO_DEBUG", "0"),
        "DJANGO_SECRET_KEY": SECRET_KEY,
    }
    env.update(overrides)
    return env
