"""Handshake cost: server CPU per open + greet + close, the mixin against a bare consumer.

One Daphne process (CPU 0) serves both variants behind the same middleware stack (the
demo's, admission gate outermost): the demo's ``RoomConsumer`` at ``/ws/rooms/<room>/``
(HeartbeatMixin, presence, session rows) and ``BareGroupConsumer`` at
``/ws/baregroup/<room>/`` (a plain consumer that joins its room's group, as the mixin
joins its room's presence group, and says hello). A client process (CPU 1, the raw
client of bench/rawws.py) opens --connections connections a round, --inflight at a time,
each waiting for the server's ``hello`` and then closing with 1000. Rounds alternate the
variants (mixin, bare, bare, mixin, ...); server CPU (user + system, /proc) is read from
the round's first connect until --settle seconds after its last close, so the work a
close leaves for later ticks (presence leaves after the leave grace, session rows) is
counted in its round. Once with the Redis layer and presence, once with the in-memory
layer (and store). With --profile, py-spy records extra mixin rounds of each layer.

    .venv/bin/python -m bench.handshake [--rounds 5] [--connections 600] [--inflight 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter

from bench import benchlib as bl
from bench import rawws

PATHS = {"mixin": "/ws/rooms/hs{room}/", "bare": "/ws/baregroup/hs{room}/"}
LABELS = {"mixin": "RoomConsumer (HeartbeatMixin + presence)",
          "bare": "BareGroupConsumer (group_add + hello)"}
PER_ROOM = 50


# The client process ---------------------------------------------------------------

async def one_round(port, path, n, inflight, offset):
    sem = asyncio.Semaphore(inflight)
    out = {"ok": 0, "refused": Counter(), "errors": Counter(), "ms": []}

    async def one(i):
        async with sem:
            greeted = asyncio.get_running_loop().create_future()
            state = {"notice": None}

            def on_text(client, payload):
                if b'"hello"' in payload and not greeted.done():
                    greeted.set_result(True)
                elif b'"close"' in payload:
                    state["notice"] = json.loads(payload).get("code")

            def on_close(client):
                if not greeted.done():
                    greeted.set_exception(ConnectionError(f"closed {client.close_code}"))
                    greeted.exception()

            t = time.perf_counter()
            client = None
            try:
                client = await rawws.connect("127.0.0.1", port,
                                             path.format(room=(offset + i) // PER_ROOM),
                                             on_text=on_text, on_close=on_close, timeout=10)
                await asyncio.wait_for(asyncio.shield(greeted), 10)
            except Exception as exc:
                if client is not None and client.close_code is not None:
                    out["refused"][str(client.close_code)] += 1
                else:
                    out["errors"][str(exc)[:60] or type(exc).__name__] += 1
                if client is not None and client.transport is not None:
                    client.transport.abort()
                return
            out["ms"].append((time.perf_counter() - t) * 1000)
            client.send(rawws.frame(b"\x03\xe8", 8))  # close 1000
            try:
                await asyncio.wait_for(asyncio.shield(client.lost), 10)
            except TimeoutError:
                out["errors"]["close not completed"] += 1
                client.transport.abort()
            out["ok"] += 1

    t0 = time.time()
    await asyncio.gather(*(one(i) for i in range(n)))
    return {"ok": out["ok"], "refused": dict(out["refused"]), "errors": dict(out["errors"]),
            "t0": t0, "t1": time.time(), "p50_ms": bl.pct(out["ms"], 50),
            "p99_ms": bl.pct(out["ms"], 99)}


async def client_main(port):
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if not line or line == "quit":
            return
        cmd = json.loads(line)
        result = await one_round(port, cmd["path"], cmd["n"], cmd["inflight"], cmd["offset"])
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


# The orchestrator -------------------------------------------------------------------

def py_spy(pid: int, seconds: float, out: str) -> subprocess.Popen:
    return subprocess.Popen([os.path.join(os.path.dirname(bl.PY), "py-spy"), "record",
                             "--pid", str(pid), "--format", "raw", "--duration",
                             str(int(seconds)), "--rate", "200", "--threads", "--nonblocking",
                             "--output", out], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def top_lines(raw_path: str, n: int = 15) -> dict:
    """Self and inclusive sample counts per function from py-spy's collapsed stacks."""
    inclusive, own, total = Counter(), Counter(), 0
    try:
        lines = open(raw_path).read().splitlines()
    except OSError:
        return {"total": 0, "inclusive": [], "self": []}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        count = int(count)
        total += count
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
                  + ")" if " (" in f else f for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        for f in set(frames):
            inclusive[f] += count
        if frames:
            own[frames[-1]] += count
    return {"total": total, "inclusive": inclusive.most_common(n * 3),
            "self": own.most_common(n)}


def layer_run(work, layer, args):
    env = {"REDIS_URL": bl.REDIS_URL} if layer == "redis" else {}
    bl.redis_cleanup()
    server = bl.Server(work, "daphne", env, name=f"hs-{layer}").start()
    client = bl.spawn_client("handshake", "--client", server.port)
    rounds, offset = [], 0
    try:
        def do(variant, n):
            nonlocal offset
            c0, t0 = server.cpu_seconds(), time.time()
            client.stdin.write(json.dumps({"path": PATHS[variant], "n": n, "offset": offset,
                                           "inflight": args.inflight}) + "\n")
            client.stdin.flush()
            res = bl.read_json_line(client)
            t1 = time.time()
            time.sleep(args.settle)
            c1, t2 = server.cpu_seconds(), time.time()
            offset += n
            return {**res, "variant": variant, "cpu_s": c1 - c0, "wall_s": t1 - t0,
                    "window_s": t2 - t0, "rate": res["ok"] / (t1 - t0) if t1 > t0 else None,
                    "cpu_ms_per": (c1 - c0) / max(1, res["ok"]) * 1000}

        do("bare", args.warmup)  # warm-up: imports, pools, first queries
        do("mixin", args.warmup)
        for r in range(args.rounds):
            order = ("mixin", "bare") if r % 2 == 0 else ("bare", "mixin")
            pair = {}
            for variant in order:
                pair[variant] = do(variant, args.connections)
                print(layer, r, variant, {k: pair[variant][k] for k in
                                          ("ok", "refused", "errors", "cpu_ms_per", "rate")},
                      flush=True)
            rounds.append(pair)
        profile = None
        if args.profile:
            raw = str(work.path / f"hs-{layer}.raw")
            n = args.connections * 2
            spy = py_spy(server.proc.pid, 600, raw)
            time.sleep(1.0)
            do("mixin", n)
            spy.send_signal(2)  # SIGINT: py-spy writes what it has
            spy.wait(timeout=60)
            profile = top_lines(raw)
        idle0, t0 = server.cpu_seconds(), time.time()
        time.sleep(3)
        idle_pct = (server.cpu_seconds() - idle0) / (time.time() - t0) * 100
    finally:
        if client.poll() is None:
            client.stdin.write("quit\n")
            client.stdin.flush()
            client.wait(timeout=30)
        server.stop()
        log = server.log()
        bl.redis_cleanup()
    ratios = [p["mixin"]["cpu_ms_per"] / p["bare"]["cpu_ms_per"] for p in rounds]
    return {"layer": layer, "rounds": rounds, "ratios": ratios, "profile": profile,
            "idle_cpu_pct_after": idle_pct, "tracebacks": log.count("Traceback"),
            "log_tail": log[-2000:]}


def run(args):
    facts = bl.machine()
    work = bl.Workdir("handshake")
    runs = [layer_run(work, layer, args) for layer in args.layers.split(",")]
    data = {"machine": facts, "commit": args.commit, "args": vars(args), "runs": runs}
    name = f"handshake-{args.tag}" if args.tag else "handshake"
    bl.save_results(name, data)
    plot(data, name)
    bl.update_doc(name, render(data, name))


def summarize(run1):
    out = {}
    for v in ("mixin", "bare"):
        per = [p[v]["cpu_ms_per"] for p in run1["rounds"]]
        rate = [p[v]["rate"] for p in run1["rounds"]]
        out[v] = {"cpu_min": min(per), "cpu_max": max(per), "cpu_med": bl.median(per),
                  "rate_min": min(rate), "rate_max": max(rate), "rate_med": bl.median(rate),
                  "ok": sum(p[v]["ok"] for p in run1["rounds"]),
                  "refused": sum(sum(p[v]["refused"].values()) for p in run1["rounds"]),
                  "errors": sum(sum(p[v]["errors"].values()) for p in run1["rounds"]),
                  "p50": bl.median([p[v]["p50_ms"] for p in run1["rounds"]]),
                  "p99": bl.median([p[v]["p99_ms"] for p in run1["rounds"]])}
    r = run1["ratios"]
    out["ratio"] = {"med": bl.median(r), "min": min(r), "max": max(r)}
    return out


def plot(data, name="handshake"):
    plt = bl.pyplot()
    runs = data["runs"]
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 3.6), squeeze=False)
    for ax, run1 in zip(axes[0], runs, strict=True):
        for v, color in (("mixin", "C0"), ("bare", "C1")):
            ys = [p[v]["cpu_ms_per"] for p in run1["rounds"]]
            ax.plot(range(1, len(ys) + 1), ys, "o-", color=color, label=LABELS[v])
        ax.set_ylim(0, None)
        ax.set_xlabel("round")
        ax.set_ylabel("server CPU ms per open + greet + close")
        ratio = summarize(run1)["ratio"]
        ax.set_title(f"{run1['layer']} layer: mixin ÷ bare {ratio['med']:.2f}× "
                     f"[{ratio['min']:.2f}–{ratio['max']:.2f}]")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(bl.plot_path(name))


def render(data, name="handshake"):
    a = data["args"]
    tag = name.removeprefix("handshake").lstrip("-")
    lines = [
        "## Handshake cost: mixin against a bare consumer" + (f" ({tag})" if tag else ""), "",
        f"Commit `{data['commit']}`. " + bl.machine_line(data["machine"]), "",
        f"Command: `.venv/bin/python -m bench.handshake --rounds {a['rounds']} --connections "
        f"{a['connections']} --inflight {a['inflight']} --layers {a['layers']}"
        f"{' --profile' if a['profile'] else ''}"
        f"{' --tag ' + a['tag'] if a.get('tag') else ''}` (results: `bench/results/{name}.json`).",
        "",
        "One Daphne process (CPU 0) serves both variants behind the same middleware stack, "
        "the demo's with `AdmissionMiddleware` outermost: the demo's `RoomConsumer` at "
        "`/ws/rooms/<room>/` (HeartbeatMixin, presence, session rows, as shipped) and "
        "`BareGroupConsumer` at `/ws/baregroup/<room>/`, a plain `AsyncWebsocketConsumer` "
        "that joins its room's group at connect (as the mixin joins the room's presence "
        "group), sends a `hello` frame and leaves the group at disconnect. A raw client "
        f"process (CPU 1) opens {a['connections']} connections a round, {a['inflight']} in "
        f"flight, rooms of {PER_ROOM}; each waits for `hello`, then closes with 1000. Rounds "
        "alternate the variants (mixin first in even rounds, bare first in odd ones) after "
        f"a warm-up round of {a['warmup']} each; server CPU (user + system) is read from "
        f"the round's first connect until {a['settle']:g} s after its last close, so the "
        "work a close leaves to later ticks (presence leaves after the leave grace, "
        "session rows) counts in its round. The ratio is paired within each round.", "",
        f"![CPU per handshake, mixin and bare, per round](img/bench-{name}.png)", "",
        "| layer | variant | CPU ms per open + greet + close, median [min–max] | handshakes/s, "
        "median [min–max] | hello p50 / p99 ms | completed | refused | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run1 in data["runs"]:
        s = summarize(run1)
        for v in ("mixin", "bare"):
            x = s[v]
            lines.append(
                f"| {run1['layer']} | {LABELS[v]} | {x['cpu_med']:.2f} [{x['cpu_min']:.2f}–"
                f"{x['cpu_max']:.2f}] | {x['rate_med']:.0f} [{x['rate_min']:.0f}–"
                f"{x['rate_max']:.0f}] | {bl.fmt(x['p50'], 1)} / {bl.fmt(x['p99'], 1)} | "
                f"{x['ok']:,} | {x['refused']:,} | {x['errors']:,} |")
    lines += ["", "| layer | CPU ratio mixin ÷ bare, median [min–max] | rounds | target | |",
              "|---|---|---|---|---|"]
    for run1 in data["runs"]:
        r = summarize(run1)["ratio"]
        met = "met" if r["max"] <= 1.3 else ("median met, not every round" if r["med"] <= 1.3
                                             else "**not met**")
        lines.append(f"| {run1['layer']} | **{r['med']:.2f}×** [{r['min']:.2f}–{r['max']:.2f}] "
                     f"| {len(run1['ratios'])} | ≤ 1.3× | {met} |")
    lines += ["", "Per round (CPU ms per handshake, mixin / bare, ratio): " + "; ".join(
        f"{run1['layer']}: " + ", ".join(
            f"{p['mixin']['cpu_ms_per']:.2f} / {p['bare']['cpu_ms_per']:.2f} = {q:.2f}"
            for p, q in zip(run1["rounds"], run1["ratios"], strict=True))
        for run1 in data["runs"]) + "."]
    for run1 in data["runs"]:
        prof = run1.get("profile")
        if not prof or not prof["total"]:
            continue
        total = prof["total"]
        lines += ["", f"**Profile, {run1['layer']} layer** (py-spy, 200 Hz, every thread of "
                  f"the server, over one mixin round of {2 * a['connections']} connections "
                  f"recorded apart from the measured rounds; {total:,} samples, idle time "
                  "not sampled). Functions with the most samples on the stack "
                  "(inclusive), the event loop's and threads' entry points left out:", "",
                  "| function (file) | inclusive | self |", "|---|---|---|"]
        own = dict(prof["self"])
        shown = 0
        for fn, count in prof["inclusive"]:
            if any(x in fn for x in ("<module>", "run_forever", "_run_once", "_bootstrap",
                                     "entrypoint (cli", "_run_code", "_run_module_as_main",
                                     "run (threading", "_worker", "main (", "_run (events",
                                     "run (", "handle_events")):
                continue
            lines.append(f"| `{fn}` | {count / total * 100:.1f} % | "
                         f"{own.get(fn, 0) / total * 100:.1f} % |")
            shown += 1
            if shown >= 15:
                break
        lines += ["", "Most samples at the top of the stack (self):", "",
                  "| function (file) | self |", "|---|---|"]
        for fn, count in prof["self"][:10]:
            lines.append(f"| `{fn}` | {count / total * 100:.1f} % |")
    return "\n".join(lines)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--render":
        # Redraw the plot and the doc section from the saved results, without measuring.
        name = sys.argv[2] if len(sys.argv) > 2 else "handshake"
        data = json.loads((bl.RESULTS / f"{name}.json").read_text())
        plot(data, name)
        bl.update_doc(name, render(data, name))
        return
    if len(sys.argv) > 2 and sys.argv[1] == "--client":
        asyncio.run(client_main(int(sys.argv[2])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=600)
    parser.add_argument("--inflight", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--settle", type=float, default=7.0)
    parser.add_argument("--layers", default="redis,memory")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--tag", default="", help="results and doc section of their own")
    parser.add_argument("--commit", default=bl.head_commit())
    run(parser.parse_args())


if __name__ == "__main__":
    main()
