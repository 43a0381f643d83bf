"""A ping flood from one client against the others' round trips, in paired windows.

One Daphne process (CPU 0, Redis layer and presence, the demo's defaults) holds --sessions
idle sessions of the demo's RoomConsumer, answering the server's probes (interval 5 s), and
a probe client that pings a session of its own every 20 ms. Then --pairs pairs of windows
of --window seconds each, their order alternating: in one a flooder (CPU 1, like every
client) writes ping frames to a session of the demo as fast as its socket takes them, and
opens a new session each time it is closed (4429); in the other nobody floods. The probe
client's p99 in each window, and the difference within each pair, say what a flood costs
the others.

    .venv/bin/python -m bench.flood [--sessions 1000] [--pairs 5] [--window 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from bench import benchlib as bl
from bench import rawws

BATCH = 200  # frames written before the flooder lets its loop run once


async def flood(port: int, seconds: float) -> dict:
    """Flood sessions of the demo for ``seconds``: frames written, sessions, close codes."""
    frames, closes, sessions = 0, {}, 0
    frame = rawws.frame(b'{"type":"ping","id":"f"}') * BATCH
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            client = await rawws.connect("127.0.0.1", port, "/ws/rooms/flood/", timeout=5)
        except Exception:
            await asyncio.sleep(0.05)
            continue
        sessions += 1
        while client.is_open and time.monotonic() < deadline:
            transport = client.transport
            if transport.get_write_buffer_size() < 1 << 20:
                transport.write(frame)
                frames += BATCH
            await asyncio.sleep(0)
        code = client.close_code if client.close_code is not None else (
            "open" if client.is_open else 1006)
        closes[str(code)] = closes.get(str(code), 0) + 1
        if client.transport is not None and not client.transport.is_closing():
            client.transport.abort()
    return {"frames": frames, "sessions": sessions, "closes": closes}


def window_p99(rtts, start: float, end: float):
    inside = [r * 1000 for t, r in rtts if start <= t < end and r == r]
    lost = sum(1 for t, r in rtts if start <= t < end and r != r)
    return bl.pct(inside, 99), bl.pct(inside, 50), len(inside), lost


def run(args):
    facts = bl.machine()
    work = bl.Workdir("flood")
    env = {"HEARTBEAT_INTERVAL": "5", "HEARTBEAT_TIMEOUT": "5", "REDIS_URL": bl.REDIS_URL,
           "HEARTBEAT_RATE_LIMIT": "20"}  # the demo's default (the benchmarks turn it off)
    windows = []
    try:
        with bl.Server(work, "daphne", env, name="flood") as server:
            load = bl.LoadClient(port=server.port, count=args.sessions,
                                 path="/ws/rooms/fl{room}/")
            pinger = bl.LoadClient(port=server.port, count=0, pinger=True,
                                   pinger_path="/ws/rooms/probe/", ping_every=0.02)
            try:
                print("connected", load.cmd("connect")["ok"], flush=True)
                time.sleep(5)
                for pair in range(args.pairs):
                    order = ("quiet", "flood") if pair % 2 == 0 else ("flood", "quiet")
                    for kind in order:
                        start = time.time()
                        c0 = server.cpu_seconds()
                        record = {"pair": pair, "kind": kind, "start": start}
                        if kind == "flood":
                            proc = bl.spawn_client("flood", "--flooder", server.port,
                                                   args.window)
                            record.update(bl.read_json_line(proc))
                            proc.wait(timeout=30)
                        else:
                            time.sleep(args.window)
                        record["end"] = time.time()
                        record["cpu_pct"] = (server.cpu_seconds() - c0) / (
                            record["end"] - start) * 100
                        windows.append(record)
                        print(record, flush=True)
                        time.sleep(1)  # the flooder's last session torn down
                rtts = pinger.cmd("stats")["rtts"]
                stats = load.cmd("stats")
            finally:
                load.close()
                pinger.close()
            log = server.log()
    finally:
        bl.redis_cleanup()
    for w in windows:
        w["p99_ms"], w["p50_ms"], w["pings"], w["lost"] = window_p99(rtts, w["start"] + 0.5,
                                                                     w["end"])
    summary = {"sessions": args.sessions, "open_after": stats["open"],
               "closes_of_the_others": stats["closes"],
               "false_zombies": log.count("silent for"), "tracebacks": log.count("Traceback")}
    pairs = []
    for pair in range(args.pairs):
        q = next(w for w in windows if w["pair"] == pair and w["kind"] == "quiet")
        f = next(w for w in windows if w["pair"] == pair and w["kind"] == "flood")
        pairs.append({"pair": pair, "quiet_p99_ms": q["p99_ms"], "flood_p99_ms": f["p99_ms"],
                      "diff_ms": f["p99_ms"] - q["p99_ms"]})
    summary["pairs"] = pairs
    diffs = [p["diff_ms"] for p in pairs]
    quiet = [p["quiet_p99_ms"] for p in pairs]
    summary.update(diff_median_ms=bl.median(diffs), diff_min_ms=min(diffs),
                   diff_max_ms=max(diffs), quiet_spread_ms=max(quiet) - min(quiet))
    print(summary, flush=True)
    data = {"machine": facts, "args": vars(args), "summary": summary, "windows": windows}
    bl.save_results("flood", data)
    plot(data, rtts)
    bl.update_doc("flood", render(data))


def plot(data, rtts):
    plt = bl.pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.6))
    t0 = data["windows"][0]["start"]
    for w in data["windows"]:
        if w["kind"] == "flood":
            ax.axvspan(w["start"] - t0, w["end"] - t0, color="C3", alpha=0.12)
    xs = [t - t0 for t, r in rtts if r == r and t >= t0]
    ys = [r * 1000 for t, r in rtts if r == r and t >= t0]
    ax.plot(xs, ys, ".", ms=2, color="C0", label="probe client's ping RTT")
    ax.set_yscale("log")
    ax.set_xlabel("seconds (shaded: one client flooding)")
    ax.set_ylabel("RTT, ms (log)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(bl.plot_path("flood"))


def render(data):
    s, a = data["summary"], data["args"]
    floods = [w for w in data["windows"] if w["kind"] == "flood"]
    lines = [
        "## A ping flood against the others' round trips", "",
        bl.commit_line(data) + bl.machine_line(data["machine"]), "",
        f"Command: `.venv/bin/python -m bench.flood --sessions {a['sessions']} --pairs "
        f"{a['pairs']} --window {a['window']:g}` (results: `bench/results/flood.json`).", "",
        f"One Daphne process (CPU 0, Redis layer and presence, the demo's defaults: "
        f"`HEARTBEAT_MESSAGE_RATE` and its burst) holds {a['sessions']:,} idle sessions of the "
        f"demo's RoomConsumer answering the server's probes (interval 5 s), and a probe "
        f"client pinging a session of its own every 20 ms. In {a['pairs']} pairs of "
        f"{a['window']:g} s windows, their order alternating, a flooder on CPU 1 writes ping "
        f"frames to a session as fast as its socket takes them, and opens a new one each "
        f"time it is closed; in the other window of the pair nobody floods. The probe "
        f"client's p99 is taken over each window (its first 0.5 s left out).", "",
        "![The probe client's round trips, flood windows shaded](img/bench-flood.png)", "",
        "| pair | p99 without the flood | p99 with it | difference | flood: frames written "
        "| sessions it opened | their closes | server CPU (quiet / flood) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in s["pairs"]:
        f = next(w for w in floods if w["pair"] == p["pair"])
        q = next(w for w in data["windows"] if w["pair"] == p["pair"] and w["kind"] == "quiet")
        closes = ", ".join(f"{k}: {v}" for k, v in sorted(f["closes"].items()))
        lines.append(
            f"| {p['pair'] + 1} | {p['quiet_p99_ms']:.1f} ms | {p['flood_p99_ms']:.1f} ms | "
            f"{p['diff_ms']:+.1f} ms | {f['frames']:,} | {f['sessions']:,} | {closes} | "
            f"{q['cpu_pct']:.0f} % / {f['cpu_pct']:.0f} % |")
    lines += [
        "",
        f"Difference with the flood, median {s['diff_median_ms']:+.1f} ms "
        f"[{s['diff_min_ms']:+.1f} to {s['diff_max_ms']:+.1f}]; the quiet windows' p99 "
        f"varied by {s['quiet_spread_ms']:.1f} ms among themselves. The other sessions: "
        f"{s['open_after']:,} of {s['sessions']:,} open at the end, closes "
        f"{s['closes_of_the_others'] or 'none'}, {s['false_zombies']} 'silent for' lines "
        f"and {s['tracebacks']} tracebacks in the server log.",
    ]
    return "\n".join(lines)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--flooder":
        result = asyncio.run(flood(int(sys.argv[2]), float(sys.argv[3])))
        print(json.dumps(result), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--window", type=float, default=10.0)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
