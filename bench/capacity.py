"""Capacity: idle sessions with heartbeat and presence on one Daphne process.

Ramps one Daphne process (CPU 0) to --sessions connections from several client
processes (CPU 1, source addresses 127.0.0.2, 127.0.0.3, ... so no process nears the
fd limit), then soaks: HEARTBEAT_INTERVAL=5, HEARTBEAT_TIMEOUT=5, every client answers
the server's probes, a probe client pings every 50 ms. Variants, each on a fresh server:
a bare AsyncWebsocketConsumer (memory per connection measured the same way), the demo's
RoomConsumer (rooms of 100) with the in-memory layer, and with Redis.

    .venv/bin/python -m bench.capacity [--sessions 5000] [--soak 60]
        [--variants bare,memory,redis] [--gc-threshold 50000,20,100 --tag gc]

With the default collector thresholds a ramp to 19,000 stalls in full collections on a
2-core machine (see docs/benchmarks.md); --gc-threshold tunes the server's collector.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import signal
import time
import urllib.request

from bench import benchlib as bl

WARM = 100
PER_PROCESS = 5000



def _refusals(run: dict) -> str:
    if "refusals" not in run:
        return "not counted"
    if not run["refusals"]:
        return "none"
    text = ", ".join(f"{n:,} × {code}" for code, n in sorted(run["refusals"].items()))
    hint = run.get("hint_p50_ms")
    return text + (f" (hint p50 {hint:,} ms)" if hint is not None else "")


def _tally(dicts) -> dict[str, int]:
    """Refusals of every client process, summed by close code."""
    total: dict[str, int] = {}
    for d in dicts:
        for code, n in d.items():
            total[str(code)] = total.get(str(code), 0) + n
    return total

def _zombie_split(run: dict) -> str:
    if "false_zombies_ramp" not in run:
        return ""
    return (f" (ramp {run['false_zombies_ramp']}; after the quit, not counted: "
            f"{run['silent_after_quit']})")


def gc_pauses(log: str) -> list[float]:
    return [float(x) for x in re.findall(r"gc gen2 pause ([0-9.]+) ms", log)]


# Counters of the server's /metrics compared across the soak: what the process did in it.
SOAK_COUNTERS = ("heartbeat_probes_total", "heartbeat_zombies_total",
                 "heartbeat_presence_store_late_total", "heartbeat_presence_outages_total",
                 "heartbeat_presence_broadcasts_total", "heartbeat_presence_store_seconds_count")


def _counters(port: int) -> dict[str, float]:
    """The SOAK_COUNTERS of the server's /metrics, each series apart (empty if unreadable)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
            text = reply.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.split("{", 1)[0] in SOAK_COUNTERS:
            out[name] = float(value)
    return out


# Presence work still going on after the last handshake: joins, their states and diffs.
SETTLING = ("heartbeat_presence_broadcasts_total",
            'heartbeat_presence_store_seconds_count{op="members"}',
            'heartbeat_presence_store_seconds_count{op="join"}')


def _settle(port: int, quiet=3.0, limit=240.0) -> float:
    """Seconds until the server's presence work of the ramp is done: none of SETTLING moved
    for ``quiet`` seconds (at most ``limit``)."""
    started = time.time()
    last = None
    while time.time() - started < limit:
        now = {k: v for k, v in _counters(port).items() if k in SETTLING}
        if now == last:
            return time.time() - started - quiet
        last = now
        time.sleep(quiet)
    return limit


def _memory_profile(server, path, count: int) -> dict | None:
    """Signal the server for a tracemalloc snapshot; the ``count``-th one written, or None."""
    server.proc.send_signal(signal.SIGUSR2)
    deadline = time.time() + 300  # a snapshot of a million traced blocks takes a while
    while time.time() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return json.loads(lines[count - 1])
        time.sleep(1)
    return None


def one(work, variant, n, soak, processes, inflight, gc_threshold, profile=False, extra=(),
        tracemalloc=False):
    env = {"HEARTBEAT_INTERVAL": "5", "HEARTBEAT_TIMEOUT": "5", "BENCH_GC_LOG": "1"}
    env.update(item.split("=", 1) for item in extra)
    traced = work.path / f"cap-{variant}.tracemalloc.jsonl"
    if tracemalloc:
        env["BENCH_TRACEMALLOC"] = str(traced)
    if gc_threshold:
        env["BENCH_GC_THRESHOLD"] = gc_threshold
    if variant == "redis":
        env["REDIS_URL"] = bl.REDIS_URL
    path = "/ws/bare/" if variant == "bare" else "/ws/rooms/cap{room}/"
    rec = {"variant": variant, "target": n}
    with bl.Server(work, "daphne", env, name=f"cap-{variant}") as server:
        hello = variant != "bare"  # the bare consumer sends no hello
        warm = bl.LoadClient(port=server.port, count=WARM, path=path, source="127.0.0.1",
                             hello=hello)
        clients = []
        pinger = None
        try:
            warm.cmd("connect")
            time.sleep(3)
            rec["base_rss_mb"] = server.rss() / 2**20
            if tracemalloc:
                server.proc.send_signal(signal.SIGUSR2)  # the base snapshot
                time.sleep(2)
            rest = n - WARM
            k = max(1, processes or math.ceil(rest / PER_PROCESS))
            share = math.ceil(rest / k)
            clients = [bl.LoadClient(port=server.port, count=min(share, rest - i * share),
                                     path=path, offset=WARM + i * share,
                                     source=f"127.0.0.{2 + i}", inflight=inflight, timeout=120,
                                     hello=hello)
                       for i in range(k)]
            time.sleep(0.5)  # client processes started
            c0, t0 = server.cpu_seconds(), time.time()
            answers = bl.connect_all(clients)
            t1, c1 = time.time(), server.cpu_seconds()
            ok = WARM + sum(a["ok"] for a in answers)
            rec.update(
                connected=ok, failed=sum(a["failed"] for a in answers),
                errors=[a["errors"] for a in answers if a["errors"]],
                refusals=_tally(a.get("refusals", {}) for a in answers),
                hint_p50_ms=bl.pct([x for a in answers for x in a.get("hints_ms", [])], 50),
                ramp_s=t1 - t0, connect_rate=(ok - WARM) / (t1 - t0),
                cpu_ms_per_connect=(c1 - c0) / max(1, ok - WARM) * 1000,
                handshake_p50_ms=bl.pct([x for a in answers for x in a["connect_ms"]], 50),
                handshake_p99_ms=bl.pct([x for a in answers for x in a["connect_ms"]], 99))
            print(variant, "connected", ok, f"in {t1 - t0:.1f} s, refused before hello "
                  f"{rec['refusals'] or 'never'}", flush=True)
            time.sleep(5)
            rec["settle_s"] = 5 + _settle(server.port)
            rss = server.rss()
            rec["rss_mb"] = rss / 2**20
            rec["kib_per_session"] = (rss - rec["base_rss_mb"] * 2**20) / max(1, ok - WARM) / 1024
            if tracemalloc:
                rec["memory_profile"] = _memory_profile(server, traced, 1)
            if soak and variant != "bare":
                pinger = bl.LoadClient(port=server.port, count=0, path=path, pinger=True,
                                       pinger_path="/ws/bare/", ping_every=0.05)
                p0 = sum(c.cmd("stats")["probes"] for c in [warm, *clients])
                counters = _counters(server.port)
                soak_log = server.log()
                g0 = len(gc_pauses(soak_log))
                rec["log_at_soak"] = len(soak_log)
                c0, t0 = server.cpu_seconds(), time.time()
                spy = None
                if profile:
                    from bench.handshake import py_spy

                    raw = str(work.path / f"cap-{variant}.raw")
                    spy = py_spy(server.proc.pid, soak, raw)
                time.sleep(soak)
                c1, t1 = server.cpu_seconds(), time.time()
                if spy is not None:
                    from bench.handshake import top_lines

                    spy.wait(timeout=60)
                    rec["profile"] = top_lines(raw, 20)
                stats = [c.cmd("stats") for c in [warm, *clients]]
                ps = pinger.cmd("stats")
                rec["log_at_soak_end"] = len(server.log())
                after = _counters(server.port)
                rec["soak_counters"] = {k: v - counters.get(k, 0) for k, v in after.items()
                                        if v != counters.get(k, 0)}
                soak_gc = gc_pauses(server.log())[g0:]
                rec["soak_gc_pauses"] = len(soak_gc)
                rec["soak_gc_max_ms"] = max(soak_gc) if soak_gc else None
                rtts = [r for _, r in ps["rtts"] if r == r]
                rec.update(
                    soak_s=t1 - t0, soak_cpu_pct=(c1 - c0) / (t1 - t0) * 100,
                    probes_answered=sum(s["probes"] for s in stats) - p0,
                    open_after_soak=sum(s["open"] for s in stats),
                    closes={code: sum(s["closes"].get(code, 0) for s in stats)
                            for code in {c for s in stats for c in s["closes"]}},
                    ping_p50_ms=bl.pct(rtts, 50) * 1000 if rtts else None,
                    ping_p99_ms=bl.pct(rtts, 99) * 1000 if rtts else None,
                    ping_max_ms=max(rtts) * 1000 if rtts else None,
                    ping_series=[(t - t0, r * 1000) for t, r in ps["rtts"] if r == r])
                rec["rss_after_soak_mb"] = server.rss() / 2**20
        finally:
            for c in [warm, *clients, *([pinger] if pinger else [])]:
                c.close()
        log = server.log()
    # Every client answers until it is told to quit: a session judged silent before then
    # is a false zombie (in the ramp or the soak); one judged after it is a client that
    # really went (the clients abort their connections at quit), so it is counted apart.
    answered = rec.pop("log_at_soak_end", len(log))
    soak_from = rec.pop("log_at_soak", answered)
    rec["false_zombies"] = len(re.findall(r"silent for", log[:answered]))
    rec["false_zombies_ramp"] = len(re.findall(r"silent for", log[:soak_from]))
    rec["silent_after_quit"] = len(re.findall(r"silent for", log[answered:]))
    pauses = gc_pauses(log)
    rec["gc_gen2_pauses_over_10ms"] = len(pauses)
    rec["gc_gen2_pause_max_ms"] = max(pauses) if pauses else None
    rec["tracebacks"] = log.count("Traceback")
    # A store call slower than PRESENCE_STORE_TIMEOUT counts as an outage in the tracker.
    rec["presence_outages"] = log.count("presence store unavailable")
    print({k: v for k, v in rec.items() if k != "ping_series"}, flush=True)
    return rec


def run(args):
    facts = bl.machine()
    work = bl.Workdir("capacity")
    recs = []
    try:
        for repeat in range(args.repeats):
            for variant in args.variants.split(","):
                rec = one(work, variant, args.sessions, args.soak, args.processes,
                          args.inflight, args.gc_threshold, args.profile, args.env,
                          args.tracemalloc)
                recs.append({**rec, "repeat": repeat})
                if variant == "redis":
                    bl.redis_cleanup()
    finally:
        bl.redis_cleanup()
    data = {"machine": facts, "commit": args.commit, "args": vars(args), "runs": recs}
    name = f"capacity-{args.tag}" if args.tag else "capacity"
    bl.save_results(name, data)
    plot(data, name)
    bl.update_doc(name, render(data, name))


LABELS = {"bare": "bare AsyncWebsocketConsumer", "memory": "RoomConsumer, in-memory layer",
          "redis": "RoomConsumer, Redis layer and presence"}


def plot(data, name="capacity"):
    plt = bl.pyplot()
    runs = data["runs"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8),
                                   gridspec_kw={"width_ratios": [1, 2]})
    short = {"bare": "bare", "memory": "mixin,\nin-memory", "redis": "mixin,\nRedis"}
    ax1.bar([short[r["variant"]] for r in runs],
            [r["kib_per_session"] for r in runs], color=[f"C{i}" for i in range(len(runs))])
    for i, r in enumerate(runs):
        ax1.annotate(f"{r['kib_per_session']:.1f} KiB", (i, r["kib_per_session"]),
                     ha="center", va="bottom")
    ax1.set_ylabel("RSS per session, KiB")
    ax1.set_title(f"{runs[0]['connected']:,} connections, one Daphne")
    ax1.tick_params(axis="x", labelsize=8)
    for i, r in enumerate(runs):
        if r.get("ping_series"):
            xs, ys = zip(*r["ping_series"], strict=True)
            ax2.plot(xs, ys, ".", ms=2, color=f"C{i}", label=LABELS[r["variant"]])
    ax2.set_yscale("log")
    ax2.set_xlabel("seconds into the soak")
    ax2.set_ylabel("probe client ping RTT, ms (log)")
    ax2.set_title("Responsiveness during the soak (interval 5 s, timeout 5 s)")
    ax2.legend(fontsize=7, markerscale=4)
    fig.tight_layout()
    fig.savefig(bl.plot_path(name))


def render(data, name="capacity"):
    runs, a = data["runs"], data["args"]
    bare = next((r for r in runs if r["variant"] == "bare"), None)
    title = "Capacity: sessions per Daphne process"
    if a.get("tag"):
        title += f" ({a['tag']}: `gc.set_threshold({a['gc_threshold']})`)" \
            if a.get("gc_threshold") else f" ({a['tag']})"
    if a.get("env"):
        title += ", " + ", ".join(f"`{x}`" for x in a["env"])
    lines = [
        f"## {title}", "",
        (f"Commit `{data['commit']}`. " if data.get("commit") else "")
        + bl.machine_line(data["machine"]), "",
        f"Command: `.venv/bin/python -m bench.capacity --sessions {a['sessions']} --soak "
        f"{a['soak']:g} --variants {a['variants']}"
        + (f" --gc-threshold {a['gc_threshold']}" if a.get("gc_threshold") else "")
        + (f" --inflight {a['inflight']}" if a.get("inflight", 50) != 50 else "")
        + (f" --tag {a['tag']}" if a.get("tag") else "")
        + (" --profile" if a.get("profile") else "")
        + (" --tracemalloc" if a.get("tracemalloc") else "")
        + (f" --repeats {a['repeats']}" if a.get("repeats", 1) > 1 else "")
        + "".join(f" --env {x}" for x in a.get("env") or [])
        + f"` (results: `bench/results/{name}.json`).",
        "",
        f"One Daphne process on CPU 0, its open-file limit raised to the hard limit (20,000 "
        f"on this machine, which allows no more); client processes on CPU 1, at most "
        f"{PER_PROCESS:,} connections each, from source addresses 127.0.0.2, 127.0.0.3, …, "
        f"{a.get('inflight', 50)} handshakes in flight per process. Full (generation 2) "
        f"garbage collections are timed in the server by a `gc.callbacks` hook of "
        f"`bench/benchproj`. Memory per session is the server's RSS after "
        f"the ramp and its settling (at least 5 s, then until the presence work of the ramp "
        f"is done: no presence broadcast, member read or join in the server's `/metrics` "
        f"for 3 s; in runs that show no settling time, 5 s only, so a soak could begin while "
        f"it went on), "
        f"less its RSS with {WARM} warm-up connections, over "
        f"the connections opened after those; the bare consumer is measured the same way on "
        f"its own fresh server. The soak runs at `HEARTBEAT_INTERVAL=5`, "
        f"`HEARTBEAT_TIMEOUT=5`; every client answers the server's probes, a probe client "
        f"pings a bare consumer on the same server every 50 ms, and a false zombie is any "
        f"'silent for' line in the server log before the clients are told to quit (those in "
        f"the ramp are counted in it and shown apart; earlier runs, which show no split, "
        f"counted the lines after the quit as well, when the clients' aborted connections "
        f"can be judged silent before their disconnects are read).", "",
        f"![Memory per session and responsiveness during the soak](img/bench-{name}.png)", "",
        "| variant | connected | failed | refused before hello (retried) | connect rate | "
        "CPU per connect | handshake p50 / p99 | settled after | RSS | RSS per session | "
        "vs bare |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        bare = next((b for b in runs if b["variant"] == "bare"
                     and b.get("repeat", 0) == r.get("repeat", 0)), bare)
        ratio = r["kib_per_session"] / bare["kib_per_session"] if bare else None
        lines.append(
            f"| {LABELS[r['variant']]} | {r['connected']:,} | {r['failed']} | "
            f"{_refusals(r)} | {r['connect_rate']:,.0f}/s | {r['cpu_ms_per_connect']:.2f} ms | "
            f"{bl.fmt(r['handshake_p50_ms'])} / {bl.fmt(r['handshake_p99_ms'])} ms | "
            f"{bl.fmt(r.get('settle_s'), 1) + ' s' if r.get('settle_s') else '–'} | "
            f"{r['rss_mb']:.0f} MB | {r['kib_per_session']:.1f} KiB | "
            f"{bl.fmt(ratio, 2) + '×' if ratio else '–'} |")
    lines += ratios(runs)
    soaked = [r for r in runs if "soak_s" in r]
    if soaked:
        lines += ["", "| variant | soak | server CPU | probes answered | open after | closes "
                  "during soak | false zombies ('silent for') | probe ping p50 / p99 / max | "
                  "full GC pauses > 10 ms: soak; whole run |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in soaked:
            closes = ", ".join(f"{k}: {v}" for k, v in r["closes"].items()) or "none"
            lines.append(
                f"| {LABELS[r['variant']]} | {r['soak_s']:.0f} s | {r['soak_cpu_pct']:.0f} % | "
                f"{r['probes_answered']:,} | {r['open_after_soak']:,} | {closes} | "
                f"**{r['false_zombies']}**{_zombie_split(r)} | {bl.fmt(r['ping_p50_ms'], 1)} / "
                f"{bl.fmt(r['ping_p99_ms'], 1)} / {bl.fmt(r['ping_max_ms'], 1)} ms | "
                f"{r.get('soak_gc_pauses', '–')} (max {bl.fmt(r.get('soak_gc_max_ms'))} ms); "
                f"whole run {r.get('gc_gen2_pauses_over_10ms', '–')} (max "
                f"{bl.fmt(r.get('gc_gen2_pause_max_ms'))} ms) |")
        lines += spikes(soaked)
        for r in soaked:
            if r.get("soak_counters"):
                lines += ["", f"{LABELS[r['variant']]}: the server's counters over the soak "
                          "(`/metrics`): " + "; ".join(
                              f"`{k}` {v:,.0f}" for k, v in sorted(r["soak_counters"].items()))
                          + "."]
    lines += memory_profiles(runs)
    return "\n".join(lines)


def ratios(runs) -> list[str]:
    """With several rounds: each variant's memory ratio to the bare consumer of its own
    round, and its soak's probe p99 and max, as median [min–max]."""
    rounds = {r.get("repeat", 0) for r in runs}
    if len(rounds) < 2:
        return []
    bare = {r.get("repeat", 0): r for r in runs if r["variant"] == "bare"}
    out = [""]
    for variant in dict.fromkeys(r["variant"] for r in runs if r["variant"] != "bare"):
        mine = [r for r in runs if r["variant"] == variant]
        parts = []
        got = [r["kib_per_session"] / bare[r.get("repeat", 0)]["kib_per_session"]
               for r in mine if r.get("repeat", 0) in bare]
        if got:
            parts.append(f"RSS per session ÷ bare {bl.median(got):.2f} "
                         f"[{min(got):.2f}–{max(got):.2f}]")
        for key, label in (("ping_p99_ms", "probe p99"), ("ping_max_ms", "max")):
            got = [r[key] for r in mine if r.get(key) is not None]
            if got:
                parts.append(f"{label} {bl.median(got):.1f} [{min(got):.1f}–{max(got):.1f}] ms")
        zombies = [r["false_zombies"] for r in mine if "false_zombies" in r]
        parts.append(f"false zombies {sum(zombies)} in all")
        out.append(f"{LABELS[variant]}, {len(mine)} rounds: " + "; ".join(parts) + ".")
    return out


def memory_profiles(runs):
    """Where the memory of the sessions went: tracemalloc's growth from the warm-up to the
    end of the ramp, by allocation site and by file."""
    out = []
    for r in runs:
        prof = r.get("memory_profile")
        if not prof:
            continue
        sessions = max(1, r["connected"] - WARM)
        out += ["", f"{LABELS[r['variant']]}: where the memory of the sessions went "
                f"(tracemalloc, 10 frames, from the warm-up to the end of the ramp: "
                f"{prof['growth_mb']:,.0f} MB of Python allocations, "
                f"{prof['growth_mb'] * 2**20 / sessions / 1024:.1f} KiB a session; RSS "
                f"{r['kib_per_session']:.1f} KiB a session, with tracing's own cost):", "",
                "| file | growth | per session | blocks |", "|---|---|---|---|"]
        for name, size, count in prof["files"][:10]:
            out.append(f"| `{name}` | {size / 2**20:,.1f} MB | {size / sessions:,.0f} B | "
                       f"{count:+,} |")
        out += ["", "| allocation site | growth | per session | blocks |", "|---|---|---|---|"]
        for site, size, count in prof["lines"][:15]:
            out.append(f"| `{site}` | {size / 2**20:,.1f} MB | {size / sessions:,.0f} B | "
                       f"{count:+,} |")
    return out


def spikes(soaked):
    """When the probe's slow pings came: their count and the gaps between the big ones."""
    out = []
    for r in soaked:
        series = r.get("ping_series") or []
        if not series:
            continue
        slow = [t for t, x in series if x > 20]
        big = [t for t, x in series if x > 100]
        gaps = [b - a for a, b in zip(big, big[1:], strict=False)]
        out += ["", f"{LABELS[r['variant']]}: {len(slow)} of {len(series):,} probe pings over "
                f"20 ms, {len(big)} over 100 ms" + (
                    f", the big ones {bl.median(gaps):.2f} s apart at the median (gaps "
                    f"{min(gaps):.2f}–{max(gaps):.2f} s)" if gaps else "") + "."]
        prof = r.get("profile")
        if prof and prof["total"]:
            total = prof["total"]
            skip = ("<module>", "run_forever", "_run_once", "_bootstrap", "entrypoint (cli",
                    "_run_code", "_run_module_as_main", "run (threading", "_worker",
                    "run (asyncioreactor", "handle_events", "Handle._run")
            out += ["", f"Profile of the soak (py-spy, 200 Hz, every thread, {total:,} "
                    "samples; idle time not sampled), most samples on the stack:", "",
                    "| function (file) | inclusive | self |", "|---|---|---|"]
            own = dict(prof["self"])
            shown = 0
            for fn, count in prof["inclusive"]:
                if any(x in fn for x in skip):
                    continue
                out.append(f"| `{fn}` | {count / total * 100:.1f} % | "
                           f"{own.get(fn, 0) / total * 100:.1f} % |")
                shown += 1
                if shown >= 20:
                    break
            out += ["", "| most samples at the top of the stack (self) | |", "|---|---|"]
            out += [f"| `{fn}` | {count / total * 100:.1f} % |" for fn, count in prof["self"][:12]]
    return out


def main():
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "--render":
        # Redraw the plot and the doc section from the saved results, without measuring.
        import json

        name = sys.argv[2] if len(sys.argv) > 2 else "capacity"
        data = json.loads((bl.RESULTS / f"{name}.json").read_text())
        plot(data, name)
        bl.update_doc(name, render(data, name))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=5000)
    parser.add_argument("--soak", type=float, default=60.0)
    parser.add_argument("--variants", default="bare,memory,redis")
    parser.add_argument("--processes", type=int, default=0)
    parser.add_argument("--inflight", type=int, default=50, help="handshakes per process")
    parser.add_argument("--gc-threshold", default="", help='e.g. "50000,20,100"')
    parser.add_argument("--tag", default="", help="results and doc section of their own")
    parser.add_argument("--profile", action="store_true", help="py-spy over the soak")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds of every variant, each on a fresh server")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="where the sessions' memory goes (slows the server)")
    parser.add_argument("--env", action="append", default=[],
                        help="NAME=VALUE for the servers (repeatable), e.g. a setting")
    parser.add_argument("--commit", default=bl.head_commit())
    run(parser.parse_args())


if __name__ == "__main__":
    main()
