"""docs/integration.md, run: a fresh project built from the page's own blocks.

The blocks are read from the Markdown, never copied here. A fenced block whose first line
names a file (``# mysite/asgi.py``, ``{# chat/templates/chat/room.html #}``) is written to that
path as it is, first line included. A shell block whose first line is a label
(``# create the project``, ``# run under Daphne``) is run as a small shell would:
``export``, ``cd`` and ``VAR=value command`` are understood, ``pip`` lines are never run
(nothing is installed: the suite's virtualenv has every package, and the repository is put on
``PYTHONPATH`` in place of ``pip install``). The last command of a ``run`` block is the
server; the test swaps its port 8000 for a free one, and the page's example host and Redis
for the loopback and a database of its own (SUBSTITUTIONS).

Each server must give a real ``websockets`` client ``hello`` and ``presence_state``, show a
second client's join and pass a chat message, and serve ``heartbeat.js`` as JavaScript:
under ``runserver``, Daphne and uvicorn; with two Daphne processes sharing Redis; and with
``DJANGO_DEBUG=0`` behind the page's own nginx site file. One browser test opens the page in
headless Chromium and waits for its member list.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.conftest import redis_available
from tests.servers import ROOT, free_port, stop_process, wait_for_port

pytestmark = pytest.mark.e2e

DOC = ROOT / "docs" / "integration.md"
BIN = Path(sys.executable).parent  # the suite's virtualenv: daphne, uvicorn, django-admin
# Database 14 of the suite's Redis is this test's alone; it is emptied before and after.
REDIS_URL = "redis://127.0.0.1:6379/14"
START_TIMEOUT = 30.0
WAIT = 10.0  # seconds any one frame or page may take
JAVASCRIPT = {"text/javascript", "application/javascript"}


# Reading the page ------------------------------------------------------------------------


@dataclass
class Block:
    lang: str
    label: str  # the first line's comment, without its markers ("" when there is none)
    text: str


FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
LABEL = re.compile(r"^(?:#\s*(.+?)|\{#\s*(.+?)\s*#\})\s*$")


def blocks() -> list[Block]:
    """Every fenced block of docs/integration.md, in order."""
    found = []
    for match in FENCE.finditer(DOC.read_text()):
        text = match.group(2)
        label = LABEL.match(text.split("\n", 1)[0])
        found.append(Block(match.group(1), (label.group(1) or label.group(2)) if label else "",
                           text))
    return found


def block(label: str) -> Block:
    (found,) = [b for b in blocks() if b.label == label]
    return found


def files() -> dict[str, str]:
    """The project's files the page shows whole: relative path -> text."""
    return {b.label: b.text for b in blocks()
            if b.lang in {"python", "html"} and re.fullmatch(r"[\w./-]+\.\w+", b.label)
            and not b.label.startswith("/")}


def commands(label: str) -> list[tuple[str, dict[str, str], list[str]]]:
    """The commands of a shell block: ("cd" | "export" | "run", env, argv), pip left out."""
    found = []
    for line in block(label).text.splitlines():
        words = shlex.split(line, comments=True)
        if not words or words[0] == "pip":
            continue
        if words[0] == "export":
            found.append(("export", dict(w.split("=", 1) for w in words[1:]), []))
        elif words[0] == "cd":
            found.append(("cd", {}, words[1:]))
        else:
            env = {}
            while "=" in words[0] and re.match(r"^[A-Z_]+=", words[0]):
                name, value = words.pop(0).split("=", 1)
                env[name] = value
            found.append(("run", env, words))
    return found


# Running it ------------------------------------------------------------------------------


def base_env() -> dict[str, str]:
    """A clean environment, as a new user's shell would have: no settings of the suite's."""
    env = {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
           "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8",
           "PYTHONUNBUFFERED": "1",
           # In place of `pip install django-heartbeat-app`: the package from this checkout.
           "PYTHONPATH": str(ROOT)}
    return env


def substitutions(port: int) -> dict[str, str]:
    """What the test swaps in the page's commands: the port, the example host, the Redis."""
    return {"8000": str(port), "example.com": "127.0.0.1",
            "redis://127.0.0.1:6379/0": REDIS_URL}


def resolve(argv: list[str], subs: dict[str, str]) -> list[str]:
    argv = [_swap(word, subs) for word in argv]
    program = shutil.which(argv[0], path=str(BIN)) or shutil.which(argv[0])
    assert program, f"{argv[0]} is not installed"
    return [program, *argv[1:]]


def _swap(word: str, subs: dict[str, str]) -> str:
    for old, new in subs.items():
        word = word.replace(old, new)
    return word


class Site:
    """The project built from the page in a temporary directory."""

    def __init__(self, root: Path):
        self.root = root
        self.project = root  # `cd` in the page's blocks moves it

    def run_block(self, label: str, *, port: int | None = None, extra_env=None,
                  serve: bool = False, log: Path | None = None, extra_args=()):
        """Run a shell block; with ``serve``, start its last command and return the process."""
        env = {**base_env(), **(extra_env or {})}
        subs = substitutions(port or 8000)
        steps = commands(label)
        for n, (kind, assigned, argv) in enumerate(steps):
            assigned = {k: _swap(v, subs) for k, v in assigned.items()}
            if kind == "cd":
                self.project = self.project / argv[0]
                continue
            if kind == "export":
                env.update(assigned)
                continue
            argv = resolve(argv, subs) + (list(extra_args) if n == len(steps) - 1 else [])
            if serve and n == len(steps) - 1:
                out = open(log, "ab")
                proc = subprocess.Popen(argv, cwd=self.project, env={**env, **assigned},
                                        stdout=out, stderr=subprocess.STDOUT)
                out.close()
                deadline = time.monotonic() + START_TIMEOUT
                if not wait_for_port("127.0.0.1", port, deadline) or proc.poll() is not None:
                    stop_process(proc)
                    raise AssertionError(f"{label!r} did not start:\n{log.read_text()}")
                return proc
            done = subprocess.run(argv, cwd=self.project, env={**env, **assigned},
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, f"{label!r}: {argv}\n{done.stdout}{done.stderr}"
        return None


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Site:
    """startproject, startapp, every file of the page written, migrate: as a reader would."""
    built = Site(tmp_path_factory.mktemp("integration"))
    built.run_block("create the project")
    for relative, text in files().items():
        path = built.project / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    built.run_block("migrate")
    return built


class Server:
    """One server started from a block of the page, on a free port."""

    def __init__(self, site: Site, label: str, log_dir: Path, *, env=None, extra_args=()):
        self.port = free_port()
        self.log = log_dir / f"{label.replace(' ', '-')}-{self.port}.log"
        self.proc = site.run_block(label, port=self.port, extra_env=env, serve=True,
                                   log=self.log, extra_args=extra_args)
        self.http = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.proc)


def get(url: str) -> tuple[int, str, str]:
    """Status, content type (without parameters) and body of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=WAIT) as response:
            return (response.status, response.headers.get_content_type(),
                    response.read().decode("utf-8", "replace"))
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get_content_type(), error.read().decode("utf-8",
                                                                                   "replace")


def check_page_and_script(base: str, room: str) -> str:
    """The room's page renders {% heartbeat_script %}; the script is served as JavaScript."""
    status, kind, page = get(f"{base}/rooms/{room}/")
    assert (status, kind) == (200, "text/html"), page[:500]
    (src,) = re.findall(r'<script src="([^"]*heartbeat[^"]*\.js)"', page)
    status, kind, script = get(base + src)
    assert status == 200, (src, status, script[:300])
    assert kind in JAVASCRIPT, f"{src} served as {kind}"
    assert "HeartbeatSocket" in script
    return src


async def frame(ws, kind: str) -> dict:
    """The next frame of type ``kind`` (others are skipped), within WAIT seconds."""
    async with asyncio.timeout(WAIT):
        while True:
            message = json.loads(await ws.recv())
            if message.get("type") == kind:
                return message


async def check_presence(first: str, second: str, origin_first: str, origin_second: str,
                         room: str) -> None:
    """hello and presence_state for each client; the first sees the second join and chat."""
    path = f"/ws/rooms/{room}/"
    async with connect(first + path + "?tab=one", origin=origin_first,
                       open_timeout=WAIT) as one:
        hello = await frame(one, "hello")
        assert hello["session"] and hello["interval_ms"] == 25000
        state = await frame(one, "presence_state")
        assert state["room"] == room and state["count"] == 1, state
        (own,) = state["members"]
        async with connect(second + path + "?tab=two", origin=origin_second,
                           open_timeout=WAIT) as two:
            await frame(two, "hello")
            state = await frame(two, "presence_state")
            assert state["count"] == 2, state  # it sees the first client, wherever it is
            while True:  # the first client's own join may be broadcast first
                diff = await frame(one, "presence_diff")
                if set(diff["joins"]) - {own}:
                    break
            assert not diff["leaves"], diff
            await two.send(json.dumps({"type": "chat", "text": "hello from two"}))
            assert (await frame(one, "chat"))["text"] == "hello from two"


async def check_bad_room_is_refused_at_the_handshake(base: str, origin: str) -> None:
    """The page's route takes presence room names only: no hello, then a failure."""
    with pytest.raises(InvalidStatus):
        async with connect(base + "/ws/rooms/bad%20room!/", origin=origin, open_timeout=WAIT):
            pass


def room_name() -> str:
    return f"docs-{uuid.uuid4().hex[:8]}"


# The page's files ------------------------------------------------------------------------


def test_the_page_shows_every_file_of_the_project_whole():
    assert set(files()) == {
        "mysite/settings.py", "mysite/asgi.py", "mysite/urls.py", "chat/consumers.py",
        "chat/routing.py", "chat/views.py", "chat/templates/chat/room.html"}


def test_asgi_py_puts_admission_outermost_and_the_static_handler_on_http():
    asgi = files()["mysite/asgi.py"]
    websocket = asgi[asgi.index('"websocket":'):]
    order = [websocket.index(name) for name in (
        "AdmissionMiddleware(", "AllowedHostsOriginValidator(", "AuthMiddlewareStack(",
        "URLRouter(")]
    assert order == sorted(order)
    assert "ASGIStaticFilesHandler(django_asgi_app)" in asgi


def test_the_template_loads_the_tag_and_renders_the_script():
    template = files()["chat/templates/chat/room.html"]
    assert "{% load heartbeat %}" in template and "{% heartbeat_script %}" in template


def test_the_generated_project_passes_the_system_checks(site):
    done = subprocess.run([str(BIN / "python"), "manage.py", "check", "--fail-level",
                           "WARNING"], cwd=site.project, env=base_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# Servers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("label", ["run under Daphne", "run under uvicorn",
                                   "run in development"])
async def test_the_page_works_on_each_server(site, tmp_path, label):
    # runserver's autoreloader would leave a child process behind when stopped.
    extra = ["--noreload"] if label == "run in development" else []
    server = Server(site, label, tmp_path, extra_args=extra)
    try:
        check_page_and_script(server.http, "lobby")
        await check_presence(server.ws, server.ws, server.http, server.http, room_name())
        await check_bad_room_is_refused_at_the_handshake(server.ws, server.http)
    except BaseException:
        print(server.log.read_text())
        raise
    finally:
        server.stop()


@pytest.fixture
def clean_redis():
    if not redis_available():
        pytest.skip("no Redis server on 127.0.0.1:6379 (run scripts/ensure-redis.sh)")
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield
    client.flushdb()
    client.close()


async def test_two_processes_share_presence_through_redis(site, tmp_path, clean_redis):
    """Two Daphne processes with REDIS_URL: a client on each sees the other."""
    servers = [Server(site, "run with Redis", tmp_path) for _ in range(2)]
    try:
        check_page_and_script(servers[0].http, "lobby")
        await check_presence(servers[0].ws, servers[1].ws, servers[0].http, servers[1].http,
                             room_name())
    except BaseException:
        for server in servers:
            print(server.log.read_text())
        raise
    finally:
        for server in servers:
            server.stop()


# Production: DEBUG off, collectstatic, the page's nginx site file --------------------------

NGINX_MAIN = """
{user}
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 64; }}
http {{
    include /etc/nginx/mime.types;  # as Debian's and nginx's own nginx.conf do
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
{site}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None)


async def test_production_behind_the_pages_nginx_site(site, tmp_path):
    binary = nginx_binary()
    if binary is None or not Path("/etc/nginx/mime.types").exists():
        pytest.skip("nginx is not installed (scripts/system-deps.sh installs it)")
    server = Server(site, "production", tmp_path)
    listen = free_port()
    conf = block("/etc/nginx/sites-enabled/mysite").text
    conf = conf.replace("listen 80;", f"listen 127.0.0.1:{listen};")
    conf = conf.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}")
    conf = conf.replace("/srv/mysite/", f"{site.project}/")
    # As root, nginx's workers would run as nobody, who may not read the test's 0700 tmp dir.
    user = "user root;" if os.geteuid() == 0 else ""
    (tmp_path / "nginx.conf").write_text(NGINX_MAIN.format(user=user, tmp=tmp_path, site=conf))
    nginx = subprocess.Popen([binary, "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path),
                              "-e", str(tmp_path / "error.log"), "-g", "daemon off;"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for_port("127.0.0.1", listen, time.monotonic() + WAIT), (
            tmp_path / "error.log").read_text()
        assert (site.project / "staticfiles" / "heartbeat_app" / "heartbeat.js").exists()
        base = f"http://127.0.0.1:{listen}"
        src = check_page_and_script(base, "lobby")
        # Straight to Daphne with DEBUG off: no static files, Django's 404 page instead,
        # the text/html the browser refused to run.
        status, kind, _ = get(f"http://127.0.0.1:{server.port}{src}")
        assert (status, kind) == (404, "text/html")
        await check_presence(f"ws://127.0.0.1:{listen}", f"ws://127.0.0.1:{listen}", base, base,
                             room_name())
    except BaseException:
        print(server.log.read_text())
        raise
    finally:
        if nginx.poll() is None:
            nginx.send_signal(signal.SIGQUIT)
            try:
                nginx.wait(timeout=5)
            except subprocess.TimeoutExpired:
                nginx.kill()
                nginx.wait()
        server.stop()


# In a browser ----------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-dev-shm-usage", "--disable-quic"]


@pytest.mark.browser
def test_the_page_shows_presence_in_a_browser(site, tmp_path):
    """Two tabs of the page under Daphne: each lists both members, no script error."""
    from playwright.sync_api import sync_playwright

    server = Server(site, "run under Daphne", tmp_path)
    room = room_name()
    errors: list[str] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            pages = []
            for _ in range(2):
                page = browser.new_page()
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                # Chromium asks for /favicon.ico, which the page's project does not have.
                page.on("response", lambda r: errors.append(f"{r.status} {r.url}")
                        if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)
                page.goto(f"{server.http}/rooms/{room}/")
                pages.append(page)
            for page in pages:
                page.wait_for_function(
                    "document.querySelectorAll('#members li').length === 2",
                    timeout=WAIT * 1000)
                assert page.locator("#state").inner_text() == "open"
            browser.close()
        assert errors == []
    finally:
        server.stop()
