"""The demo page and its bundled client in headless Chromium, against a real Daphne.

Chromium is launched by the test and driven over CDP with Playwright's
``connect_over_cdp(no_defaults=True)``: Playwright's own launch pins every page to
"visible", this way minimising a window really hides the page (timer throttling
included). Each page gets a window of its own, so hiding one leaves the others visible.
A frozen peer is a TCP proxy that stops forwarding bytes while keeping both sockets open.
Figures are printed; run with ``-s`` to see them. Screenshots go to docs/img/ with
HEARTBEAT_UPDATE_SCREENSHOTS=1.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.servers import ServerProcess, free_port, scaled, server_env, stop_process

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-dev-shm-usage", "--disable-quic"]
VIEWPORT = {"width": 1100, "height": 560}
INTERVAL, TIMEOUT = 1.0, 1.0  # the module server's heartbeat, in seconds
MEMBERS = "document.querySelectorAll('#hb-presence li[data-member]').length"


def ms(seconds: float) -> float:
    """A Playwright timeout, in milliseconds, for a wait of ``seconds``, scaled."""
    return scaled(seconds) * 1000


# Chromium over CDP ------------------------------------------------------------------------------


class Chromium:
    """A headless Chromium process of our own, with Playwright attached over CDP."""

    def __init__(self, profile: Path):
        from playwright.sync_api import sync_playwright

        self.log_path = profile.parent / "chromium.log"
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", *FLAGS, f"--user-data-dir={profile}",
             "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=log)
        log.close()
        url = self._devtools_url(deadline=time.monotonic() + scaled(30))
        self.playwright = sync_playwright().start()
        # no_defaults: no focus emulation, which would keep every page "visible".
        self.browser = self.playwright.chromium.connect_over_cdp(url, no_defaults=True)
        self.context = self.browser.contexts[0]
        self.context.set_default_timeout(ms(30))  # every wait without its own timeout

    def _devtools_url(self, deadline: float) -> str:
        while time.monotonic() < deadline:
            match = re.search(r"DevTools listening on (ws://\S+)", self.log_path.read_text())
            if match:
                return match.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.proc.kill()
        raise RuntimeError(f"Chromium did not start:\n{self.log_path.read_text()}")

    def new_page(self):
        """A blank page in a window of its own."""
        cdp = self.browser.new_browser_cdp_session()
        with self.context.expect_page() as info:
            cdp.send("Target.createTarget", {"url": "about:blank", "newWindow": True})
        cdp.detach()
        page = info.value
        page.set_viewport_size(VIEWPORT)
        return page

    def set_visible(self, page, visible: bool) -> None:
        """Minimise or restore the page's window; wait until the page sees it."""
        target = self.context.new_cdp_session(page).send("Target.getTargetInfo")
        cdp = self.browser.new_browser_cdp_session()
        window = cdp.send("Browser.getWindowForTarget",
                          {"targetId": target["targetInfo"]["targetId"]})["windowId"]
        cdp.send("Browser.setWindowBounds", {
            "windowId": window, "bounds": {"windowState": "normal" if visible else "minimized"}})
        cdp.detach()
        state = "visible" if visible else "hidden"
        page.wait_for_function(f"document.visibilityState === '{state}'", timeout=ms(5))

    def close(self) -> None:
        try:
            self.browser.close()
            self.playwright.stop()
        finally:
            stop_process(self.proc)


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    browser = Chromium(tmp_path_factory.mktemp("chromium") / "profile")
    yield browser
    browser.close()


@pytest.fixture
def pages(chromium):
    """Open pages; each test's pages are closed after it."""
    opened = []

    def open_page(url, on_frame=None):
        page = chromium.new_page()
        if on_frame:
            page.on("websocket", lambda ws: ws.on("framesent", on_frame))
        page.goto(url)
        opened.append(page)
        return page

    yield open_page
    for page in opened:
        if not page.is_closed():
            page.close()


# Servers ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(migrated_db, tmp_path_factory):
    """The demo on Daphne, with 1 s heartbeats and a short leave grace."""
    proc = ServerProcess(tmp_path_factory.mktemp("browser"), server_env(
        migrated_db, HEARTBEAT_INTERVAL=str(INTERVAL), HEARTBEAT_TIMEOUT=str(TIMEOUT),
        PRESENCE_LEAVE_GRACE="0.5")).start()
    yield proc
    proc.stop()


class FreezeProxy:
    """A loopback TCP proxy that can stop forwarding while keeping every socket open."""

    def __init__(self, upstream_port: int):
        self.upstream = upstream_port
        self.port = free_port()
        self.frozen = False
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(scaled(5)), "proxy did not start"

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self.ready.set()
        self.loop.run_forever()

    async def _pipe(self, reader, writer):
        try:
            while data := await reader.read(65536):
                while self.frozen:  # hold the bytes; a dead peer says nothing
                    await asyncio.sleep(0.02)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, client_reader, client_writer):
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(self._pipe(client_reader, up_writer),
                             self._pipe(up_reader, client_writer))

    async def _shutdown(self):
        self.server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self):
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(scaled(5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(scaled(5))
        self.loop.close()


# Helpers ----------------------------------------------------------------------------------------


def wait_state(page, state, timeout=10.0):
    page.wait_for_selector(f"#hb-status[data-state={state}]", timeout=ms(timeout))


def member_keys(page):
    return sorted(page.eval_on_selector_all(
        "#hb-presence li[data-member]", "els => els.map(e => e.dataset.member)"))


def own_key(page):
    """This page's member key: the server issues anonymous ones (the identity frame)."""
    page.wait_for_function("demo.sock.memberKey !== null")
    return page.evaluate("demo.sock.memberKey")


def chat(page, text):
    page.fill("#hb-chat-text", text)
    page.press("#hb-chat-text", "Enter")


# Tests --------------------------------------------------------------------------------------------


def test_page_connects_and_shows_the_round_trip(server, pages):
    page = pages(f"{server.origin}/?room=rtt")
    wait_state(page, "open")
    page.wait_for_function(r"/^\d+ ms$/.test(document.querySelector('#hb-rtt').textContent)")
    rtt = page.evaluate("demo.sock.rtt")
    assert 0 <= rtt < 500
    assert page.inner_text("#hb-status") == "Connected"
    assert page.inner_text("#hb-interval") == "1 s / 1 s", "follows the server's hello"
    assert member_keys(page) == [own_key(page)]
    # The tab id survives a reload (sessionStorage), so the member key does too.
    key = own_key(page)
    page.reload()
    wait_state(page, "open")
    assert own_key(page) == key
    print(f"\nfirst round trip in Chromium: {rtt} ms")


def test_second_page_appears_in_presence_and_leaves_when_closed(server, pages):
    first = pages(f"{server.origin}/?room=pair")
    wait_state(first, "open")
    second = pages(f"{server.origin}/?room=pair")
    wait_state(second, "open")
    key = own_key(second)
    first.wait_for_selector(f'#hb-presence li[data-member="{key}"][data-visible="true"]')
    assert member_keys(first) == sorted([own_key(first), key])
    chat(second, "hello from the second page")
    first.wait_for_selector("#hb-chat li .bubble:text('hello from the second page')")
    closed_at = time.monotonic()
    second.close()
    first.wait_for_selector(f'#hb-presence li[data-member="{key}"]', state="detached",
                            timeout=ms(5))
    gone = time.monotonic() - closed_at
    assert member_keys(first) == [own_key(first)]
    first.wait_for_selector("#hb-chat li.system:text('left (closed)')")
    print(f"\nclosed page left the other page's list after {gone:.2f} s (leave grace 0.5 s)")


def test_hidden_page_shows_hidden_and_becoming_visible_sends_a_probe(
        migrated_db, tmp_path, chromium, pages, shots):
    # A 30 s interval: any ping seen right after the page shows again is the probe.
    slow = ServerProcess(tmp_path, server_env(
        migrated_db, HEARTBEAT_INTERVAL="30", HEARTBEAT_TIMEOUT="10")).start()
    try:
        sent = []
        watcher = pages(f"{slow.origin}/?room=visibility")
        wait_state(watcher, "open")
        watched = pages(f"{slow.origin}/?room=visibility",
                        on_frame=lambda frame: sent.append((time.monotonic(), frame)))
        wait_state(watched, "open")
        key = own_key(watched)
        row = f'#hb-presence li[data-member="{key}"]'
        watcher.wait_for_selector(f'{row}[data-visible="true"]')

        hidden_at = time.monotonic()
        chromium.set_visible(watched, False)
        watcher.wait_for_selector(f'{row}[data-visible="false"]', timeout=ms(5))
        seen_hidden = time.monotonic() - hidden_at
        chat(watcher, "Try hiding this tab: the list shows who is looking.")
        watcher.wait_for_selector("#hb-chat li.mine")
        watcher.screenshot(path=str(shots / "demo.png"))

        shown_at = time.monotonic()
        chromium.set_visible(watched, True)
        watcher.wait_for_selector(f'{row}[data-visible="true"]', timeout=ms(5))
        probes = [t - shown_at for t, frame in sent
                  if t >= shown_at and '"type":"ping"' in frame and '"visible":true' in frame]
        assert probes, f"no probe ping after the page became visible: {sent}"
        assert probes[0] < 1.0, "the probe goes out at once, not at the next interval (30 s)"
        hidden_pings = [frame for t, frame in sent
                        if hidden_at <= t < shown_at and '"type":"ping"' in frame]
        assert hidden_pings and all('"visible":false' in f for f in hidden_pings)
        print(f"\nhidden seen by the other page after {seen_hidden:.2f} s; "
              f"probe sent {probes[0] * 1000:.0f} ms after becoming visible")
    finally:
        slow.stop()


def test_server_killed_and_restarted_reconnects_and_restores_presence(
        migrated_db, tmp_path, pages, shots):
    env = server_env(migrated_db, HEARTBEAT_INTERVAL=str(INTERVAL),
                     HEARTBEAT_TIMEOUT=str(TIMEOUT))
    first_server = ServerProcess(tmp_path, env, name="before").start()
    port = first_server.port
    second_server = None
    try:
        one = pages(f"{first_server.origin}/?room=restart")
        two = pages(f"{first_server.origin}/?room=restart")
        for page in (one, two):
            wait_state(page, "open")
            page.wait_for_function(f"{MEMBERS} === 2")
        before = member_keys(one)

        killed_at = time.monotonic()
        first_server.kill9()
        wait_state(one, "reconnecting", timeout=5)
        noticed = time.monotonic() - killed_at
        one.wait_for_function(
            "/^Reconnecting in \\d+ s…$/"
            ".test(document.querySelector('#hb-status .status-text').textContent)",
            timeout=ms(5))
        one.screenshot(path=str(shots / "demo-reconnecting.png"))
        time.sleep(1.0)
        attempts = one.evaluate("demo.sock.attempt")
        assert attempts >= 1

        # The same address: the pages keep their URL.
        second_server = ServerProcess(tmp_path, env, name="after", port=port).start()
        restarted_at = time.monotonic()
        for page in (one, two):
            wait_state(page, "open", timeout=30)
        back = time.monotonic() - restarted_at
        for page in (one, two):
            page.wait_for_function(f"{MEMBERS} === 2", timeout=ms(5))
        assert member_keys(one) == before == member_keys(two), "same tabs, same member keys"
        one.wait_for_function("demo.sock.attempt === 0", timeout=ms(5))
        print(f"\nkill noticed after {noticed * 1000:.0f} ms; {attempts} attempts while down; "
              f"both pages open {back:.2f} s after the restart")
    finally:
        first_server.stop()
        if second_server is not None:
            second_server.stop()


def test_frozen_peer_is_detected_within_interval_plus_timeout(server, pages):
    proxy = FreezeProxy(server.port)
    try:
        page = pages(f"http://127.0.0.1:{proxy.port}/?room=frozen")
        wait_state(page, "open")
        page.wait_for_function("demo.sock.rtt !== null")
        page.evaluate("""() => {
            window.lost = null;
            demo.sock.on('close', (ev) => { window.lost = {at: Date.now(), code: ev.code,
                                                           reason: ev.reason}; });
        }""")
        frozen_at = page.evaluate("Date.now()")
        proxy.frozen = True
        bound_ms = (INTERVAL + TIMEOUT) * 1000
        page.wait_for_function("window.lost !== null", timeout=ms(INTERVAL + TIMEOUT + 3))
        lost = page.evaluate("window.lost")
        detected_ms = lost["at"] - frozen_at
        assert lost["code"] == 4408 and lost["reason"] == "heartbeat timeout", lost
        # The deadline runs from the last pong, which came before the freeze; timers may fire
        # a little late.
        assert detected_ms <= bound_ms + 250, detected_ms
        assert page.get_attribute("#hb-status", "data-state") == "reconnecting"
        proxy.frozen = False
        wait_state(page, "open", timeout=20)
        print(f"\nfrozen peer detected after {detected_ms} ms "
              f"(interval + timeout = {bound_ms:.0f} ms)")
    finally:
        proxy.stop()


def test_classic_script_and_module_define_the_same_class(server, pages):
    page = pages(f"{server.origin}/?room=module")
    wait_state(page, "open")
    same = page.evaluate("""async () => {
        const mod = await import('/static/heartbeat_app/heartbeat.mjs');
        return mod.default === window.HeartbeatSocket && mod.HeartbeatSocket === mod.default
            && demo.sock instanceof mod.default;
    }""")
    assert same, "loading both forms on one page gives one class"
