"""Collector pauses and memory of a server-like heap: Python's thresholds, a tuple, and "auto".

    .venv/bin/python -m bench.collector [--sessions 5000,19000] [--messages 400000]
    .venv/bin/python -m bench.collector --render   # the table of the saved results again

Each run is a fresh process (a freeze cannot be undone, and memory is per process). It
starts as a server does (Django set up with the test settings, the demo's ASGI application,
Daphne and Twisted imported) and applies one ``HEARTBEAT_GC_THRESHOLD`` value with
``heartbeat_app.collector.tune()``, as the first session of a server does. Then:

- the ramp: the sessions open one by one, 20 messages handled after each;
- the churn: ``--messages`` more messages, and every 500th replaces a session by a new one
  (a reconnect: the old one becomes cyclic garbage).

A session is a ``SessionState`` and consumer-like objects around it (its scope, handlers
bound to it, metas), about 66 tracked containers with reference cycles. A message is a
frame parsed and dispatched to its session's handler; every third goes through a handle
that holds its callback in a cycle, as the event loop's handles and futures do. Every
collection is timed by a ``gc.callbacks`` hook. Memory: the process's RSS, sampled every
2,000 messages of the churn; "held" is its peak less its value when the churn began, and
"garbage left" the objects a last ``gc.collect()`` frees. docs/deployment.md quotes the
table this prints; the results go to bench/results/collector.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import time

MODES = {"python": None, "tuple": (50000, 20, 100), "auto": "auto"}
LABELS = {"python": "`None` (Python's 700, 10, 10)", "tuple": "`(50000, 20, 100)`",
          "auto": '`"auto"`'}
MESSAGES_PER_OPEN = 20
RECONNECT_EVERY = 500
CYCLE_EVERY = 3


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Consumer:
    """Stands in for a consumer and what it holds: a scope, handlers bound to it, metas."""

    def __init__(self, rng: random.Random):
        from heartbeat_app.state import SessionState

        self.state = SessionState(tab=os.urandom(8).hex(), interval=25.0, timeout=10.0,
                                  user_key=f"u{rng.randrange(10**6)}", path="/ws/")
        self.scope = {"type": "websocket", "path": "/ws/",
                      "headers": [(b"h%d" % i, b"v" * 20) for i in range(12)],
                      "client": ["127.0.0.1", rng.randrange(1024, 65535)],
                      "url_route": {"args": (), "kwargs": {}}, "session": {},
                      "cookies": {"sessionid": os.urandom(8).hex()}}
        self.handlers = {name: getattr(self, name) for name in ("ping", "pong", "other")}
        self.metas = [{"i": i, "rooms": [i], "owner": self} for i in range(25)]
        self.buffers = [bytearray(512) for _ in range(8)]
        self.state.on_probe = self.ping
        self.state.extra["consumer"] = self

    def ping(self, payload):
        return {"type": "pong", "id": payload}

    def pong(self, payload):
        return None

    def other(self, payload):
        return [payload]


class Handle:
    """A callback as the event loop holds one: in a cycle with what refers to it."""

    __slots__ = ("callback", "args", "owner")

    def __init__(self, callback, args):
        self.callback, self.args, self.owner = callback, args, {"handle": self}


def child(mode: str, sessions: int, messages: int) -> dict:
    """One run in this process: start up, tune, ramp, churn."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    import daphne.server  # noqa: F401  (a server process has Daphne and Twisted loaded)

    import project.asgi  # noqa: F401
    from heartbeat_app import collector

    startup_objects = len(gc.get_objects())
    began = time.perf_counter()
    collector.tune(MODES[mode])
    tune_ms = (time.perf_counter() - began) * 1000
    frozen = gc.get_freeze_count()

    pauses: dict[str, dict[int, list[float]]] = {"ramp": {0: [], 1: [], 2: []},
                                                 "churn": {0: [], 1: [], 2: []}}
    phase = ["ramp"]
    since = [0.0]

    def timer(event, info):
        if event == "start":
            since[0] = time.perf_counter()
        else:
            pauses[phase[0]][info["generation"]].append(time.perf_counter() - since[0])

    rng = random.Random(12)
    frames = [json.dumps({"type": kind, "id": str(i)})
              for i, kind in enumerate(("ping", "pong", "other") * 10)]
    live: list[Consumer] = []

    def handle(n: int) -> None:
        consumer = live[n % len(live)]
        message = json.loads(frames[n % len(frames)])
        callback = consumer.handlers[message["type"]]
        if n % CYCLE_EVERY == 0:
            h = Handle(callback, (message["id"],))
            h.callback(*h.args)
        else:
            callback(message["id"])

    before = len(gc.get_objects())
    gc.callbacks.append(timer)
    n = 0
    began = time.perf_counter()
    for _ in range(sessions):
        live.append(Consumer(rng))
        for _ in range(MESSAGES_PER_OPEN):
            handle(n)
            n += 1
    ramp_s = time.perf_counter() - began
    per_session = (len(gc.get_objects()) - before) / sessions

    phase[0] = "churn"
    base = peak = rss_mib()
    began = time.perf_counter()
    for k in range(messages):
        handle(n)
        n += 1
        if k % RECONNECT_EVERY == 0:
            live[rng.randrange(sessions)] = Consumer(rng)
        if k % 2000 == 0:
            peak = max(peak, rss_mib())
    churn_s = time.perf_counter() - began
    gc.callbacks.remove(timer)
    peak = max(peak, rss_mib())
    left = gc.collect()

    def summary(by_gen: dict[int, list[float]]) -> dict:
        return {"collections": [len(by_gen[g]) for g in (0, 1, 2)],
                "longest_ms": [max(by_gen[g], default=0.0) * 1000 for g in (0, 1, 2)],
                "gc_s": sum(sum(v) for v in by_gen.values())}

    return {"mode": mode, "setting": repr(MODES[mode]), "sessions": sessions,
            "messages": messages, "startup_objects": startup_objects, "frozen": frozen,
            "tune_ms": tune_ms, "threshold": list(gc.get_threshold()),
            "objects_per_session": per_session, "ramp_s": ramp_s, "churn_s": churn_s,
            "ramp": summary(pauses["ramp"]), "churn": summary(pauses["churn"]),
            "rss_base_mib": base, "rss_peak_mib": peak, "held_mib": peak - base,
            "garbage_left": left}


def run_child(mode: str, sessions: int, messages: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.collector", "--child", mode,
                          "--sessions", str(sessions), "--messages", str(messages)],
                         capture_output=True, text=True, check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def render(data: dict) -> str:
    a = data["args"]
    lines = [
        f"Commit `{data['commit']}`, CPython {data['machine']['python']}, "
        f"{data['machine']['cpus']} × {data['machine']['cpu']} (shared). Command: "
        f"`.venv/bin/python -m bench.collector --sessions {a['sessions']} --messages "
        f"{a['messages']}` (results: `bench/results/collector.json`).", "",
        "| sessions | HEARTBEAT_GC_THRESHOLD | phase | collections, gen 0 / 1 / 2 | longest, "
        "gen 0 / 1 / 2 | in the collector | RSS held / peak | garbage left |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in data["runs"]:
        for phase in ("ramp", "churn"):
            s = r[phase]
            c, m = s["collections"], s["longest_ms"]
            memory = (f"{r['held_mib']:.0f} / {r['rss_peak_mib']:.0f} MiB | "
                      f"{r['garbage_left']:,}" if phase == "churn" else "– | –")
            lines.append(
                f"| {r['sessions']:,} | {LABELS[r['mode']]} | {phase} "
                f"({r[phase + '_s']:.1f} s) | {c[0]:,} / {c[1]:,} / {c[2]:,} | "
                f"{m[0]:.0f} / {m[1]:.0f} / {m[2]:.0f} ms | {s['gc_s']:.2f} s | {memory} |")
    auto = next(r for r in data["runs"] if r["mode"] == "auto")
    lines += ["", f"The start-up left {auto['startup_objects']:,} tracked objects; \"auto\" "
              f"froze {auto['frozen']:,} after a collection, in {auto['tune_ms']:.0f} ms in "
              f"all, and set {tuple(auto['threshold'])}. A session holds about "
              f"{auto['objects_per_session']:.0f} tracked objects."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", default="5000,19000")
    parser.add_argument("--messages", type=int, default=400_000)
    parser.add_argument("--child", choices=MODES)
    parser.add_argument("--render", action="store_true",
                        help="print the table of the saved results, without measuring")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, int(args.sessions), args.messages)))
        return

    from bench import benchlib as bl

    if args.render:
        print(render(json.loads((bl.RESULTS / "collector.json").read_text())))
        return

    commit = bl.head_commit()
    runs = [run_child(mode, int(sessions), args.messages)
            for sessions in args.sessions.split(",") for mode in MODES]
    data = {"machine": bl.machine(), "commit": commit,
            "args": {"sessions": args.sessions, "messages": args.messages}, "runs": runs}
    bl.save_results("collector", data)
    print(render(data))


if __name__ == "__main__":
    main()
