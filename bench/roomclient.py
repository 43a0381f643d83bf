"""A client process of the big-room benchmark: raw connections in one room that count what
they receive, send typing signals, or ping on a fixed schedule.

Started by ``bench/bigroom.py`` with one JSON argument (``port``, ``path``, ``source``);
answers each command (a JSON line on stdin) with one JSON line on stdout:

- ``{"cmd": "open", "n": K, "inflight": F, "rate": R, "until": T}``: open K more
  connections, F handshakes at a time, at most R a second (none: as fast as they go),
  none started after the wall time T. A connection counts as joined when its
  ``presence_state`` arrived; a refusal before it (the admission gate's 4013) is retried
  after its hint and the bundled client's backoff, a failed attempt after the backoff.
- ``{"cmd": "mark"}``: the connections open now are the *existing members*; what they
  receive from now on is counted apart from what the newcomers receive.
- ``{"cmd": "counters"}``: frames and payload bytes received, by message type, for the
  existing members and for the others; what the observers (the first connection of the
  process) saw of diffs and counts; typing signals received, per sender.
- ``{"cmd": "typing", "first": S, "senders": K, "rate": R, "seconds": D, "room": ROOM}``:
  the first K connections each send ``broadcast`` event ``typing`` R times a second for D
  seconds, each with its sender number (from S), a sequence number and the wall time.
- ``{"cmd": "probe", "every": E}`` / ``{"cmd": "unprobe"}``: every connection sends a
  protocol ``ping`` every E seconds on a fixed schedule (open loop: a stall delays every
  ping sent during it, and each of them is counted) until ``unprobe``, which answers
  with every (send time, round trip) and the pings left unanswered.

Frames are classified by the ``type`` that opens them (the server writes compact JSON,
``{"type":"...``), so only the frames the benchmark reads are decoded.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import sys
import time
from collections import Counter

from bench import rawws
from bench.loadclient import Refused, retry_delay

HEAD = b'{"type":"'
LATENCY_SAMPLE = 20  # every 20th connection records the delay of each signal it gets
SENDER = re.compile(rb'"data":\{"s":(\d+)')  # a typing signal's sender, as sent below


class Conn(rawws.Client):
    """One member connection, with what the benchmark needs to know of it."""

    index = 0
    hint_ms: int | None = None
    state_bytes: int | None = None
    greeted: asyncio.Future
    joined: asyncio.Future


class Room:
    def __init__(self, cfg):
        self.cfg = cfg
        self.conns: list[Conn | None] = []
        self.mark = 0
        self.old: dict[str, list[int]] = {}  # type -> [frames, bytes], existing members
        self.new: dict[str, list[int]] = {}  # the same for the others
        self.errors: Counter = Counter()
        self.refusals: Counter = Counter()
        self.closes: Counter = Counter()
        self.obs = {"diffs": 0, "joins": 0, "leaves": 0, "counts": 0, "last_count": None}
        self.signals: Counter = Counter()  # sender number -> signals received by anyone
        self.signal_delay: list[float] = []
        self.first_seen: dict[int, list[int]] = {}  # at the observer: sender -> seqs
        self.sent: Counter = Counter()  # typing signals sent, per sender number
        self.pings: dict[tuple[int, int], tuple[float, float]] = {}
        self.rtts: list[tuple[float, float]] = []
        self.probing = False
        self.opening: set[Conn] = set()  # attempts not joined yet

    # Frames ----------------------------------------------------------------------------

    def on_text(self, conn: Conn, payload: bytes) -> None:
        n = len(payload)
        if payload.startswith(HEAD):
            kind = payload[9:payload.find(b'"', 9)].decode("ascii", "replace")
        else:
            kind = "other"
        group = self.old if conn.index < self.mark else self.new
        slot = group.get(kind)
        if slot is None:
            slot = group[kind] = [0, 0]
        slot[0] += 1
        slot[1] += n
        if kind == "ping":  # the server's probe: answer it, as the bundled client does
            conn.send_text(json.dumps({"type": "pong", "id": json.loads(payload).get("id")}))
        elif kind == "hello":
            if not conn.greeted.done():
                conn.greeted.set_result(True)
        elif kind == "presence_state":
            if conn.state_bytes is None:
                conn.state_bytes = n
            if not conn.joined.done():
                conn.joined.set_result(time.perf_counter())
        elif kind == "broadcast":
            self.on_signal(conn, json.loads(payload))
        elif kind == "broadcasts":  # a big room's pass: several signals in one frame
            if conn.index % LATENCY_SAMPLE == 0:
                for signal in json.loads(payload).get("signals") or ():
                    self.on_signal(conn, signal)
            else:
                # Only counted, per sender, without decoding: a client process that decodes
                # every frame of a room of thousands runs out of CPU before the server does.
                self.signals.update(int(n) for n in SENDER.findall(payload))
        elif kind == "pong":
            sent = self.pings.pop((conn.index, json.loads(payload).get("id")), None)
            if sent is not None:
                self.rtts.append((sent[0], time.perf_counter() - sent[1]))
        elif kind in ("presence_diff", "presence_count") and conn.index == 0:
            message = json.loads(payload)
            if kind == "presence_count":
                self.obs["counts"] += 1
                self.obs["last_count"] = message.get("count")
            else:
                self.obs["diffs"] += 1
                self.obs["joins"] += sum(len(m["metas"]) for m in message["joins"].values())
                self.obs["leaves"] += sum(len(m["metas"]) for m in message["leaves"].values())
        elif kind == "close":
            hint = json.loads(payload).get("retry_after_ms")
            conn.hint_ms = hint if isinstance(hint, int | float) else None

    def on_signal(self, conn: Conn, message: dict) -> None:
        data = message.get("data") or {}
        sender = data.get("s")
        self.signals[sender] += 1
        if conn.index % LATENCY_SAMPLE == 0 and "t" in data:
            self.signal_delay.append(time.time() - data["t"])
        if conn.index == 0:
            self.first_seen.setdefault(sender, []).append(data.get("q"))

    def on_close(self, conn: Conn) -> None:
        self.opening.discard(conn)
        code = conn.close_code if conn.close_code is not None else 1006
        if not conn.joined.done():
            error = Refused(code, conn.hint_ms)
            for future in (conn.greeted, conn.joined):
                if not future.done():
                    future.set_exception(error)
                    future.exception()  # retrieved: no "never retrieved" warning
            return
        self.closes[code] += 1

    # Opening ---------------------------------------------------------------------------

    async def open_one(self, i: int) -> tuple[Conn, float, float]:
        def make(*args, **kwargs):
            conn = Conn(*args, **kwargs)
            conn.index = i
            loop = asyncio.get_running_loop()
            conn.greeted, conn.joined = loop.create_future(), loop.create_future()
            self.opening.add(conn)
            return conn

        timeout = self.cfg.get("timeout", 120.0)
        t = time.perf_counter()
        conn = await rawws.connect("127.0.0.1", self.cfg["port"], self.cfg["path"],
                                   source=self.cfg.get("source"), on_text=self.on_text,
                                   on_close=self.on_close, factory=make, timeout=timeout)
        try:
            await asyncio.wait_for(asyncio.shield(conn.greeted), timeout)
            joined = await asyncio.wait_for(asyncio.shield(conn.joined), timeout)
        except TimeoutError:
            conn.transport.abort()
            raise TimeoutError("no presence_state") from None
        except asyncio.CancelledError:
            conn.transport.abort()  # given up at the budget
            raise
        finally:
            self.opening.discard(conn)
        return conn, t, joined

    async def open_many(self, n: int, inflight: int, rate: float | None,
                        until: float | None) -> dict:
        sem = asyncio.Semaphore(inflight)
        start = len(self.conns)
        self.conns.extend([None] * n)
        joins: list[tuple[float, float, int]] = []  # (wall time joined, ms to the state, bytes)
        skipped = 0
        t0 = time.perf_counter()

        async def one(i: int, k: int) -> None:
            nonlocal skipped
            if rate:
                await asyncio.sleep(max(0.0, t0 + k / rate - time.perf_counter()))
            attempt = 0
            while True:
                if until is not None and time.time() >= until:
                    skipped += 1
                    return
                async with sem:
                    try:
                        conn, t, joined = await self.open_one(i)
                        self.conns[i] = conn
                        joins.append((time.time(), (joined - t) * 1000, conn.state_bytes))
                        return
                    except Refused as exc:
                        self.refusals[exc.code] += 1
                        hint = (exc.hint_ms or 0) / 1000
                    except Exception as exc:
                        # As the bundled client: a failed attempt (a 403 from Daphne's
                        # connect timeout, a reset) is retried after the backoff.
                        self.errors[str(exc)[:60] or type(exc).__name__] += 1
                        hint = 0.0
                attempt += 1
                if attempt >= 20:
                    self.errors["refused too often"] += 1
                    return
                await asyncio.sleep(retry_delay(attempt, hint))

        tasks = [asyncio.ensure_future(one(start + k, k)) for k in range(n)]
        if until is None:
            await asyncio.gather(*tasks)
        else:
            # The budget is a hard stop: attempts still waiting for their state then are
            # given up (their connections aborted) and counted as skipped.
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, until - time.time()))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            skipped += len(pending)
            for conn in list(self.opening):
                if conn.transport is not None:
                    conn.transport.abort()
            self.opening.clear()
        joins.sort()
        return {"event": "opened", "ok": len(joins), "skipped": skipped,
                "failed": n - len(joins) - skipped, "errors": dict(self.errors),
                "refusals": dict(self.refusals), "joins": joins}

    # Typing and probes -----------------------------------------------------------------

    async def typing(self, first: int, senders: int, rate: float, seconds: float,
                     room: str) -> None:
        async def one(conn: Conn, sender: int) -> None:
            t0 = time.perf_counter() + random.random() / rate  # senders out of step
            for q in range(int(rate * seconds)):
                await asyncio.sleep(max(0.0, t0 + q / rate - time.perf_counter()))
                conn.send_text(json.dumps({"type": "broadcast", "room": room,
                                           "event": "typing",
                                           "data": {"s": sender, "q": q, "t": time.time()}},
                                          separators=(",", ":")))
                self.sent[sender] += 1

        live = [c for c in self.conns if c is not None and c.is_open][:senders]
        await asyncio.gather(*(one(c, first + k) for k, c in enumerate(live)))

    async def probe(self, every: float) -> None:
        async def one(conn: Conn) -> None:
            t0, k = time.perf_counter(), 0
            while self.probing and conn.is_open:
                self.pings[(conn.index, k)] = (time.time(), time.perf_counter())
                conn.send(rawws.frame(f'{{"type":"ping","id":{k}}}'))
                k += 1
                await asyncio.sleep(max(0.0, t0 + k * every - time.perf_counter()))

        self.probing = True
        await asyncio.gather(*(one(c) for c in self.conns if c is not None))

    def counters(self) -> dict:
        return {"event": "counters", "t": time.time(), "old": self.old, "new": self.new,
                "n_old": sum(1 for c in self.conns[:self.mark] if c is not None and c.is_open),
                "open": sum(1 for c in self.conns if c is not None and c.is_open),
                "closes": dict(self.closes), "observer": self.obs,
                "signals": dict(self.signals), "sent": dict(self.sent),
                "signals_total": sum(self.signals.values())}


async def main(cfg):
    room = Room(cfg)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks = set()

    def reply(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def background(coro):
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    while True:
        line = (await reader.readline()).decode().strip()
        if not line or line == "quit":
            break
        cmd = json.loads(line)
        what = cmd["cmd"]
        if what == "open":
            reply(await room.open_many(cmd["n"], cmd.get("inflight", 25), cmd.get("rate"),
                                       cmd.get("until")))
        elif what == "mark":
            room.mark = len(room.conns)
            reply(room.counters())
        elif what == "counters":
            reply(room.counters())
        elif what == "delays":
            delays, room.signal_delay = room.signal_delay, []
            seen, room.first_seen = room.first_seen, {}
            reply({"event": "delays", "delays": delays,
                   "observer_seqs": {str(k): v for k, v in seen.items()}})
        elif what == "typing":
            background(room.typing(cmd["first"], cmd["senders"], cmd["rate"],
                                   cmd["seconds"], cmd["room"]))
            reply({"event": "typing", "t": time.time()})
        elif what == "probe":
            background(room.probe(cmd["every"]))
            reply({"event": "probe", "t": time.time()})
        elif what == "unprobe":
            room.probing = False
            await asyncio.sleep(1.0)  # the last pongs
            rtts, room.rtts = room.rtts, []
            lost = len(room.pings)
            room.pings.clear()
            reply({"event": "rtts", "rtts": rtts, "unanswered": lost})
    for c in room.conns:
        if c is not None and c.transport is not None:
            c.transport.abort()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
