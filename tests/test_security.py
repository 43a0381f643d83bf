"""What one client cannot do to another: take its identity or its tab, see a room it may not.

Real consumers (WebsocketCommunicator), the memory store and a shrunk tick; the same
findings against real Daphne processes on Redis are in tests/test_e2e_security.py.
"""

import asyncio
import json
from types import SimpleNamespace
from urllib.parse import quote

import pytest
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.sessions.backends.signed_cookies import SessionStore

from heartbeat_app import options, presence, stores
from heartbeat_app.consumers import HeartbeatMixin
from heartbeat_app.scheduler import Scheduler

MS = 0.001
TICK = 50 * MS


class RoomConsumer(HeartbeatMixin, AsyncJsonWebsocketConsumer):
    heartbeat_interval = 2.0
    heartbeat_timeout = 1.0

    def get_presence_rooms(self):
        return [self.scope["url_route"]["kwargs"]["room"]]


def user(pk):
    return SimpleNamespace(pk=pk, is_authenticated=True)


@pytest.fixture(autouse=True)
def fresh_presence(settings):
    settings.HEARTBEAT_TICK = TICK
    settings.PRESENCE_LEAVE_GRACE = 0.3
    settings.PRESENCE_STORE = "memory"
    stores.reset_store()
    yield
    stores.reset_store()


@pytest.fixture
async def clock(make_runtime, fake_clock):
    fake_clock.runtime = make_runtime(autostart={"tracker"})
    fake_clock.scheduler = fake_clock.runtime.service(Scheduler)
    return fake_clock


def communicator_for(room="lobby", query="", **scope):
    communicator = WebsocketCommunicator(RoomConsumer.as_asgi(), f"/ws/rooms/{room}/?{query}")
    communicator.scope["url_route"] = {"kwargs": {"room": room}}
    communicator.scope.update(scope)
    return communicator


async def join(room="lobby", query="", **scope):
    """Connect; return the communicator and what it got: hello, presence_state, identity."""
    communicator = communicator_for(room, query, **scope)
    connected, _ = await communicator.connect()
    assert connected
    hello = await communicator.receive_json_from()
    assert hello["type"] == "hello"
    state = await communicator.receive_json_from()
    assert state["type"] == "presence_state"
    identity = None
    asked = "anon=" in query  # present, even empty: the client keeps a token
    if asked and not getattr(scope.get("user"), "is_authenticated", False) and (
            "session" not in scope):
        identity = await communicator.receive_json_from()
        assert identity["type"] == "identity"
    return SimpleNamespace(ws=communicator, hello=hello, state=state, identity=identity)


async def next_diff(communicator, timeout=2.0):
    while True:
        message = await communicator.receive_json_from(timeout=timeout)
        if message["type"] == "presence_diff":
            return message


async def frame_types(communicator, quiet=5 * TICK):
    """The types of the frames that arrive until the line is quiet for ``quiet`` seconds."""
    types = []
    while not await communicator.receive_nothing(timeout=quiet):
        types.append((await communicator.receive_json_from())["type"])
    return types


def key_of(joined):
    """The member key of a joined client, from its own meta in its presence_state."""
    return next(key for key, member in joined.state["members"].items()
                if any(m["session"] == joined.hello["session"] for m in member["metas"]))


# An anonymous member key comes from the server ---------------------------------------------


async def test_an_anonymous_key_is_never_taken_from_the_url(clock):
    one = await join(query="tab=T")
    two = await join(query="tab=T")
    forged = await join(query="tab=T&anon=T")  # an id without the server's signature
    keys = [key_of(one), key_of(two), key_of(forged)]
    assert len(set(keys)) == 3
    assert all(key.startswith("anon:") and "T" != key[5:] for key in keys)
    assert forged.identity["key"] == key_of(forged)  # a fresh key, and its token
    # A client that does not ask for a token (no "anon" at all) is sent none.
    assert "identity" not in await frame_types(one.ws)
    for joined in (one, two, forged):
        await joined.ws.disconnect(code=1000)


async def test_a_token_the_server_issued_keeps_the_anonymous_key(clock):
    first = await join(query="tab=A&anon=")  # empty: no token yet, send one
    token = first.identity["token"]
    assert first.identity == {"type": "identity", "key": key_of(first), "token": token}
    await first.ws.disconnect(code=1000)
    again = await join(query=f"tab=A&anon={quote(token)}")
    assert key_of(again) == key_of(first) and again.identity["token"] == token
    # A token altered by one character is refused, and a new key is issued instead.
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    other = await join(query=f"tab=A&anon={quote(tampered)}")
    assert key_of(other) != key_of(first)
    await again.ws.disconnect(code=1000)
    await other.ws.disconnect(code=1000)


async def test_an_anonymous_key_from_the_django_session_does_not_show_the_session(clock):
    session = SessionStore()
    session["visited"] = True
    session.save()
    one = await join(query="tab=a&anon=", session=SessionStore(session.session_key))
    two = await join(query="tab=b&anon=", session=SessionStore(session.session_key))
    key = key_of(one)
    assert key == key_of(two), "one visitor, two tabs: one member"
    assert key.startswith("anon:") and session.session_key not in key
    assert len(one.state["members"]) == 1 and len(one.state["members"][key]["metas"]) == 1
    # A session-derived key needs no token: no identity frame is sent.
    assert "identity" not in await frame_types(one.ws)
    await one.ws.disconnect(code=1000)
    await two.ws.disconnect(code=1000)


def test_the_hook_is_still_get_heartbeat_user_key():
    class Custom(RoomConsumer):
        def get_heartbeat_user_key(self, tab):
            return "custom"

    consumer = Custom()
    consumer.scope = {"query_string": b"tab=x"}
    assert consumer.get_heartbeat_user_key("x") == "custom"
    assert options.anonymous_id(options.anonymous_token("abc")) == "abc"
    assert options.anonymous_id("abc") is None


# A tab id is scoped to its member, and other clients never see it ---------------------------


async def test_a_stolen_tab_id_replaces_nobody(clock):
    watcher = await join(query="tab=w", user=user(1))
    await next_diff(watcher.ws)
    victim = await join(query="tab=victim-tab&anon=")
    diff = await next_diff(watcher.ws)
    victim_key = key_of(victim)
    assert list(diff["joins"]) == [victim_key]
    thief = await join(query="tab=victim-tab&anon=")
    diff = await next_diff(watcher.ws)
    assert diff["leaves"] == {}, "the victim must not leave, nor be replaced"
    assert list(diff["joins"]) == [key_of(thief)] != [victim_key]
    members = await presence.amembers("lobby")
    assert sorted(members) == sorted(["1", victim_key, key_of(thief)])
    for joined in (thief, victim, watcher):
        await joined.ws.disconnect(code=1000)


async def test_metas_sent_to_clients_carry_no_tab(clock):
    watcher = await join(query="tab=w", user=user(1))
    joined = await next_diff(watcher.ws)
    other = await join(query="tab=secret-tab", user=user(2))
    diff = await next_diff(watcher.ws)
    metas = [m for frame in (watcher.state, other.state) for member in frame["members"].values()
             for m in member["metas"]]
    metas += [m for frame in (joined, diff) for side in ("joins", "leaves")
              for member in frame[side].values() for m in member["metas"]]
    assert metas and all("tab" not in m for m in metas)
    assert all({"session", "key", "ref", "visible", "online_at"} <= set(m) for m in metas)
    assert "secret-tab" not in str(await presence.amembers("lobby"))
    await other.ws.disconnect(code=1000)
    await asyncio.sleep(3 * TICK)
    leave = await next_diff(watcher.ws)
    assert all("tab" not in m for m in leave["leaves"]["2"]["metas"])
    await watcher.ws.disconnect(code=1000)


# Room authorization: refused before any presence work, and told nothing of the room -----------


class GuardedConsumer(RoomConsumer):
    """Rooms named ``private-…`` need a signed-in user (the demo's policy), via an async hook."""

    asked: list = []

    async def can_join_presence(self, room):
        self.asked.append((room, self.heartbeat_session.id))
        await asyncio.sleep(0)
        return not room.startswith("private-") or self.scope["user"].is_authenticated

    def get_presence_meta(self):
        assert self.heartbeat_session.close_code is None, "no meta for a refused session"
        return {}


class SyncGuard(GuardedConsumer):
    def can_join_presence(self, room):  # a sync hook will do too
        return room != "staff"


async def refused(room, consumer=GuardedConsumer, **scope):
    """Connect to a refused room; return the frames before the close, and the close."""
    communicator = WebsocketCommunicator(consumer.as_asgi(), f"/ws/rooms/{room}/?tab=r")
    communicator.scope["url_route"] = {"kwargs": {"room": room}}
    communicator.scope.update(scope)
    connected, _ = await communicator.connect()
    assert connected, "accept, then close: a refused handshake shows only 1006 in browsers"
    frames = []
    while True:
        output = await communicator.receive_output(timeout=2)
        if output["type"] == "websocket.close":
            return communicator, frames, output
        frames.append(json.loads(output["text"]))


async def test_a_refused_room_gets_hello_room_forbidden_and_4401(clock):
    member = await join(room="private-ops", query="tab=m", user=user(1))
    await next_diff(member.ws)
    layer = get_channel_layer()
    communicator, frames, closed = await refused("private-ops",
                                                 user=SimpleNamespace(is_authenticated=False))
    assert [f["type"] for f in frames] == ["hello", "error"]
    assert frames[1] == {"type": "error", "code": "room_forbidden", "room": "private-ops",
                         "detail": frames[1]["detail"]}
    assert closed["code"] == 4401
    assert ("private-ops", frames[0]["session"]) in GuardedConsumer.asked
    # Nothing of the refused session reached the room, its group or the store.
    assert await frame_types(member.ws, quiet=10 * TICK) == []
    assert list(await presence.amembers("private-ops")) == ["1"]
    assert len(layer.groups["presence.private-ops"]) == 1
    await communicator.disconnect(code=4401)
    assert await frame_types(member.ws, quiet=10 * TICK) == []
    await member.ws.disconnect(code=1000)


async def test_a_refused_signed_in_user_gets_4403_and_an_allowed_one_joins(clock):
    communicator, frames, closed = await refused("staff", SyncGuard, user=user(5))
    assert [f["type"] for f in frames] == ["hello", "error"] and closed["code"] == 4403
    await communicator.disconnect(code=4403)
    allowed = WebsocketCommunicator(SyncGuard.as_asgi(), "/ws/rooms/lobby/?tab=a")
    allowed.scope["url_route"] = {"kwargs": {"room": "lobby"}}
    allowed.scope["user"] = user(5)
    assert (await allowed.connect())[0]
    assert [(await allowed.receive_json_from())["type"] for _ in range(2)] == [
        "hello", "presence_state"]
    await allowed.disconnect(code=1000)


def test_every_consumer_may_join_unless_it_says_otherwise():
    assert RoomConsumer().can_join_presence("anything") is True


async def test_the_demo_refuses_private_rooms_to_anonymous_visitors(clock):
    from project.consumers import RoomConsumer as DemoConsumer

    layer = get_channel_layer()
    communicator = WebsocketCommunicator(DemoConsumer.as_asgi(), "/ws/rooms/private-x/?tab=n")
    communicator.scope["url_route"] = {"kwargs": {"room": "private-x"}}
    communicator.scope["user"] = SimpleNamespace(is_authenticated=False)
    assert (await communicator.connect())[0]
    assert (await communicator.receive_json_from())["type"] == "hello"
    assert (await communicator.receive_json_from())["code"] == "room_forbidden"
    assert (await communicator.receive_output(timeout=2))["code"] == 4401
    # Not in the room's group either (the demo's chat goes through it): its messages
    # never reach it.
    assert not layer.groups.get("presence.private-x")
    await communicator.send_json_to({"type": "chat", "text": "let me in"})
    await communicator.disconnect(code=4401)
    signed_in = WebsocketCommunicator(DemoConsumer.as_asgi(), "/ws/rooms/private-x/?tab=s")
    signed_in.scope["url_route"] = {"kwargs": {"room": "private-x"}}
    signed_in.scope["user"] = user(3)
    assert (await signed_in.connect())[0]
    assert [(await signed_in.receive_json_from())["type"] for _ in range(2)] == [
        "hello", "presence_state"]
    for _ in range(100):  # the presence join adds the room's group
        if layer.groups.get("presence.private-x"):
            break
        await asyncio.sleep(MS)
    assert layer.groups.get("presence.private-x")
    await signed_in.disconnect(code=1000)


# The suite's own guards --------------------------------------------------------------------


@pytest.mark.parametrize("ci, code", [("", 0), ("true", 1)])
def test_the_version_matrix_fails_under_ci_when_its_python_is_missing(tmp_path, ci, code):
    """scripts/test-matrix.sh on a machine without Python 3.12/3.13: skipped, but not in CI."""
    import os
    import shutil
    import subprocess

    from tests.servers import ROOT

    bin_dir = tmp_path / "bin"  # nothing but dirname: no pyenv, no python3.1x
    bin_dir.mkdir()
    os.symlink(shutil.which("dirname"), bin_dir / "dirname")
    done = subprocess.run([shutil.which("bash"), str(ROOT / "scripts" / "test-matrix.sh")],
                          env={"PATH": str(bin_dir), "CI": ci, "HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == code, done.stdout + done.stderr
    assert "no Python 3.12 or 3.13" in done.stdout + done.stderr


# The demo's SECRET_KEY -----------------------------------------------------------------------


def _demo_check(**env):
    """``manage.py check`` of the demo, with ``env`` instead of the developer's key and DEBUG."""
    import os
    import subprocess
    import sys

    from tests.servers import ROOT

    base = {k: v for k, v in os.environ.items()
            if k not in ("DJANGO_SECRET_KEY", "DJANGO_DEBUG", "DJANGO_SETTINGS_MODULE")}
    return subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT,
                          env={**base, **env}, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("key", [None, "", "demo-only-insecure-key-change-me"])
def test_the_demo_refuses_to_start_with_debug_off_and_its_public_key(key):
    """DEBUG off without a key of its own (or with the demo's, which is public) fails."""
    done = _demo_check(DJANGO_DEBUG="0", **({} if key is None else {"DJANGO_SECRET_KEY": key}))
    assert done.returncode != 0
    assert "ImproperlyConfigured" in done.stderr
    assert "Set DJANGO_SECRET_KEY to a long random string" in done.stderr


def test_the_demo_starts_with_a_key_of_its_own_or_with_debug_on():
    """A key of its own with DEBUG off, or DJANGO_DEBUG unset (make run), passes the checks."""
    import secrets

    with_key = _demo_check(DJANGO_DEBUG="0", DJANGO_SECRET_KEY=secrets.token_urlsafe(50))
    assert with_key.returncode == 0, with_key.stdout + with_key.stderr
    out_of_the_box = _demo_check()
    assert out_of_the_box.returncode == 0, out_of_the_box.stdout + out_of_the_box.stderr
