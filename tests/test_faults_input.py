"""Hostile input against a live Daphne: a property-based fuzzer and a ping flood.

While one connection receives random and hostile frames (bad JSON, huge ids, deep
nesting, binary frames on the JSON consumer, frames up to ~1 MB, any unicode), a
separate healthy session pings on its own connection and its round-trip times are
recorded before and during the attack. The server log must hold no traceback, every
hostile heartbeat-looking frame must get an ``error`` message, and the healthy
session must keep getting its pongs. A ping flood must be closed with 4429 without
holding up other sessions' pongs.

Measured figures are printed (run with -s); bounds are generous and asserted.
"""

import asyncio
import json
import statistics
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect as aconnect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.servers import ROOT, ServerProcess, scaled, server_env

pytestmark = pytest.mark.e2e

ERROR_CODES = {"invalid_json", "invalid_message", "frame_too_large", "binary_not_supported"}
KNOWN_TYPES = {"hello", "pong", "ping", "error", "chat", "presence_state", "presence_diff"}
# Daphne refuses messages above 1 MiB (websocket_max_message_size) with 1009.
MAX_FRAME = 1_000_000
# The healthy session's round trip during an attack: loopback pongs take well under
# a millisecond when idle; a 1 MB frame costs the shared loop a few milliseconds.
RTT_P99_BOUND_MS = 250.0
MAX_PONG_GAP = 1.0
# The healthy session's longest wait for a pong while the server reads a flood.
FLOOD_MAX_GAP = 2.0
# Each flooder sends as fast as it can, with at most this many pings unanswered: past the
# burst of 60 nothing is answered, so it sends about 60 + FLOOD_WINDOW, then reads until
# the close. Flooders that sent 5,000 pings each without reading queued 25,000 frames in
# the one server process; on a busy machine its writes then lagged by more than the 1 s
# Daphne waits for a close reply (autobahn's closeHandshakeTimeout), and it aborted the
# connection with the 4429 notice and close frame still unsent: the client saw 1006.
FLOOD_WINDOW = 250
FLOOD_PINGS = 5000  # each, at most: a ceiling in case the limit never closes


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Healthy:
    """A well-behaved session in its own process, pinging every ``every`` s."""

    def __init__(self, server, room, every):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.clients.pinger",
             f"{server.url}/ws/rooms/{room}/?tab=healthy", server.origin, str(every)],
            stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.samples: list[tuple[float, float]] = []  # (when, rtt ms)
        self.closed = None
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.ready.wait(scaled(30)), "the healthy session did not connect"

    def _read(self):
        for line in self.proc.stdout:
            item = json.loads(line)
            if "rtt_ms" in item:
                self.samples.append((item["t"], item["rtt_ms"]))
            elif "closed" in item:
                self.closed = item["closed"]
            elif item.get("ready"):
                self.ready.set()

    def between(self, start, end):
        return [rtt for when, rtt in self.samples if start <= when <= end]

    def max_gap(self, start, end):
        times = [start] + [when for when, _ in self.samples if start <= when <= end] + [end]
        return max(b - a for a, b in zip(times, times[1:], strict=False))

    def finish(self):
        self.proc.terminate()
        self.proc.wait(timeout=scaled(10))
        assert self.closed is None, f"the healthy session was closed: {self.closed}"


# Hostile frames, each with what the server must answer: "error" (exactly one error
# message before the next pong) or "any" (any known message, or none).

JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20),
                         st.floats(allow_nan=False, allow_infinity=False))
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20,
)
BAD_IDS = st.one_of(
    st.floats(), st.lists(JSON_SCALARS, max_size=3), st.dictionaries(st.text(max_size=4),
                                                                      JSON_SCALARS, max_size=2),
    st.booleans(), st.integers(min_value=2**53), st.integers(max_value=-(2**53)),
    st.text(min_size=129, max_size=2000),
)


@st.composite
def hostile_heartbeats(draw):
    """Frames that claim to be a ping or pong and are malformed: each gets an error."""
    kind = draw(st.sampled_from(["ping", "pong"]))
    shape = draw(st.sampled_from(["bad_id", "bad_visible", "pong_no_id", "bad_json",
                                  "oversize", "deep", "huge_int"]))
    if shape == "bad_id":
        return {"type": kind, "id": draw(BAD_IDS)}, "json"
    if shape == "bad_visible":
        visible = draw(st.one_of(st.integers(), st.text(max_size=5), st.lists(st.none())))
        return {"type": kind, "id": 1, "visible": visible}, "json"
    if shape == "pong_no_id":
        return '{"type":"pong"}', "text"
    if shape == "bad_json":
        tail = draw(st.sampled_from(['"id":', '"id":1', '"id":1,,', '"id":1}}', '"id":[1',
                                     '"id":"\\x"}', '"id":1} trailing', '"id":NaN,']))
        return '{"type":"' + kind + '",' + tail, "text"
    if shape == "oversize":
        size = draw(st.integers(min_value=4097, max_value=MAX_FRAME - 100))
        char = draw(st.sampled_from(["x", "é", "漢", "😀"]))
        count = size // len(char.encode())
        return '{"type":"' + kind + '","id":"' + char * count + '"}', "text"
    if shape == "deep":
        depth = draw(st.integers(min_value=50, max_value=MAX_FRAME // 3))
        return '{"type":"' + kind + '","id":' + "[" * depth + "]" * depth + "}", "text"
    digits = draw(st.integers(min_value=17, max_value=6000))  # past 2**53, past 4300 digits
    return '{"type":"' + kind + '","id":' + "9" * digits + "}", "text"


@st.composite
def frames(draw):
    """One frame to send: (payload, expectation)."""
    family = draw(st.sampled_from(["heartbeat", "binary", "nesting", "text", "json"]))
    if family == "heartbeat":
        value, how = draw(hostile_heartbeats())
        return (json.dumps(value) if how == "json" else value), "error"
    if family == "binary":
        size = draw(st.sampled_from([0, 1, 17, 4096, 65536, MAX_FRAME]))
        fill = draw(st.binary(min_size=1, max_size=16))
        return (fill * (size // len(fill) + 1))[:size], "error"
    if family == "nesting":
        opener = draw(st.sampled_from(["[", '{"a":']))
        closer = "]" if opener == "[" else "}"
        depth = draw(st.integers(min_value=10_000,
                                 max_value=(MAX_FRAME - 1) // (len(opener) + len(closer))))
        return opener * depth + "1" + closer * depth, "error"
    if family == "text":
        return draw(st.text(max_size=300)), "any"
    return json.dumps(draw(JSON_VALUES)), "any"


class Attacker:
    """One connection that sends a frame, then two markers, and collects the answers.

    Heartbeat frames are answered by the mixin's own receive loop, other frames by the
    consumer, in order but later: a marker ping fences the first path, a marker chat
    message (broadcast back to the room) fences the second.
    """

    def __init__(self, server, room):
        self.url = f"{server.url}/ws/rooms/{room}/?tab=attacker"
        self.origin = server.origin
        self.ws = None
        self.marker = 0
        self.errors: dict[str, int] = {}
        self.sent = 0

    def connection(self):
        if self.ws is None:
            self.ws = connect(self.url, origin=self.origin, ping_interval=None,
                              max_size=None, open_timeout=scaled(20)).__enter__()
            assert json.loads(self.ws.recv(timeout=scaled(10)))["type"] == "hello"
        return self.ws

    def send(self, payload):
        ws = self.connection()
        self.marker += 1
        marker = f"m{self.marker}"
        ws.send(payload)
        ws.send(json.dumps({"type": "ping", "id": marker}))
        ws.send(json.dumps({"type": "chat", "text": marker}))
        self.sent += 1
        replies, fenced = [], set()
        while fenced != {"pong", "chat"}:
            try:
                message = json.loads(ws.recv(timeout=scaled(20)))
            except ConnectionClosed:
                self.ws = None
                raise AssertionError(
                    f"connection closed by {payload[:80]!r}: {ws.close_code} {ws.close_reason}"
                ) from None
            assert message.get("type") in KNOWN_TYPES, message
            if message["type"] in {"pong", "chat"} and marker in (message.get("id"),
                                                                  message.get("text")):
                fenced.add(message["type"])
                continue
            if message["type"] == "ping":
                ws.send(json.dumps({"type": "pong", "id": message["id"]}))
                continue
            if message["type"] == "error":
                self.errors[message["code"]] = self.errors.get(message["code"], 0) + 1
            replies.append(message)
        return replies

    def close(self):
        if self.ws is not None:
            self.ws.close()


@pytest.fixture
def server(migrated_db, tmp_path):
    # The flood limit is off here (server_env), so a close can only come from a fault.
    env = server_env(migrated_db, HEARTBEAT_INTERVAL="5", HEARTBEAT_TIMEOUT="5")
    server = ServerProcess(tmp_path, env, name="fuzz").start()
    yield server
    server.stop()


def test_fuzzed_frames_get_errors_no_traceback_and_other_sessions_keep_their_pongs(server):
    healthy = Healthy(server, "calm", every=0.02)
    attacker = Attacker(server, "storm")
    time.sleep(1.5)
    baseline_end = time.monotonic()
    kinds = {"error": 0, "any": 0}

    @settings(max_examples=200, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.large_base_example])
    @given(frames())
    def attack(frame):
        payload, expect = frame
        kinds[expect] += 1
        replies = attacker.send(payload)
        errors = [m for m in replies if m["type"] == "error"]
        if expect == "error":
            assert len(errors) == 1, (payload[:200], replies)
            assert errors[0]["code"] in ERROR_CODES, errors
            assert isinstance(errors[0].get("detail"), str)

    try:
        attack()
        attack_end = time.monotonic()
        time.sleep(0.5)
    finally:
        attacker.close()
        healthy.finish()
    before = [rtt for when, rtt in healthy.samples if when <= baseline_end]
    during = healthy.between(baseline_end, attack_end)
    gap = healthy.max_gap(baseline_end, attack_end)
    log = server.log()
    print(f"\n[fuzz] {attacker.sent} hostile frames in {attack_end - baseline_end:.1f} s "
          f"({kinds['error']} that must get an error, {kinds['any']} free-form); errors "
          f"received {dict(sorted(attacker.errors.items()))}. Healthy session: "
          f"p50/p99 {statistics.median(before):.2f}/{percentile(before, 0.99):.2f} ms "
          f"before, {statistics.median(during):.2f}/{percentile(during, 0.99):.2f} ms during "
          f"({len(during)} pongs, longest gap {gap * 1000:.0f} ms)")
    assert "Traceback" not in log, log[-5000:]
    assert "Exception inside application" not in log
    assert len(during) >= 20
    assert percentile(during, 0.99) <= RTT_P99_BOUND_MS
    assert gap <= MAX_PONG_GAP


def test_a_frame_over_daphnes_limit_is_refused_without_a_traceback(server):
    with connect(f"{server.url}/ws/rooms/big/", origin=server.origin, ping_interval=None) as ws:
        ws.recv(timeout=scaled(10))
        ws.send('{"type":"ping","id":"' + "x" * (1024 * 1024 + 1) + '"}')
        try:
            while True:
                ws.recv(timeout=scaled(10))
        except ConnectionClosed:
            pass
        # 1009 (message too big) when the close frame makes it back; 1006 when Daphne
        # drops the connection while the client is still writing the frame.
        assert ws.close_code in {1009, 1006}
    with connect(f"{server.url}/ws/rooms/big/", origin=server.origin) as ws:
        assert json.loads(ws.recv(timeout=scaled(10)))["type"] == "hello"
    assert "Traceback" not in server.log()


async def flood(server, n):
    """One flooder: pings as fast as it can, at most FLOOD_WINDOW unanswered, until closed.

    It stops sending once the close notice arrives (the server drops any heartbeat that
    follows it), then reads until the close frame. Returns what it saw.
    """
    async with aconnect(f"{server.url}/ws/rooms/storm/?tab=flood{n}", origin=server.origin,
                        ping_interval=None, open_timeout=scaled(20)) as ws:
        async with asyncio.timeout(scaled(10)):
            await ws.recv()  # hello
        seen = {"pongs": 0, "notice": None, "sent": 0}
        progress = asyncio.Event()

        async def reader():
            try:
                async for raw in ws:
                    message = json.loads(raw)
                    seen["pongs"] += message["type"] == "pong"
                    if message["type"] == "close":
                        seen["notice"] = message
                    progress.set()
            except ConnectionClosed:
                pass
            finally:
                progress.set()

        reading = asyncio.create_task(reader())
        try:
            async with asyncio.timeout(scaled(15)):
                while (seen["notice"] is None and not reading.done()
                       and seen["sent"] < FLOOD_PINGS):
                    if seen["sent"] - seen["pongs"] >= FLOOD_WINDOW:
                        progress.clear()
                        await progress.wait()  # a pong, the notice, or the close
                        continue
                    try:
                        await ws.send(json.dumps({"type": "ping", "id": seen["sent"]}))
                    except ConnectionClosed:
                        break
                    seen["sent"] += 1
                await reading
        finally:
            reading.cancel()
        return {**seen, "code": ws.close_code, "rcvd": ws.protocol.close_rcvd,
                "ended": time.monotonic()}


async def test_ping_flood_gets_4429_and_other_sessions_keep_their_pongs(migrated_db, tmp_path):
    # The shipped limit: 20 heartbeat frames per second, bursts of 60.
    env = server_env(migrated_db, HEARTBEAT_RATE_LIMIT="20", HEARTBEAT_INTERVAL="5",
                     HEARTBEAT_TIMEOUT="5")
    server = ServerProcess(tmp_path, env, name="flood").start()
    healthy = Healthy(server, "calm", every=0.1)  # 10 pings a second, under the limit
    try:
        await asyncio.sleep(1.5)
        started = time.monotonic()
        results = await asyncio.gather(*(flood(server, n) for n in range(5)))
        ended = max(r["ended"] for r in results)
        # The flood may be over in tens of milliseconds: watch the healthy session for a
        # second at least, the closes and the dropped pings included.
        watched = max(ended, started + 1.0)
        await asyncio.sleep(watched - time.monotonic() + 0.5)
    finally:
        healthy.finish()
        server.stop()
    during = healthy.between(started, watched)
    gap = healthy.max_gap(started, watched)
    print(f"\n[flood] 5 connections pinging as fast as they can (at most {FLOOD_WINDOW} "
          f"unanswered each): codes {[r['code'] for r in results]}, pongs before the close "
          f"{[r['pongs'] for r in results]}, pings sent {[r['sent'] for r in results]}; "
          f"flood over in {ended - started:.2f} s. Healthy session over "
          f"{watched - started:.2f} s from its start: {len(during)} pongs, p50/p99 "
          f"{statistics.median(during):.2f}/{percentile(during, 0.99):.2f} ms, longest gap "
          f"{gap * 1000:.0f} ms")
    for r in results:
        # The notice comes first, in a data frame: the reason and when to come back.
        assert r["notice"] is not None, f"no close notice before the connection ended: {r}"
        assert r["notice"]["code"] == 4429 and r["notice"]["retry_after_ms"] == 5000, r
        # Then the close frame itself; 1006 would mean it never arrived.
        assert r["rcvd"] is not None and r["code"] == 4429, r
        assert r["pongs"] <= 60 + 20 * (ended - started) + 1  # the burst, then the rate
    # Reading the flood keeps the process busy for a moment: pongs slow down, never stop.
    assert during and gap <= FLOOD_MAX_GAP
    # Pings still queued when the 4429 close goes out are dropped, not answered on a
    # closing socket: nothing in the log.
    assert "Traceback" not in server.log(), server.log()[-5000:]


WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
PING_TEXT = b'{"type":"ping","id":"f1"}'
MASKED_PING = bytes([0x81, 0x80 | len(PING_TEXT)]) + b"\0\0\0\0" + PING_TEXT  # mask 0


async def test_a_flood_closed_4429_is_left_unread_and_its_connection_dropped(
        migrated_db, tmp_path):
    """After its 4429 a flooder's further frames are neither read nor parsed: they stay in
    its socket (a small send buffer, so the kernel holds little of them), the close frame
    still reaches it, and the connection is dropped at the close handshake's timeout."""
    import socket

    env = server_env(migrated_db, HEARTBEAT_RATE_LIMIT="20", HEARTBEAT_INTERVAL="5",
                     HEARTBEAT_TIMEOUT="5")  # the shipped limit
    server = ServerProcess(tmp_path, env, name="unread").start()
    try:
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write((f"GET /ws/rooms/unread/ HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                      f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "
                      f"{WS_KEY}\r\nSec-WebSocket-Version: 13\r\nOrigin: {server.origin}"
                      f"\r\n\r\n").encode())
        async with asyncio.timeout(scaled(10)):
            assert b" 101 " in await reader.readuntil(b"\r\n\r\n")
        seen = bytearray()
        got_close = asyncio.Event()

        async def read_all():
            try:
                while chunk := await reader.read(65536):
                    seen.extend(chunk)
                    if b'"close"' in seen and bytes([0x88]) in seen:
                        got_close.set()
            except ConnectionError:
                pass  # dropped with a reset: unread data was still waiting on its side

        reading = asyncio.create_task(read_all())
        async with asyncio.timeout(scaled(15)):
            while b'"close"' not in seen:  # over the frame budget: the notice, the close
                writer.write(MASKED_PING * 50)
                await asyncio.sleep(0.01)
        total = 64 * 1024 * 1024
        writer.write(MASKED_PING * (total // len(MASKED_PING)))
        written = left = writer.transport.get_write_buffer_size()
        async with asyncio.timeout(scaled(15)):
            while not reading.done():  # until the server drops the connection
                left = min(left, writer.transport.get_write_buffer_size() or left)
                await asyncio.sleep(0.005)
        writer.transport.abort()
    finally:
        server.stop()
    log = server.log()
    assert b'"code":4429' in seen and got_close.is_set(), bytes(seen[-300:])
    assert "the rest of its frames left unread" in log, log[-3000:]
    # Of 64 MB written after the notice, only what the kernel's buffers took left the
    # client while the connection lasted: the server read none of it.
    drained = written - left
    assert drained < 16 * 1024 * 1024, f"{drained:,} bytes drained of {written:,}"
    assert "Traceback" not in log
