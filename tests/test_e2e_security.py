"""End to end: what one visitor cannot do to another, on two Daphne processes sharing Redis.

- A tab id sent by another visitor takes over nothing: the victim stays, nobody sees
  it leave or replaced, and the thief is a member of its own.
- A room the demo's policy refuses (``private-…`` for an anonymous visitor) gets the
  refused client hello, ``room_forbidden`` and a 4401 close, and its members see
  nothing at all of it.
- A member with PRESENCE_MAX_TABS_PER_MEMBER tabs in a room, spread over both processes,
  gets ``too_many_tabs`` for one more, stays connected, and joins once a tab has left.
"""

import asyncio
import json
import os
import time
from urllib.parse import quote

import pytest
import redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from heartbeat_app import conf
from heartbeat_app.options import anonymous_token
from tests.conftest import ADMIN_PASSWORD, ADMIN_USER
from tests.servers import ServerProcess, scaled
from tests.test_e2e_admin import AdminBrowser
from tests.test_e2e_presence import View, presence_env, until

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

QUIET = 1.0  # seconds (ten ticks) in which a refused or replayed join must show nothing


class Recording(View):
    """A View that keeps every frame it got, and knows its own member key."""

    def __init__(self, server, tab, room="lobby", cookie=None):
        super().__init__(server, tab, room)
        # No token yet: an empty "anon" asks the server for one, as the bundled client does.
        self.url = f"{server.url}/ws/rooms/{room}/?tab={tab}&anon="
        self.cookie = cookie
        self.frames: list[dict] = []

    @property
    def key(self):
        """The key of this client's own meta, as the room sees it."""
        session = (self.hello or {}).get("session")
        return next((meta["key"] for meta in self.metas.values()
                     if meta.get("session") == session), None)

    def apply(self, message):
        self.frames.append(message)
        super().apply(message)

    def presence_frames(self):
        return [f for f in self.frames if f["type"].startswith("presence_")]

    async def open(self):
        headers = {"Cookie": self.cookie} if self.cookie else None
        self.ws = await connect(self.url, origin=self.origin, ping_interval=None,
                                additional_headers=headers)
        self.task = asyncio.create_task(self.run(self.ws))
        return self


@pytest.fixture
def two_servers(admin_db, redis_url, tmp_path):
    url = redis_url.rsplit("/", 1)[0] + "/12"
    redis.Redis.from_url(url).flushdb()
    env = presence_env(admin_db, url, f"hbsec-{os.urandom(4).hex()}")
    env["PRESENCE_LEAVE_GRACE"] = "2"  # room enough for a reload on a busy machine
    # The tab cap counts the metas in the store: none of them may expire because a busy
    # machine held a process's refresh back (3 s in presence_env), or a tab too many
    # would find a place.
    env["PRESENCE_TTL"] = "30"
    a = ServerProcess(tmp_path, env, name="A").start()
    b = ServerProcess(tmp_path, env, name="B").start()
    yield a, b
    a.stop()
    b.stop()
    redis.Redis.from_url(url).flushdb()


async def close_all(*views):
    for view in views:
        await view.ws.close()


async def test_a_tab_id_sent_by_another_visitor_takes_over_nothing(two_servers):
    a, b = two_servers
    watcher = await Recording(a, "watcher").open()
    victim = await Recording(a, "victim-tab").open()
    assert await until(lambda: victim.key and watcher.key, scaled(5))
    assert await until(lambda: set(watcher.members()) == {watcher.key, victim.key}, scaled(5))
    seen = len(watcher.frames)
    # The thief knows the victim's tab id (and the victim's key's id) and sends both, from
    # the other process; it has no token the server signed for that key.
    anon_id = victim.key.removeprefix("anon:")
    thief = Recording(b, "victim-tab")
    thief.url = thief.url.removesuffix("&anon=") + f"&anon={quote(anon_id)}"
    await thief.open()
    assert await until(lambda: thief.key is not None, scaled(5))
    assert thief.key not in (victim.key, watcher.key)
    assert await until(lambda: thief.key in watcher.members(), scaled(5))
    await asyncio.sleep(QUIET)
    assert victim.key in watcher.members() and victim.closed is None
    later = watcher.frames[seen:]
    leaves = [key for f in later if f["type"] == "presence_diff" for key in f["leaves"]]
    assert leaves == [], f"the victim must not leave, nor be replaced: {later}"
    assert all("tab" not in meta for v in watcher.members().values() for meta in v)
    # The victim's own reload (its token, its tab) still replaces its meta without a blink.
    token = next(f["token"] for f in victim.frames if f["type"] == "identity")
    reload = Recording(a, "victim-tab")
    reload.url = reload.url.removesuffix("&anon=") + f"&anon={quote(token)}"
    await victim.ws.close(code=1001)
    await reload.open()
    assert await until(lambda: reload.key == victim.key, scaled(5))
    assert await until(lambda: any(r == "replaced" for _, k, r in watcher.leaves
                                   if k == victim.key), scaled(5))
    assert [r for _, k, r in watcher.leaves if k == victim.key] == ["replaced"]
    await close_all(watcher, thief, reload)


async def test_a_refused_room_sends_nothing_about_it_and_shows_nothing_to_it(two_servers):
    a, b = two_servers
    browser = AdminBrowser(a.origin)
    browser.login(ADMIN_USER, ADMIN_PASSWORD)
    cookie = "; ".join(f"{c.name}={c.value}" for c in browser.jar)
    member = await Recording(a, "member", room="private-ops", cookie=cookie).open()
    assert await until(lambda: len(member.members()) == 1, scaled(5))
    assert await until(lambda: any(f["type"] == "presence_diff" for f in member.frames),
                       scaled(5))
    before = len(member.presence_frames())

    async with connect(f"{b.url}/ws/rooms/private-ops/?tab=nosy", origin=b.origin,
                       ping_interval=None) as nosy:
        frames = []
        try:
            async with asyncio.timeout(scaled(5)):
                async for raw in nosy:
                    frames.append(json.loads(raw))
        except ConnectionClosed:
            pass
    assert [f["type"] for f in frames] == ["hello", "error"]
    error = frames[1]
    assert error["code"] == "room_forbidden" and error["room"] == "private-ops"
    assert set(error) == {"type", "code", "room", "detail"}
    assert nosy.close_code == 4401
    # Nothing of the room reached the refused client, and nothing of it reached the room.
    started = time.monotonic()
    await asyncio.sleep(QUIET)
    assert member.presence_frames()[before:] == [], "no join, no leave, no diff at all"
    assert len(member.members()) == 1
    print(f"\n[security] refused client: {[f['type'] for f in frames]}, close "
          f"{nosy.close_code}; the room saw no frame in {time.monotonic() - started:.1f} s")
    await close_all(member)


async def test_one_tab_too_many_is_refused_over_both_processes_and_stays_connected(two_servers):
    a, b = two_servers
    cap = conf.DEFAULTS["PRESENCE_MAX_TABS_PER_MEMBER"]
    watcher = await Recording(a, "watcher").open()
    token = quote(anonymous_token("many"))  # one member, as a client keeps its token

    def tab_of_many(server, tab):
        view = Recording(server, tab)
        view.url = view.url.removesuffix("&anon=") + f"&anon={token}"
        return view

    tabs = [await tab_of_many((a, b)[i % 2], f"many-{i}").open() for i in range(cap)]
    assert await until(lambda: len(watcher.members().get("anon:many", [])) == cap, scaled(10))
    seen = len(watcher.frames)
    extra = await tab_of_many(b, "many-extra").open()
    assert await until(lambda: any(f["type"] == "error" for f in extra.frames), scaled(5))
    await asyncio.sleep(QUIET)
    error = next(f for f in extra.frames if f["type"] == "error")
    assert (error["code"], error["room"]) == ("too_many_tabs", "lobby")
    assert [f["type"] for f in extra.frames if f["type"] != "pong"] == [
        "hello", "error", "identity"]
    assert extra.closed is None, "the connection stays open"
    assert [f for f in watcher.frames[seen:] if f["type"] == "presence_diff"] == []
    assert len(watcher.members()["anon:many"]) == cap
    # A join frame is refused alike, and goes through once one of the tabs has left.
    await extra.ws.send(json.dumps({"type": "join", "room": "lobby"}))
    assert await until(lambda: sum(f["type"] == "error" for f in extra.frames) == 2,
                       scaled(5)), (f"frames {[f['type'] for f in extra.frames]}, "
                                    f"closed {extra.closed}")
    await tabs[0].ws.close(code=1000)
    assert await until(lambda: len(watcher.members()["anon:many"]) == cap - 1, scaled(5))
    await extra.ws.send(json.dumps({"type": "join", "room": "lobby"}))
    assert await until(lambda: extra.state_count == 1, scaled(5))
    assert await until(lambda: len(watcher.members()["anon:many"]) == cap, scaled(5))
    print(f"\n[security] tab {cap + 1} of one member refused with too_many_tabs over two "
          f"processes; joined once a tab had left")
    await close_all(watcher, extra, *tabs[1:])
