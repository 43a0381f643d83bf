"""The demo's presence the app drives, in headless Chromium against a real Daphne.

Two (or three) pages, each in a browser context of its own (its own cookies and storage):
a room switch over the same socket, "typing…", a status in the member list, a big room's
count, and a private room refused to a guest. The server runs the demo's settings with
PRESENCE_FULL_LIST_MAX = 2, so three pages make a big room. Figures are printed; run with
``-s`` to see them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import ADMIN_PASSWORD, ADMIN_USER
from tests.servers import ServerProcess, scaled, server_env

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-dev-shm-usage", "--disable-quic"]
VIEWPORT = {"width": 1100, "height": 640}
FULL_LIST_MAX = 2
SETTINGS = f"""\
from project.settings import *  # noqa: F403

PRESENCE_FULL_LIST_MAX = {FULL_LIST_MAX}
PRESENCE_COUNT_INTERVAL = 0.3
"""


def ms(seconds: float) -> float:
    """A Playwright timeout (ms) for a wait of ``seconds`` on a nominal machine."""
    return scaled(seconds) * 1000


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as p:
        # Playwright's own launch: these tests need no hidden pages (see test_browser.py).
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield chromium
        chromium.close()


def demo_server(migrated_db, tmp_path_factory, **env):
    where = tmp_path_factory.mktemp("browser-presence")
    (where / "presence_demo_settings.py").write_text(SETTINGS)
    proc = ServerProcess(where, server_env(
        migrated_db, PRESENCE_LEAVE_GRACE="0.5",
        DJANGO_SETTINGS_MODULE="presence_demo_settings", PYTHONPATH=str(where), **env)).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def server(migrated_db, tmp_path_factory):
    """The demo on Daphne, 1 s heartbeats, a short leave grace, big rooms above 2 members."""
    yield from demo_server(migrated_db, tmp_path_factory)


@pytest.fixture(scope="module")
def slow_fanout_server(migrated_db, tmp_path_factory):
    """The same with a signal budget of 4 frames a second: a pass waits, and the signals
    that come in meanwhile go out together (one ``broadcasts`` frame in a big room)."""
    yield from demo_server(migrated_db, tmp_path_factory, PRESENCE_SIGNAL_FANOUT="4")


class Page:
    """A demo page in a context of its own, with the frames of its WebSocket recorded."""

    def __init__(self, browser, url: str, *, login: str | None = None):
        self.context = browser.new_context(viewport=VIEWPORT)
        self.page = self.context.new_page()
        self.sockets = []
        self.received: list[dict] = []
        self.sent: list[dict] = []
        self.page.on("websocket", self._socket)
        if login:
            self.page.goto(f"{login}/admin/login/")
            self.page.fill("#id_username", ADMIN_USER)
            self.page.fill("#id_password", ADMIN_PASSWORD)
            self.page.click("input[type=submit]")
            self.page.wait_for_url(lambda u: "/admin/login/" not in u, timeout=ms(10))
        self.page.goto(url)
        self.wait("#hb-status[data-state=open]")

    def _socket(self, ws):
        self.sockets.append(ws)
        ws.on("framereceived", lambda payload: self.received.append(_json(payload)))
        ws.on("framesent", lambda payload: self.sent.append(_json(payload)))

    def wait(self, selector: str, timeout: float = 5, **kwargs):
        return self.page.wait_for_selector(selector, timeout=ms(timeout), **kwargs)

    def until(self, expression: str, timeout: float = 5, arg=None):
        return self.page.wait_for_function(expression, arg=arg, timeout=ms(timeout))

    @property
    def key(self) -> str:
        """This page's member key, from its own meta in the room shown."""
        return self.page.evaluate("""() => {
            const members = demo.sock.members(document.body.dataset.room);
            return Object.keys(members).find((k) =>
                members[k].metas.some((m) => m.session === demo.sock.session));
        }""")

    @property
    def session(self) -> str:
        return self.page.evaluate("demo.sock.session")

    def members(self) -> list[str]:
        return sorted(self.page.eval_on_selector_all(
            "#hb-presence li[data-member]", "els => els.map(e => e.dataset.member)"))

    def switch(self, room: str) -> None:
        self.page.fill("#hb-room-input", room)
        self.page.press("#hb-room-input", "Enter")

    def close(self) -> None:
        self.context.close()


def _json(payload):
    try:
        return json.loads(payload)
    except (TypeError, ValueError):
        return {}


@pytest.fixture
def pages(browser):
    """Open demo pages; each test's pages are closed after it."""
    opened = []

    def open_page(url, **kwargs):
        page = Page(browser, url, **kwargs)
        opened.append(page)
        return page

    yield open_page
    for page in opened:
        page.close()


def row(key: str) -> str:
    return f'#hb-presence li[data-member="{key}"]'


# Tests --------------------------------------------------------------------------------------------


def test_switching_rooms_keeps_the_socket_and_the_other_page_sees_the_move(server, pages):
    one = pages(f"{server.origin}/?room=switch-a")
    two = pages(f"{server.origin}/?room=switch-a")
    one.wait(row(two.key))
    two.wait(row(one.key))
    session = one.session

    moved_at = time.monotonic()
    one.switch("switch-b")
    one.wait('#hb-room[data-room="switch-b"]')
    two.wait(row(one.key), state="detached")
    gone = time.monotonic() - moved_at
    assert one.members() == [one.key], "alone in the new room"
    assert one.session == session and len(one.sockets) == 1, "the same socket, no reconnect"
    assert one.page.url.endswith("?room=switch-b"), "a reload lands in the room shown"
    assert [f["type"] for f in one.sent if f.get("room")] == ["join", "leave"]
    assert two.page.is_visible("#hb-chat li.system:text('left (left)')")

    two.switch("switch-b")
    one.wait(row(two.key))
    assert one.members() == sorted([one.key, two.key])
    # The chat follows the room.
    two.page.fill("#hb-chat-text", "hello in b")
    two.page.press("#hb-chat-text", "Enter")
    one.wait("#hb-chat li .bubble:text('hello in b')")
    assert one.session == session and len(one.sockets) == 1
    print(f"\nroom switch: the other page saw the member leave after {gone * 1000:.0f} ms")


def test_typing_shows_on_the_other_page_and_is_throttled(server, pages):
    one = pages(f"{server.origin}/?room=typing")
    two = pages(f"{server.origin}/?room=typing")
    two.wait(row(one.key))
    started = time.monotonic()
    one.page.press("#hb-chat-text", "h")
    try:
        line = two.wait("#hb-typing:not([hidden])")
    except Exception as error:
        raise AssertionError(f"no typing line; one sent {one.sent[-5:]}, two received "
                             f"{two.received[-8:]}") from error
    seen = time.monotonic() - started
    assert line.get_attribute("data-keys") == one.key
    assert line.inner_text().endswith("is typing…")
    one.page.locator("#hb-chat-text").press_sequentially("ello there, typing fast", delay=10)
    one.page.wait_for_timeout(200)
    typing = [f["data"] for f in one.sent if f.get("type") == "broadcast"]
    assert typing == [{"typing": True}], "one signal per 1.5 s while typing, not one a keystroke"
    # Sending the message ends the line at once, not after its 3.5 s.
    one.page.press("#hb-chat-text", "Enter")
    two.wait("#hb-typing", state="hidden", timeout=2)
    two.wait("#hb-chat li .bubble:text('hello there, typing fast')")
    print(f"\ntyping shown on the other page {seen * 1000:.0f} ms after the first key")


def test_a_busy_status_shows_in_the_other_pages_list_and_survives_a_reconnect(server, pages):
    one = pages(f"{server.origin}/?room=status")
    two = pages(f"{server.origin}/?room=status")
    key = one.key
    two.wait(f'{row(key)}[data-status="available"]')
    chosen_at = time.monotonic()
    one.page.select_option("#hb-status-picker", "busy")
    two.wait(f'{row(key)}[data-status="busy"]')
    seen = time.monotonic() - chosen_at
    one.wait(f'{row(key)}[data-status="busy"]')

    old = one.session
    one.page.evaluate("demo.sock.reconnect()")
    one.until("(old) => demo.sock.state === 'open' && demo.sock.session !== old", arg=old)
    new = one.session
    # The client sends the state again on the new connection: the other page sees the new
    # session busy, with no one asking.
    two.until("""([key, session]) => {
        const metas = (demo.sock.members('status')[key] || {metas: []}).metas;
        return metas.length === 1 && metas[0].session === session
            && metas[0].state && metas[0].state.status === 'busy';
    }""", arg=[key, new])
    assert two.members() == sorted([key, two.key])
    print(f"\nbusy shown on the other page {seen * 1000:.0f} ms after it was chosen")


def test_a_guest_is_refused_a_private_room_and_sees_none_of_it(server, admin_db, pages):
    staff = pages(f"{server.origin}/?room=private-staff", login=server.origin)
    assert staff.page.inner_text("#hb-room") == "#private-staff"
    assert staff.members() == [staff.key]
    staff.wait(f"{row(staff.key)} strong:text('{ADMIN_USER}')")

    guest = pages(f"{server.origin}/?room=guests")
    guest.switch("private-staff")
    error = guest.wait('#hb-room-error[data-code="room_forbidden"]')
    assert error.get_attribute("data-room") == "private-staff"
    assert "sign in" in error.inner_text()
    assert guest.page.get_attribute("#hb-room", "data-room") == "guests", "still where it was"
    assert guest.members() == [guest.key]
    assert guest.page.evaluate("demo.sock.state") == "open", "a refused join keeps the socket"
    about = [f for f in guest.received if f.get("room") == "private-staff"]
    assert [f["code"] for f in about] == ["room_forbidden"], "nothing but the refusal"
    assert guest.page.evaluate("demo.sock.count('private-staff')") is None
    time.sleep(scaled(0.5))  # a tick or more: the room saw nothing either
    assert staff.members() == [staff.key]

    # A guest sent straight to the private room is refused at connect, and lands in the lobby.
    late = pages(f"{server.origin}/?room=lobby")
    late.page.goto(f"{server.origin}/?room=private-staff")
    late.wait('#hb-room-error[data-code="room_forbidden"]')
    late.wait('#hb-room[data-room="lobby"]')
    late.wait("#hb-status[data-state=open]")
    assert staff.members() == [staff.key]


def test_a_big_room_shows_its_count_and_its_list_again_when_it_shrinks(server, pages):
    one = pages(f"{server.origin}/?room=big")
    two = pages(f"{server.origin}/?room=big")
    one.wait(row(two.key))
    three = pages(f"{server.origin}/?room=big")
    # The newcomer gets the count only: FULL_LIST_MAX + 1 members.
    three.wait('#hb-count[data-count-only="true"]')
    assert three.page.inner_text("#hb-count") == "3"
    assert three.page.is_visible("#hb-big-room")
    assert three.members() == []
    # The others get presence_count instead of diffs, and drop their lists.
    for page in (one, two):
        page.wait('#hb-count[data-count-only="true"]', timeout=3)
        page.until("document.querySelector('#hb-count').textContent === '3'")
        assert page.members() == []
    assert any(f.get("type") == "presence_count" for f in one.received)

    three.switch("small")
    three.wait('#hb-room[data-room="small"]')
    # Back under the limit: a diff, so the others ask for the list again (a join).
    for page in (one, two):
        page.wait('#hb-count[data-count-only="false"]', timeout=3)
        page.until("document.querySelectorAll('#hb-presence li[data-member]').length === 2")
        assert page.page.inner_text("#hb-count") == "2"
        assert page.page.is_hidden("#hb-big-room")
    assert [f["type"] for f in one.sent if f.get("room") == "big"] == ["join"]
    assert len(one.sockets) == 1


def test_a_big_rooms_batched_signals_reach_the_typing_line(slow_fanout_server, pages):
    origin = slow_fanout_server.origin
    one = pages(f"{origin}/?room=bigtype")
    two = pages(f"{origin}/?room=bigtype")
    two.wait(row(one.key))
    key = one.key
    three = pages(f"{origin}/?room=bigtype")
    three.wait('#hb-count[data-count-only="true"]')
    for page in (one, two):
        page.wait('#hb-count[data-count-only="true"]', timeout=3)
    # The first signal's pass spends more than the budget's burst; the next pass waits
    # for it, and takes both signals sent meanwhile in one frame.
    one.page.evaluate("""() => {
        const room = document.body.dataset.room;
        demo.sock.broadcast(room, "cursor", {x: 1});
        setTimeout(() => {
            demo.sock.broadcast(room, "typing", {typing: true});
            demo.sock.broadcast(room, "mood", {m: "ok"});
        }, 50);
    }""")
    try:
        line = three.wait("#hb-typing:not([hidden])")
    except Exception as error:
        raise AssertionError(f"no typing line; three received {three.received[-6:]}") from error
    assert line.get_attribute("data-keys") == key
    batches = [f for f in three.received if f.get("type") == "broadcasts"]
    assert batches, [f.get("type") for f in three.received]
    assert [(s["event"], s["from"]) for s in batches[-1]["signals"]] == [
        ("typing", key), ("mood", key)]
    assert not [f for f in one.received if f.get("type") in ("broadcast", "broadcasts")], \
        "never its own"
    print(f"\n[big room] three got {len(batches)} broadcasts frame(s): "
          f"{[s['event'] for s in batches[-1]['signals']]}")
