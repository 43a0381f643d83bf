"""A load-client process: holds many raw WebSocket connections, driven by commands on stdin.

Started by the benchmarks with one JSON argument; answers each command line with one
JSON line on stdout. Connections answer the mixin's server probes (so they are idle but
healthy), can be muted all at once (a frozen client: nothing sent, still reading), and
can reconnect with the bundled JS client's backoff after losing the server.

A connection counts as back only once it got the server's ``hello``. A refused
handshake (the admission gate accepts it, sends ``{"type":"close","code":4013,
"retry_after_ms":N}`` and closes with 4013; a draining server does the same with
4001) is retried as heartbeat.js does: after ``retry_after_ms`` plus the first
attempt's jitter (not the grown backoff), with the attempt counter going up;
refusals are recorded by close code.

Commands: connect | mute | report | live | stats | quit
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time

from bench import rawws


def backoff(attempt: int, base=1.0, low=0.5, high=30.0) -> float:
    """The bundled client's delay (heartbeat.js ``backoff``), in seconds: full jitter."""
    if attempt <= 0:
        return random.random() * base
    cap = min(high, base * 2 ** min(attempt, 30))
    floor = min(low, cap)
    return floor + random.random() * (cap - floor)


# How the bundled client waits after a hint, recorded with the results that used it.
HINT_RULE = "first-jitter"


def retry_delay(attempt: int, hint_s: float | None) -> float:
    """heartbeat.js's wait before attempt ``attempt``: a server's hint plus U(0, base),
    or the grown backoff when the server gave none."""
    return hint_s + backoff(0) if hint_s else backoff(attempt)


class Refused(Exception):
    """The server sent its close notice (or closed) before ``hello``."""

    def __init__(self, code: int | None, hint_ms: int | None):
        super().__init__(f"closed {code} before hello")
        self.code, self.hint_ms = code, hint_ms


class Load:
    def __init__(self, cfg):
        self.cfg = cfg
        self.host = cfg.get("host", "127.0.0.1")
        self.port = cfg["port"]
        self.source = cfg.get("source")
        self.clients: list[rawws.Client | None] = [None] * cfg["count"]
        self.last_sent = [0.0] * cfg["count"]
        self.sessions = [""] * cfg["count"]
        self.tokens = [""] * cfg["count"]  # anonymous identity tokens (identity frames)
        self.keys = [""] * cfg["count"]  # member keys the identity frames named
        # (member key, closed at, back at) of every reconnection: how long a tab was away.
        self.returns: list[tuple[str, float, float]] = []
        self.closes: dict[int, int] = {}
        self.errors: dict[str, int] = {}
        self.probes = 0
        self.arrivals: list[float] = []
        self.failures: list[float] = []
        self.connect_ms: list[float] = []
        self.muted = False
        self.lost_count = 0
        self.sem = asyncio.Semaphore(cfg.get("inflight", 50))
        self.rtts: list[tuple[float, float]] = []
        self.refusals: dict[int, int] = {}  # close code before hello (4013, 4001, ...)
        self.hints_ms: list[int] = []  # the retry_after_ms of every notice
        self.notices: dict[int, int] = {}  # close notices of established connections

    def path(self, i):
        path = self.cfg["path"].format(room=(self.cfg.get("offset", 0) + i) //
                                       self.cfg.get("per_room", 100))
        if self.cfg.get("tabs"):
            # As heartbeat.js: a tab id kept across reconnects, and the anonymous
            # identity token the server issued, presented again (?anon=, empty at first).
            path += f"?tab=t{self.cfg.get('offset', 0) + i}&anon={self.tokens[i]}"
        return path

    def on_text(self, client, payload):
        if b'"ping"' in payload and not client.muted:
            message = json.loads(payload)
            if message.get("type") == "ping":
                client.send_text(json.dumps({"type": "pong", "id": message.get("id")}))
                self.last_sent[client.index] = client.last_sent
                self.probes += 1
        elif b'"hello"' in payload:
            message = json.loads(payload)
            if message.get("type") == "hello":
                self.sessions[client.index] = message.get("session", "") or ""
                if not client.greeted.done():
                    client.greeted.set_result(True)
        elif b'"identity"' in payload:
            message = json.loads(payload)
            if message.get("type") == "identity" and message.get("token"):
                self.tokens[client.index] = message["token"]
                self.keys[client.index] = message.get("key") or ""
        elif b'"close"' in payload:
            message = json.loads(payload)
            if message.get("type") == "close":
                hint = message.get("retry_after_ms")
                client.hint_ms = hint if isinstance(hint, int | float) else None
                client.notice_code = message.get("code")
                if client.hint_ms is not None:
                    self.hints_ms.append(int(client.hint_ms))

    def on_close(self, client):
        code = client.close_code if client.close_code is not None else 1006
        if not client.greeted.done() and (self.cfg.get("hello", True)
                                          or self.clients[client.index] is not client):
            # Refused (or lost) before hello: the attempt that opened it retries.
            client.greeted.set_exception(Refused(code, client.hint_ms))
            client.greeted.exception()  # retrieved: no "never retrieved" warning
            return
        self.closes[code] = self.closes.get(code, 0) + 1
        if client.notice_code is not None:
            self.notices[code] = self.notices.get(code, 0) + 1
        # Only a session that was established starts a reconnect loop; a failed attempt
        # is retried by the loop that made it.
        if self.cfg.get("reconnect") and not self.muted and self.clients[client.index] is client:
            self.lost_count += 1
            asyncio.ensure_future(self.reconnect(client.index, client.hint_ms))

    async def open_one(self, i):
        """Open connection i and wait for hello; Refused if closed before it."""
        def make(*args, **kwargs):
            client = rawws.Client(*args, **kwargs)
            client.index, client.muted = i, self.muted
            client.greeted = asyncio.get_running_loop().create_future()
            client.hint_ms = client.notice_code = None
            return client

        t = time.perf_counter()
        timeout = self.cfg.get("timeout", 30.0)
        client = await rawws.connect(self.host, self.port, self.path(i), source=self.source,
                                     on_text=self.on_text, on_close=self.on_close,
                                     factory=make, timeout=timeout)
        try:
            if self.cfg.get("hello", True):  # False for consumers that send no hello
                await asyncio.wait_for(asyncio.shield(client.greeted), timeout)
        except TimeoutError:
            client.transport.abort()
            raise TimeoutError("no hello") from None
        self.connect_ms.append((time.perf_counter() - t) * 1000)
        self.clients[i] = client
        self.last_sent[i] = time.time()
        return client

    async def connect_all(self):
        async def one(i):
            attempt, tries = 0, self.cfg.get("connect_tries", 20)
            while True:
                async with self.sem:
                    try:
                        await self.open_one(i)
                        return
                    except Refused as exc:
                        self.refusals[exc.code] = self.refusals.get(exc.code, 0) + 1
                        hint = (exc.hint_ms or 0) / 1000
                    except Exception as exc:
                        key = str(exc)[:60] or type(exc).__name__
                        self.errors[key] = self.errors.get(key, 0) + 1
                        return
                attempt += 1
                if attempt >= tries:
                    key = "refused too often"
                    self.errors[key] = self.errors.get(key, 0) + 1
                    return
                # Outside the semaphore: a client told to wait holds no slot.
                await asyncio.sleep(retry_delay(attempt, hint))

        t0 = time.time()
        await asyncio.gather(*(one(i) for i in range(len(self.clients))))
        ok = sum(1 for c in self.clients if c is not None and c.is_open)
        return {"event": "connected", "ok": ok, "failed": len(self.clients) - ok,
                "errors": self.errors, "t0": t0, "t1": time.time(),
                "connect_ms": self.connect_ms, "refusals": self.refusals,
                "hints_ms": self.hints_ms}

    async def reconnect(self, i, hint_ms=None):
        """heartbeat.js after a close: wait (``retry_delay``), try, repeat."""
        attempt = 0
        self.clients[i] = None
        closed_at = time.time()
        while True:
            await asyncio.sleep(retry_delay(attempt, (hint_ms or 0) / 1000))
            try:
                await self.open_one(i)
            except Exception as exc:
                self.failures.append(time.time())
                hint_ms = None
                if isinstance(exc, Refused):
                    self.refusals[exc.code] = self.refusals.get(exc.code, 0) + 1
                    hint_ms = exc.hint_ms
                    key = f"refused {exc.code}"
                elif isinstance(exc, ConnectionRefusedError):
                    key = "connection refused"
                elif isinstance(exc, OSError) and exc.errno:
                    key = os.strerror(exc.errno).lower()
                else:
                    key = str(exc)[:60] or type(exc).__name__
                self.errors[key] = self.errors.get(key, 0) + 1
                attempt += 1
                continue
            self.arrivals.append(time.time())
            self.returns.append((self.keys[i], closed_at, self.arrivals[-1]))
            return

    async def pinger(self, every: float):
        """One connection pinging every ``every`` s; records (send time, RTT)."""
        path = self.cfg.get("pinger_path", "/ws/bare/")
        state = {}

        def on_text(client, payload):
            if b'"pong"' in payload and "t" in state:
                self.rtts.append((state["wall"], time.perf_counter() - state.pop("t")))

        client = None
        while True:
            if client is None or not client.is_open:
                state.pop("t", None)
                try:
                    client = await rawws.connect(self.host, self.port, path, on_text=on_text,
                                                 timeout=5)
                except Exception:
                    client = None
                    await asyncio.sleep(0.1)
                    continue
            if "t" in state and time.perf_counter() - state["t"] > 10:
                self.rtts.append((state["wall"], float("nan")))  # lost; counted as a gap
                state.pop("t")
            if "t" not in state:
                state["t"], state["wall"] = time.perf_counter(), time.time()
                client.send(rawws.PING)
            await asyncio.sleep(every)


async def main(cfg):
    load = Load(cfg)
    if cfg.get("pinger"):
        asyncio.ensure_future(load.pinger(cfg.get("ping_every", 0.05)))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def reply(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    while True:
        line = (await reader.readline()).decode().strip()
        if not line or line == "quit":
            break
        if line == "connect":
            reply(await load.connect_all())
        elif line == "mute":
            load.muted = True
            for c in load.clients:
                if c is not None:
                    c.muted = True
            reply({"event": "muted", "t": time.time()})
        elif line == "report":
            reply({"event": "report", "last_sent": load.last_sent, "sessions": load.sessions,
                   "closed_at": [c.closed_at if c else None for c in load.clients],
                   "close_code": [c.close_code if c else None for c in load.clients]})
        elif line == "live":
            reply({"event": "live", "sessions": [
                load.sessions[i] for i, c in enumerate(load.clients) if c and c.is_open]})
        elif line == "stats":
            reply({"event": "stats", "open": sum(1 for c in load.clients if c and c.is_open),
                   "closes": load.closes, "probes": load.probes, "errors": load.errors,
                   "arrivals": load.arrivals, "returns": load.returns, "failures": load.failures,
                   "lost": load.lost_count, "rtts": load.rtts, "refusals": load.refusals,
                   "notices": load.notices, "hints_ms": load.hints_ms,
                   "connect_ms": load.connect_ms})
    for c in load.clients:
        if c is not None and c.transport is not None:
            c.transport.abort()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
