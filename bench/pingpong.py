"""Ping/pong throughput, latency and server CPU per round trip: the mixin against the rest.

N closed-loop clients each send {"type":"ping"} and wait for the pong, over and over.
On one Daphne process, in the same run: the demo's RoomConsumer (HeartbeatMixin, Redis
presence and channels_redis on, rate limit off), a bare AsyncWebsocketConsumer answering
pong, and the Django peers' design (an ORM write per heartbeat, bench/benchproj). The same
on uvicorn. A pure ``websockets`` server is the ceiling.

    .venv/bin/python -m bench.pingpong [--reps 2] [--duration 3] [--ns 1,10,100]

``--metrics-paired``: the mixin on two Daphne processes, HEARTBEAT_METRICS on and off,
paired repeats (bench/pingpong_metrics.py; by default --reps 8 --ns 10,100):

    .venv/bin/python -m bench.pingpong --metrics-paired
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time

from bench import benchlib as bl

VARIANTS = {  # label -> path on the Django servers
    "bare": "/ws/bare/",
    "mixin": "/ws/rooms/{room}/",
    "peerdb": "/ws/peerdb/",
}
# Environment of the Django servers (bench/benchlib.py turns HEARTBEAT_RATE_LIMIT off): a
# closed loop sends far more than the 50 frames a second HEARTBEAT_MESSAGE_RATE allows.
DJANGO_ENV = {"REDIS_URL": bl.REDIS_URL, "HEARTBEAT_MESSAGE_RATE": "off"}
LABELS = {"bare": "bare AsyncWebsocketConsumer", "mixin": "HeartbeatMixin + Redis presence",
          "peerdb": "DB write per heartbeat (peers' design)", "wslib": "pure websockets"}


# Client process -----------------------------------------------------------------

async def client_main(port, path, n, warmup, duration, server_pid):
    import psutil

    from bench import rawws

    state = {"measuring": False, "count": 0}
    lat: list[float] = []
    sent_at: dict = {}

    def on_text(client, payload):
        if b'"pong"' not in payload:
            return
        now = time.perf_counter()
        if state["measuring"]:
            state["count"] += 1
            lat.append(now - sent_at[client])
        sent_at[client] = time.perf_counter()
        client.send(rawws.PING)

    sem = asyncio.Semaphore(50)

    async def one():
        async with sem:
            return await rawws.connect(bl.HOST, port, path, on_text=on_text)

    clients = await asyncio.gather(*(one() for _ in range(n)))
    await asyncio.sleep(0.3)  # hello and presence_state read
    for c in clients:
        sent_at[c] = time.perf_counter()
        c.send(rawws.PING)
    await asyncio.sleep(warmup)
    server = psutil.Process(server_pid)
    me = psutil.Process()

    def cpu(p):
        t = p.cpu_times()
        return t.user + t.system

    s0, c0, t0 = cpu(server), cpu(me), time.perf_counter()
    state["measuring"] = True
    await asyncio.sleep(duration)
    state["measuring"] = False
    s1, c1, t1 = cpu(server), cpu(me), time.perf_counter()
    window = t1 - t0
    count = state["count"]
    print(json.dumps({
        "n": n, "rts": count, "rt_per_s": count / window,
        "p50_ms": bl.pct(lat, 50) * 1000 if lat else None,
        "p99_ms": bl.pct(lat, 99) * 1000 if lat else None,
        "server_cpu_pct": (s1 - s0) / window * 100,
        "client_cpu_pct": (c1 - c0) / window * 100,
        "cpu_us_per_rt": (s1 - s0) / count * 1e6 if count else None,
    }), flush=True)
    for c in clients:
        c.transport.close()


def measure(server, path, n, warmup, duration):
    proc = bl.spawn_client("pingpong", "--client", server.port, path, n, warmup, duration,
                           server.proc.pid)
    try:
        result = bl.read_json_line(proc)
    finally:
        proc.wait(timeout=30)
    return result


# Orchestrator -------------------------------------------------------------------

def run(args):
    ns = [int(x) for x in args.ns.split(",")]
    facts = bl.machine()
    work = bl.Workdir("pingpong")
    rows = []
    room = itertools.count()
    plan = [("daphne", ["bare", "mixin", "peerdb"]), ("uvicorn", ["bare", "mixin", "peerdb"]),
            ("wslib", ["wslib"])]
    try:
        for kind, variants in plan:
            env = DJANGO_ENV if kind != "wslib" else {}
            with bl.Server(work, kind, env, name=kind) as server:
                # Warm the server up once (imports, first connections) before measuring.
                measure(server, "/" if kind == "wslib" else "/ws/bare/", 10, 0.5, 0.5)
                for rep in range(args.reps):
                    for n in ns:
                        order = variants if rep % 2 == 0 else variants[::-1]
                        for variant in order:
                            path = "/" if variant == "wslib" else \
                                VARIANTS[variant].format(room=f"pp{next(room)}")
                            r = measure(server, path, n, args.warmup, args.duration)
                            r.update(server=kind, variant=variant, rep=rep)
                            rows.append(r)
                            print(f"{kind:8} {variant:7} N={n:<4} {r['rt_per_s']:9.0f} RT/s "
                                  f"p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} ms "
                                  f"cpu {r['server_cpu_pct']:.0f}% "
                                  f"{r['cpu_us_per_rt'] or 0:.0f} us/RT "
                                  f"(client {r['client_cpu_pct']:.0f}%)", flush=True)
    finally:
        bl.redis_cleanup()
    summary = summarize(rows, ns)
    data = {"machine": facts, "commit": args.commit, "args": vars(args), "rows": rows,
            "summary": summary}
    bl.save_results("pingpong", data)
    plot(summary, ns)
    bl.update_doc("pingpong", render(data, ns))


def summarize(rows, ns):
    out = {}
    for (server, variant), group in itertools.groupby(
            sorted(rows, key=lambda r: (r["server"], r["variant"])),
            key=lambda r: (r["server"], r["variant"])):
        group = list(group)
        for n in ns:
            g = [r for r in group if r["n"] == n]
            if not g:
                continue
            out.setdefault(server, {}).setdefault(variant, {})[n] = {
                k: bl.median([r[k] for r in g if r[k] is not None])
                for k in ("rt_per_s", "p50_ms", "p99_ms", "cpu_us_per_rt", "server_cpu_pct",
                          "client_cpu_pct")}
    # Ratios pair the runs of one repeat, then take the median over repeats.
    ratios = {}
    for server in ("daphne", "uvicorn"):
        for n in ns:
            for a, b in (("mixin", "bare"), ("mixin", "peerdb")):
                pairs = []
                for rep in {r["rep"] for r in rows}:
                    ra = [r for r in rows if (r["server"], r["variant"], r["n"], r["rep"])
                          == (server, a, n, rep)]
                    rb = [r for r in rows if (r["server"], r["variant"], r["n"], r["rep"])
                          == (server, b, n, rep)]
                    if ra and rb and rb[0]["rt_per_s"]:
                        pairs.append(ra[0]["rt_per_s"] / rb[0]["rt_per_s"])
                if pairs:
                    ratios.setdefault(server, {}).setdefault(f"{a}/{b}", {})[n] = {
                        "median": bl.median(pairs), "min": min(pairs), "max": max(pairs)}
    out["ratios"] = ratios
    return out


def plot(summary, ns):
    plt = bl.pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 5))
    series = [("daphne", "bare"), ("daphne", "mixin"), ("daphne", "peerdb"),
              ("uvicorn", "bare"), ("uvicorn", "mixin"), ("uvicorn", "peerdb"),
              ("wslib", "wslib")]
    width = 0.8 / len(series)
    for i, (server, variant) in enumerate(series):
        d = summary.get(server, {}).get(variant, {})
        xs = [j + i * width for j in range(len(ns))]
        ax1.bar(xs, [d.get(n, {}).get("rt_per_s") or 0 for n in ns], width,
                label=f"{server}: {LABELS[variant]}" if variant != "wslib" else LABELS[variant])
    ax1.set_xticks([j + 0.4 - width / 2 for j in range(len(ns))], [f"N={n}" for n in ns])
    ax1.set_yscale("log")
    ax1.set_ylabel("round trips / s (log)")
    ax1.set_title("Ping/pong throughput, closed-loop clients")
    ax1.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)
    n = max(ns)
    names = [f"{s}\n{v}" for s, v in series]
    vals = [summary.get(s, {}).get(v, {}).get(n, {}).get("cpu_us_per_rt") or 0 for s, v in series]
    ax2.bar(range(len(series)), vals, color=[f"C{i}" for i in range(len(series))])
    ax2.set_xticks(range(len(series)), names, fontsize=7)
    ax2.set_yscale("log")
    ax2.set_ylabel("server CPU µs per round trip (log)")
    ax2.set_title(f"Server CPU per round trip at N={n}")
    fig.tight_layout()
    fig.savefig(bl.plot_path("pingpong"))


def render(data, ns):
    s, m, a = data["summary"], data["machine"], data["args"]
    lines = [
        "## Ping/pong: throughput, latency, CPU per round trip", "",
        (f"Commit `{data['commit']}`. " if data.get("commit") else "") + bl.machine_line(m), "",
        f"Command: `.venv/bin/python -m bench.pingpong --reps {a['reps']} --duration "
        f"{a['duration']} --ns {a['ns']}` "
        f"(results: `bench/results/pingpong.json`).", "",
        f"N closed-loop clients (the raw client in `bench/rawws.py`, pinned to CPU 1) each send "
        f"`{{\"type\":\"ping\",\"id\":1}}` and wait for the pong; {a['warmup']} s warm-up, "
        f"{a['duration']} s measured, {a['reps']} repeats alternating the order of the "
        f"variants; the table shows medians. The server is pinned to CPU 0. Django servers run "
        f"`bench/benchproj` (the demo's settings and routes plus two comparison consumers) "
        f"with `REDIS_URL` set, so channels_redis and Redis presence are on, and "
        f"`HEARTBEAT_RATE_LIMIT=off`, `HEARTBEAT_MESSAGE_RATE=off` (a closed loop would trip "
        f"the flood limits). The mixin "
        f"runs the demo's `RoomConsumer` at `/ws/rooms/<room>/` with every client in one "
        f"room, session rows and checkpoints included. The DB-write variant is the Django "
        f"peers' design written plainly for this benchmark (`PeerDbConsumer`: an ORM "
        f"`UPDATE ... last_seen` per heartbeat on SQLite, then the pong), not their code.", "",
        "![Ping/pong throughput and CPU per round trip](img/bench-pingpong.png)", "",
        "| server | variant | " + " | ".join(
            f"N={n} RT/s | N={n} p50 / p99 ms" for n in ns) + " | CPU µs/RT (N=" +
        str(max(ns)) + ") |",
        "|---|---|" + "---|---|" * len(ns) + "---|",
    ]
    for server, variants in (("daphne", ("bare", "mixin", "peerdb")),
                             ("uvicorn", ("bare", "mixin", "peerdb")), ("wslib", ("wslib",))):
        for v in variants:
            d = s.get(server, {}).get(v, {})
            cells = []
            for n in ns:
                x = d.get(n, {})
                cells.append(bl.fmt(x.get("rt_per_s")))
                cells.append(f"{bl.fmt(x.get('p50_ms'), 2)} / {bl.fmt(x.get('p99_ms'), 2)}")
            lines.append(f"| {server} | {LABELS[v]} | " + " | ".join(cells) +
                         f" | {bl.fmt(d.get(max(ns), {}).get('cpu_us_per_rt'))} |")
    lines += ["", "Ratios of throughput, paired within each repeat (median, [min–max]):", "",
              "| server | ratio | " + " | ".join(f"N={n}" for n in ns) + " | target |",
              "|---|---|" + "---|" * len(ns) + "---|"]
    for server in ("daphne", "uvicorn"):
        for key, target in (("mixin/bare", "≥ 0.90"), ("mixin/peerdb", "≥ 10")):
            d = s["ratios"].get(server, {}).get(key, {})
            cells = [f"{d[n]['median']:.2f} [{d[n]['min']:.2f}–{d[n]['max']:.2f}]"
                     if n in d else "–" for n in ns]
            lines.append(f"| {server} | {key} | " + " | ".join(cells) + f" | {target} |")
    above = [v["median"] for server in ("daphne", "uvicorn")
             for v in s["ratios"].get(server, {}).get("mixin/bare", {}).values()]
    if above and min(above) > 1:
        lines += ["", "The mixin beats the bare consumer because its receive pump answers a "
                  "ping as soon as the server hands it over, before Channels' dispatch. A "
                  "plain consumer gets every frame through Channels' `await_many_dispatch`, "
                  "which makes a new task for each message and waits with `asyncio.wait` (on "
                  "the socket and, with a channel layer, on the layer too); that costs more "
                  "than the heartbeat work itself. Frames for the application still take "
                  "Channels' path, so this gain is for heartbeats only."]
    wc = s.get("wslib", {}).get("wslib", {}).get(max(ns), {}).get("client_cpu_pct")
    lines += ["", f"The client used {bl.fmt(wc)} % of CPU 1 against the pure `websockets` "
              f"server at N={max(ns)}: where it is near 100 % that row is a lower bound of the "
              f"server's capacity, and its CPU µs per round trip is the reliable figure."]
    return "\n".join(lines)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        port, path, n, warmup, duration, pid = sys.argv[2:8]
        asyncio.run(client_main(int(port), path, int(n), float(warmup), float(duration),
                                int(pid)))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--render":
        # Redraw the plot and the doc section from the saved results, without measuring.
        data = json.loads((bl.RESULTS / "pingpong.json").read_text(), object_hook=lambda d: {
            int(k) if k.isdigit() else k: v for k, v in d.items()})
        ns = [int(x) for x in data["args"]["ns"].split(",")]
        data["summary"] = summarize(data["rows"], ns)
        bl.save_results("pingpong", data)
        plot(data["summary"], ns)
        bl.update_doc("pingpong", render(data, ns))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=None, help="2; 8 with --metrics-paired")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--ns", default=None, help="1,10,100; 10,100 with --metrics-paired")
    parser.add_argument("--metrics-paired", action="store_true",
                        help="HEARTBEAT_METRICS on against off, paired (issue 14)")
    parser.add_argument("--commit", default=bl.head_commit())
    args = parser.parse_args()
    paired = args.metrics_paired
    args.reps = args.reps if args.reps is not None else 8 if paired else 2
    args.ns = args.ns or ("10,100" if paired else "1,10,100")
    if paired:
        from bench import pingpong_metrics

        pingpong_metrics.run_metrics_paired(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
