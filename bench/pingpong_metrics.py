"""Ping/pong with HEARTBEAT_METRICS on and off, paired: what counting costs a ping (issue 14).

Two Daphne processes, the same but for the setting; each repeat measures the bare consumer
and the mixin on both, and compares mixin ÷ bare throughput of the two. Run through
bench/pingpong.py, whose clients and measurement it shares:

    .venv/bin/python -m bench.pingpong --metrics-paired [--reps 8] [--duration 3] [--ns 10,100]
"""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import sys

from bench import benchlib as bl
from bench.pingpong import DJANGO_ENV, VARIANTS, measure

# The settings module of each server: the same but for HEARTBEAT_METRICS.
METRICS_SETTINGS = {"on": "benchproj.settings", "off": "benchproj.settings_metrics_off"}
COST_CALLS = {  # what the mixin and the scheduler count, as they call it
    "pings.inc()": "m.pings.inc()",
    "rtt.observe(0.004)": "m.rtt.observe(0.004)",
    "closed.inc(reason=…)": "m.closed.inc(reason='timeout')",
}


def counting_cost(number: int = 200_000, repeat: int = 7) -> dict:
    """Nanoseconds per call of the counters on the hot path, counting on and off (best of)."""
    import timeit

    from heartbeat_app.metrics import Metrics

    out = {}
    for setting in ("on", "off"):
        m = Metrics(enabled=setting == "on")
        out[setting] = {
            label: min(timeit.repeat(stmt, globals={"m": m}, number=number, repeat=repeat))
            / number * 1e9 for label, stmt in COST_CALLS.items()}
    return out


def scrape(server) -> dict:
    """What the server's /metrics says at the end: its ping count, or that counting is off."""
    import urllib.request

    from heartbeat_app.prometheus import OFF_NOTE

    with urllib.request.urlopen(f"http://{bl.HOST}:{server.port}/metrics", timeout=10) as r:
        body = r.read()
    pings = [float(line.split()[-1]) for line in body.decode().splitlines()
             if line.startswith("heartbeat_pings_total ")]
    return {"says_off": body.startswith(OFF_NOTE), "pings": pings[0] if pings else None,
            "heartbeat_series": body.count(b"\nheartbeat_")}


def run_metrics_paired(args):
    ns = [int(x) for x in args.ns.split(",")]
    facts = bl.machine()
    cost = json.loads(subprocess.run(
        bl.client_command("pingpong_metrics", "--counting-cost", cpu=bl.SERVER_CPU), cwd=bl.ROOT,
        check=True, capture_output=True, text=True, timeout=300).stdout)
    rows, room, scrapes = [], itertools.count(), {}
    try:
        with contextlib.ExitStack() as stack:
            servers = {}
            for setting, module in METRICS_SETTINGS.items():
                work = bl.Workdir(f"pingpong-metrics-{setting}")
                env = {**DJANGO_ENV, "DJANGO_SETTINGS_MODULE": module}
                servers[setting] = stack.enter_context(
                    bl.Server(work, "daphne", env, name=f"daphne-metrics-{setting}"))
                measure(servers[setting], "/ws/bare/", 10, 0.5, 0.5)  # warm-up
                measure(servers[setting], "/ws/rooms/ppwarm/", 10, 0.5, 0.5)
            for rep in range(args.reps):
                for n in ns:
                    settings = ("on", "off") if rep % 2 == 0 else ("off", "on")
                    variants = ("bare", "mixin") if rep // 2 % 2 == 0 else ("mixin", "bare")
                    for setting in settings:
                        for variant in variants:
                            path = VARIANTS[variant].format(room=f"ppm{next(room)}")
                            r = measure(servers[setting], path, n, args.warmup, args.duration)
                            r.update(setting=setting, variant=variant, rep=rep)
                            rows.append(r)
                            print(f"metrics {setting:3} {variant:5} N={n:<4} rep {rep} "
                                  f"{r['rt_per_s']:7.0f} RT/s {r['cpu_us_per_rt'] or 0:5.0f} "
                                  f"us/RT (server {r['server_cpu_pct']:.0f}%, client "
                                  f"{r['client_cpu_pct']:.0f}%)", flush=True)
            scrapes = {setting: scrape(server) for setting, server in servers.items()}
    finally:
        bl.redis_cleanup()
    data = {"machine": facts, "commit": args.commit, "uncommitted": uncommitted(),
            "args": vars(args), "cost_ns": cost, "scrapes": scrapes, "rows": rows,
            "summary": summarize_paired(rows, ns)}
    bl.save_results("pingpong-metrics", data)
    plot_paired(data, ns)
    bl.update_doc("pingpong-metrics", render_paired(data, ns))


def uncommitted() -> list[str]:
    """Files of the code under test changed since the commit (other work in the checkout)."""
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                          "heartbeat_app", "project", "bench/benchproj"], cwd=bl.ROOT,
                         capture_output=True, text=True).stdout
    return sorted(line[3:] for line in out.splitlines() if line.strip())


def _spread(values) -> dict:
    return {"median": bl.median(values), "min": min(values), "max": max(values),
            "values": values}


def summarize_paired(rows, ns):
    out = {}
    for n in ns:
        by = {(r["setting"], r["variant"], r["rep"]): r for r in rows if r["n"] == n}
        reps = sorted({rep for (_, _, rep) in by})
        ratio = {s: [by[s, "mixin", k]["rt_per_s"] / by[s, "bare", k]["rt_per_s"]
                     for k in reps] for s in METRICS_SETTINGS}
        cpu = {s: [by[s, "mixin", k]["cpu_us_per_rt"] for k in reps] for s in METRICS_SETTINGS}
        paired = [on / off for on, off in zip(ratio["on"], ratio["off"], strict=True)]
        cpu_paired = [on / off for on, off in zip(cpu["on"], cpu["off"], strict=True)]
        out[n] = {
            "repeats": len(reps),
            "ratio": {s: _spread(v) for s, v in ratio.items()},
            "mixin_cpu_us": {s: _spread(v) for s, v in cpu.items()},
            "bare_cpu_us": {s: _spread([by[s, "bare", k]["cpu_us_per_rt"] for k in reps])
                            for s in METRICS_SETTINGS},
            "mixin_rt_per_s": {s: bl.median([by[s, "mixin", k]["rt_per_s"] for k in reps])
                               for s in METRICS_SETTINGS},
            "on_over_off": _spread(paired),
            "cpu_on_over_off": _spread(cpu_paired),
            # Within noise: the paired repeats do not all lean one way (a sign test).
            "within_noise": min(paired) <= 1 <= max(paired),
        }
    return out


def plot_paired(data, ns):
    plt = bl.pyplot()
    fig, axes = plt.subplots(1, len(ns), figsize=(5 * len(ns), 4), squeeze=False)
    for ax, n in zip(axes[0], ns, strict=True):
        s = data["summary"][n]
        for i, (setting, marker) in enumerate((("on", "o"), ("off", "s"))):
            values = s["ratio"][setting]["values"]
            ax.plot(range(len(values)), values, marker, color=f"C{i}", label=f"metrics {setting}")
            ax.axhline(s["ratio"][setting]["median"], color=f"C{i}", lw=0.8, ls="--")
        ax.set_xlabel("repeat")
        ax.set_ylabel("mixin ÷ bare throughput")
        ax.set_title(f"N={n}: HEARTBEAT_METRICS on and off, paired")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(bl.plot_path("pingpong-metrics"))


def render_paired(data, ns):
    s, a, cost = data["summary"], data["args"], data["cost_ns"]
    changed = data.get("uncommitted") or []
    lines = [
        "## Ping/pong with metrics on and off", "",
        f"Commit `{data['commit']}`"
        + (f" (the checkout also had uncommitted changes to {', '.join(changed)})"
           if changed else "") + ". " + bl.machine_line(data["machine"]), "",
        f"Command: `.venv/bin/python -m bench.pingpong --metrics-paired --reps {a['reps']} "
        f"--duration {a['duration']} --ns {a['ns']}` "
        "(results: `bench/results/pingpong-metrics.json`).", "",
        "Issue 14: counting must not show up in the ping/pong benchmark. Two Daphne processes "
        "(both on CPU 0), the same but for `HEARTBEAT_METRICS` (`True`, and `False` in "
        "`bench/benchproj/settings_metrics_off.py`), each with its own SQLite database, both "
        "on Redis (channels_redis and Redis presence), `HEARTBEAT_RATE_LIMIT` and "
        "`HEARTBEAT_MESSAGE_RATE` off (a closed loop would trip them); both are started and "
        "warmed up before the first repeat, and one idles while the other is measured. Each "
        f"repeat measures on each process the bare consumer and the demo's `RoomConsumer` "
        f"(HeartbeatMixin), N closed-loop ping clients (the raw client on CPU 1), "
        f"{a['warmup']} s warm-up and {a['duration']} s measured each; the order of the "
        "processes alternates every repeat and the order of the variants every second one. A "
        "process's figure in a repeat is mixin ÷ bare throughput, both measured on it seconds "
        "apart, so the machine's drift between repeats cancels out; *on ÷ off* divides the "
        "two processes' figures of the same repeat. The difference is within noise when the "
        "repeats do not all lean one way (on ÷ off above 1 in some, below in others).", "",
        "![mixin ÷ bare throughput per repeat, metrics on and off]"
        "(img/bench-pingpong-metrics.png)", "",
        "| N | metrics | mixin ÷ bare throughput, median [min–max] | mixin RT/s (median) "
        "| mixin CPU µs per round trip, median [min–max] | bare CPU µs per round trip |",
        "|---|---|---|---|---|---|",
    ]
    for n in ns:
        for setting in METRICS_SETTINGS:
            r, c = s[n]["ratio"][setting], s[n]["mixin_cpu_us"][setting]
            lines.append(
                f"| {n} | {setting} | {r['median']:.2f} [{r['min']:.2f}–{r['max']:.2f}] | "
                f"{bl.fmt(s[n]['mixin_rt_per_s'][setting])} | {c['median']:.0f} "
                f"[{c['min']:.0f}–{c['max']:.0f}] | "
                f"{s[n]['bare_cpu_us'][setting]['median']:.0f} |")
    lines += ["", "| N | on ÷ off (mixin ÷ bare), paired, median [min–max] | difference of "
              "the medians, on − off | mixin CPU per round trip, on ÷ off, paired | repeats "
              "with on ÷ off below 1 | within noise |", "|---|---|---|---|---|---|"]
    for n in ns:
        x, q, cq = s[n], s[n]["on_over_off"], s[n]["cpu_on_over_off"]
        diff = x["ratio"]["on"]["median"] - x["ratio"]["off"]["median"]
        lines.append(
            f"| {n} | {q['median']:.3f} [{q['min']:.3f}–{q['max']:.3f}] | {diff:+.3f} "
            f"({diff / x['ratio']['off']['median'] * 100:+.1f} %) | {cq['median']:.3f} "
            f"[{cq['min']:.3f}–{cq['max']:.3f}] | "
            f"{sum(v < 1 for v in q['values'])} of {x['repeats']} | "
            + ("**yes**" if x["within_noise"] else "**no**: on " + (
                "slower" if q["max"] < 1 else "faster") + " in every repeat") + " |")
    lines += ["", "How big the noise is: between repeats the same process's mixin ÷ bare moved "
              + "; ".join(f"{s[n]['ratio'][v]['min']:.2f}–{s[n]['ratio'][v]['max']:.2f} "
                          f"(N={n}, metrics {v})" for n in ns for v in METRICS_SETTINGS)
              + ", and the paired quotients spread as the table shows, so these runs cannot "
              "resolve a difference of a few per cent either way; a sign test over "
              f"{s[ns[0]]['repeats']} repeats calls a lean significant (p < 0.05) only when "
              "every repeat leans the same way. The in-process figures below bound what the "
              "counting itself can cost."]
    on, off = cost["on"], cost["off"]
    cpu_on = bl.median([s[n]["mixin_cpu_us"]["on"]["median"] for n in ns])
    lines += ["", "What the counting costs in-process, on CPU 0 of the same machine "
              "(`timeit`, best of 7 × 200,000 calls; the mixin makes one `pings.inc()` per "
              "ping, the other two come per probe answer and per close): "
              + "; ".join(f"`{label}` {on[label]:.0f} ns with metrics on, {off[label]:.0f} ns "
                          "off" for label in COST_CALLS)
              + f". One `pings.inc()` is {on['pings.inc()'] / (cpu_on * 1000) * 100:.2f} % of "
              f"the mixin's {cpu_on:.0f} µs of server CPU per round trip."]
    sc = data.get("scrapes") or {}
    if sc:
        on_s, off_s = sc.get("on", {}), sc.get("off", {})
        lines += ["", "Checked at the end by a scrape of each process's `/metrics`: the process "
                  f"with metrics on had counted {bl.fmt(on_s.get('pings'))} pings; the one "
                  "with metrics off " + (
                      "said metrics are off and exported no `heartbeat_*` series."
                      if off_s.get("says_off") and not off_s.get("heartbeat_series")
                      else f"did not say so ({off_s})." )]
    return "\n".join(lines)


def main():
    if sys.argv[1:] == ["--counting-cost"]:
        print(json.dumps(counting_cost()), flush=True)
        return
    if sys.argv[1:] == ["--render"]:
        # Redraw the plot and the doc section from the saved results, without measuring.
        data = json.loads((bl.RESULTS / "pingpong-metrics.json").read_text(),
                          object_hook=lambda d: {int(k) if k.isdigit() else k: v
                                                 for k, v in d.items()})
        ns = [int(x) for x in data["args"]["ns"].split(",")]
        plot_paired(data, ns)
        bl.update_doc("pingpong-metrics", render_paired(data, ns))
        return
    raise SystemExit("run it as: python -m bench.pingpong --metrics-paired "
                     "(or --render to redraw the saved results)")


if __name__ == "__main__":
    main()
