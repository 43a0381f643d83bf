"""Shared fixtures. Under CI (CI=true) a skipped test is a failed test.

Time: every test that moves time uses the one ``FakeClock`` (the testing kit's,
heartbeat_app.testing: monotonic and wall clock moving together), through a runtime
installed on the test's loop.
"""

import os
import socket
import subprocess
import sys

import pytest

from heartbeat_app.runtime import Runtime, install
from heartbeat_app.testing import FakeClock


@pytest.fixture
def fake_clock() -> FakeClock:
    """A fresh FakeClock."""
    return FakeClock()


@pytest.fixture
async def make_runtime(fake_clock):
    """Install a runtime on the test's loop: ``make_runtime(autostart=...)``.

    The fake clock by default, ``rng`` always 0 (no random phase); the services
    named in ``autostart`` run their own background tick, the others are stepped
    by the test. The runtime is stopped and removed afterwards.
    """
    made = []

    def make(clock=None, *, autostart=False, rng=lambda: 0.0) -> Runtime:
        runtime = Runtime(clock=clock or fake_clock, rng=rng, autostart=autostart)
        runtime.fake_clock = clock or fake_clock
        install(runtime)
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        await runtime.stop()
    install(None)

STRICT = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    # Not imported here: tests.servers sets the run's SECRET_KEY once Django is set up.
    servers = sys.modules.get("tests.servers")
    if servers is not None and report.failed and report.when == "call":
        _attach_server_logs(report, servers)
    if STRICT and report.skipped and not hasattr(report, "wasxfail"):
        # CI must run everything: Redis, end-to-end and browser tests included.
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped under CI, which must run every test: {reason}"


def _attach_server_logs(report, servers) -> None:
    """Add the end of every server log of a failed test to its report."""
    for server in servers.STARTED:
        lines = server.log().splitlines()[-servers.LOG_TAIL_LINES:]
        if lines:
            report.sections.append((f"log of {server.log_path.name} (last {len(lines)} lines)",
                                    "\n".join(lines)))


def redis_available(host: str = REDIS_HOST, port: int = REDIS_PORT) -> bool:
    """Whether a Redis server answers PING at host:port."""
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url():
    """The URL of the Redis server the suite uses (database 15)."""
    if not redis_available():
        pytest.skip(f"no Redis server on {REDIS_HOST}:{REDIS_PORT} (run scripts/ensure-redis.sh)")
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/15"


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory):
    """A migrated SQLite database file for the end-to-end server processes."""
    from tests.servers import ROOT, server_env

    path = tmp_path_factory.mktemp("db") / "e2e.sqlite3"
    url = f"sqlite:///{path}"
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT, check=True, timeout=120, env={**os.environ, **server_env(url)},
    )
    return url


ADMIN_USER, ADMIN_PASSWORD = "ops", "ops-pass"


@pytest.fixture
def admin_db(migrated_db):
    """The e2e database, with a superuser ``ops`` (password ``ops-pass``)."""
    from tests.servers import ROOT, server_env

    code = ("from django.contrib.auth.models import User;"
            f"User.objects.filter(username='{ADMIN_USER}').exists() or "
            f"User.objects.create_superuser('{ADMIN_USER}', 'ops@example.com', "
            f"'{ADMIN_PASSWORD}')")
    subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT,
                   env={**os.environ, **server_env(migrated_db)}, check=True, timeout=60)
    return migrated_db


@pytest.fixture
def shots(tmp_path):
    """Where screenshots go: docs/img/ with HEARTBEAT_UPDATE_SCREENSHOTS=1, else a tmp dir.

    The docs' pictures are refreshed on purpose, never as a side effect of a test run.
    """
    from tests.servers import ROOT

    if os.environ.get("HEARTBEAT_UPDATE_SCREENSHOTS") == "1":
        path = ROOT / "docs" / "img"
    else:
        path = tmp_path / "img"
    path.mkdir(parents=True, exist_ok=True)
    return path
