"""Write the summary at the top of docs/benchmarks.md from bench/results/*.json.

    .venv/bin/python -m bench.summary
"""

from __future__ import annotations

import json

from bench import benchlib as bl

# The commit of the results file loaded last: every row is tagged with it.
CURRENT = {"commit": None}


def load(name):
    path = bl.RESULTS / f"{name}.json"
    data = json.loads(path.read_text()) if path.exists() else None
    CURRENT["commit"] = (data or {}).get("commit")
    return data


class Rows(list):
    def append(self, row):
        commit = CURRENT["commit"]
        super().append((*row, f"`{commit}`" if commit else "older, see its section"))


def yes(ok: bool) -> str:
    return "met" if ok else "**not met**"


# Issue #12's capacity runs (docs/benchmarks.md, *Capacity*): 19,000 sessions with a bare
# consumer beside them, and 5 rounds at 5,000 of the bare consumer and both layers.
CAPACITY_19K, CAPACITY_5K = "capacity-19k-final", "capacity-5k-rounds"


def _spread(values, digits=1) -> str:
    return (f"{bl.median(values):.{digits}f} [{min(values):.{digits}f}–"
            f"{max(values):.{digits}f}]")


def capacity_rows(out) -> None:
    big = load(CAPACITY_19K)
    if big:
        runs = {r["variant"]: r for r in big["runs"]}
        r, bare = runs.get("redis"), runs.get("bare")
        if r:
            out.append(("sessions held on one Daphne process, default settings (Redis)",
                        f"{r['connected']:,} of {r['target']:,} tried", "19,000",
                        yes(r["connected"] >= 19000)))
            out.append((f"false zombies in a {r['soak_s']:.0f} s soak at {r['connected']:,} "
                        "(interval 5 s, timeout 5 s)", str(r["false_zombies"]), "0",
                        yes(r["false_zombies"] == 0)))
            if bare:
                ratio = r["kib_per_session"] / bare["kib_per_session"]
                out.append((f"RSS per session at {r['connected']:,}, mixin ÷ bare (Redis; bare "
                            f"at {bare['connected']:,} in the same run)",
                            f"{r['kib_per_session']:.1f} ÷ {bare['kib_per_session']:.1f} KiB "
                            f"= {ratio:.2f}", "≤ 1.5", yes(ratio <= 1.5)))
            out.append((f"probe ping in that soak, p50 / p99 / max (CPU {r['soak_cpu_pct']:.0f} %)",
                        f"{r['ping_p50_ms']:.1f} / {r['ping_p99_ms']:.0f} / "
                        f"{r['ping_max_ms']:.0f} ms", "p99 ≤ 50 ms, max ≤ 200 ms",
                        yes(r["ping_p99_ms"] <= 50 and r["ping_max_ms"] <= 200)))
    rounds = load(CAPACITY_5K)
    if not rounds:
        return
    runs = rounds["runs"]
    bare = {r.get("repeat", 0): r for r in runs if r["variant"] == "bare"}
    for variant, layer in (("memory", "in-memory layer"), ("redis", "Redis")):
        mine = [r for r in runs if r["variant"] == variant]
        if not mine:
            continue
        ratios = [r["kib_per_session"] / bare[r.get("repeat", 0)]["kib_per_session"]
                  for r in mine if r.get("repeat", 0) in bare]
        if ratios:
            out.append((f"RSS per session at 5,000, mixin ÷ bare ({layer}; median [min–max] "
                        f"of {len(ratios)} rounds)", _spread(ratios, 2), "≤ 1.5",
                        yes(max(ratios) <= 1.5)))
        soaks = [r for r in mine if "soak_s" in r]
        if soaks:
            met = sum(1 for r in soaks if r["ping_p99_ms"] <= 20 and r["ping_max_ms"] <= 200)
            out.append((f"probe ping p99 / max in {len(soaks)} soaks at 5,000 ({layer})",
                        " · ".join(f"{r['ping_p99_ms']:.1f} / {r['ping_max_ms']:.0f} ms"
                                   for r in soaks), "p99 ≤ 20 ms, max ≤ 200 ms",
                        "met" if met == len(soaks) else
                        f"**not met** ({met} of {len(soaks)} rounds)"))
            zombies = sum(r["false_zombies"] for r in soaks)
            out.append((f"false zombies in those soaks ({layer})", str(zombies), "0",
                        yes(zombies == 0)))


def rows():
    out = Rows()
    pp = load("pingpong")
    if pp:
        r = pp["summary"]["ratios"]
        for server in ("daphne", "uvicorn"):
            mb = r.get(server, {}).get("mixin/bare", {})
            if mb:
                worst = min(v["median"] for v in mb.values())
                cells = ", ".join(f"N={n}: {v['median']:.2f}" for n, v in mb.items())
                out.append((f"ping/pong throughput, mixin ÷ bare consumer ({server})", cells,
                            "≥ 0.90", yes(worst >= 0.9)))
            mp = r.get(server, {}).get("mixin/peerdb", {})
            if mp:
                worst = min(v["median"] for v in mp.values())
                cells = ", ".join(f"N={n}: {v['median']:.1f}×" for n, v in mp.items())
                out.append((f"ping/pong throughput, mixin ÷ DB write per heartbeat ({server})",
                            cells, "≥ 10×", yes(worst >= 10)))
        d = pp["summary"].get("daphne", {})
        n = max(int(k) for k in d.get("mixin", {"0": 0}))
        mix = d.get("mixin", {}).get(str(n), {}).get("cpu_us_per_rt")
        bare = d.get("bare", {}).get(str(n), {}).get("cpu_us_per_rt")
        if mix and bare:
            out.append((f"Daphne CPU per round trip at N={n}, mixin / bare",
                        f"{mix:.0f} / {bare:.0f} µs", "–", "reported"))
    sc = load("scheduler_cost")
    if sc:
        s, t = sc["part1"]["scheduler"], sc["part1"]["tasks"]
        out.append((f"CPU of {s['sessions']:,} idle sessions at a {s['interval']:g} s interval: "
                    "one scheduler / a task per session",
                    f"{s['cpu_pct']:.2f} % / {t['cpu_pct']:.2f} % of a core "
                    f"({t['cpu_pct'] / s['cpu_pct']:.1f}×)",
                    "≤ 1 % of a core (#12), cheaper than tasks",
                    yes(s["cpu_pct"] <= 1.0 and s["cpu_pct"] < t["cpu_pct"])))
        trips = [p["round_trips"]["mean"] for p in sc["part2"]]
        out.append(("presence store round trips per tick at " + ", ".join(
            f"{p['sessions']:,}" for p in sc["part2"]) + " sessions",
            " / ".join(f"{x:.1f}" for x in trips), "constant",
            yes(max(trips) - min(trips) < 0.5)))
    capacity_rows(out)
    flood = load("flood")
    if flood:
        f = flood["summary"]
        within = abs(f["diff_median_ms"]) <= f["quiet_spread_ms"]
        out.append((f"ping flood from one client: others' p99 with it − without it, "
                    f"{len(f['pairs'])} paired windows ({f['sessions']:,} sessions)",
                    f"{f['diff_median_ms']:+.1f} ms [{f['diff_min_ms']:+.1f} to "
                    f"{f['diff_max_ms']:+.1f}]; quiet windows' own spread "
                    f"{f['quiet_spread_ms']:.1f} ms", "within noise",
                    yes(within)))
    z = load("zombies")
    if z:
        s = z["summary"]
        out.append((f"silence → 4408 close, {s['closed_4408']:,} frozen clients (p50 / max)",
                    f"{s['p50_s']:.2f} / {s['max_s']:.2f} s", f"interval + timeout "
                    f"+ 1 tick = {s['bound_s']:g} s", yes(s["max_s"] <= s["bound_s"])))
    c = load("crash")
    if c:
        worst = max(r["last_s"] or 1e9 for r in c["reps"])
        out.append((f"kill -9 → last leave on the other worker (worst of {len(c['reps'])})",
                    f"{worst:.2f} s", f"{c['bound_s']:g} s", yes(worst <= c["bound_s"])))
    rd = load("presence_reads")
    if rd:
        big = rd["rows"][-1]
        m, n = big["members"], big["count"]
        mtxt = f"fails ({m['error'].split(':')[0]})" if "error" in m else \
            f"{m['p50_ms']:.1f} / {m['p99_ms']:.1f} ms"
        out.append((f"members() of a room of {big['size']:,} (p50 / p99)", mtxt, "works",
                    yes("error" not in m)))
        out.append((f"count() of a room of {big['size']:,} (p50 / p99)",
                    f"{n['p50_ms']:.2f} / {n['p99_ms']:.2f} ms", "–", "reported"))
    rp = load("reaper")
    if rp:
        for tag, run in rp["runs"].items():
            CURRENT["commit"] = run["commit"]
            big = run["rows"][-1]
            out.append((f"Redis held by a reaper pass, {big['rooms']:,} rooms ({tag})",
                        f"{big['redis_p50_ms']:.2f} ms p50", "–", "reported"))
    hs = load("handshake")
    if hs:
        for run in hs["runs"]:
            r = run["ratios"]
            med = bl.median(r)
            out.append((f"server CPU per handshake, mixin ÷ bare consumer ({run['layer']})",
                        f"{med:.2f}× [{min(r):.2f}–{max(r):.2f}], {len(r)} rounds", "≤ 1.3×",
                        yes(max(r) <= 1.3) if max(r) <= 1.3 or med > 1.3 else
                        "median met, not every round"))
    for name in ("storm", "storm-19k"):
        st = load(name)  # loaded one at a time: each row gets its own file's commit
        if not st:
            continue
        for run in st["runs"]:
            s = run["summary"]
            n = s["connected_before"]
            back = s["reconnected"] >= n
            limit = 25 if n <= 5000 else 120
            in_time = back and s["t100_s"] is not None and (n < 5000 or s["t100_s"] <= limit)
            clean = not s.get("http_5xx") and not s.get("handshake_timeouts")
            out.append((f"restart storm: {n:,} clients",
                        f"{s['reconnected']:,} back, the last at {bl.fmt(s['t100_s'], 1)} s; "
                        f"HTTP 5xx {s.get('http_5xx', 0):,}, handshake timeouts "
                        f"{s.get('handshake_timeouts', 0):,}, refused "
                        + (", ".join(f"{k}: {v:,}" for k, v in s.get("refusals", {}).items())
                           or "none"),
                        "all back" + (f" within {limit} s" if n >= 5000 else "")
                        + ", no 5xx, no timeout", yes(in_time and clean)))
            p99 = s["ping_p99_ms"]
            out.append((f"probe ping during the storm of {n:,} (p50 / p99 / max)",
                        f"{bl.fmt(s['ping_p50_ms'], 1)} / {bl.fmt(p99, 1)} / "
                        f"{bl.fmt(s['ping_max_ms'], 1)} ms", "p99 ≤ 1 s",
                        yes(p99 is not None and p99 <= 1000)))
    for name in ("rolling", "rolling-4000"):
        ro = load(name)
        if not ro:
            continue
        s = ro["summary"]
        backs = [p["all_back_s"] for p in s["phases"]]
        out.append((f"rolling restart behind nginx, {s['connected']:,} clients: all back "
                    "after each restart",
                    " / ".join(f"{bl.fmt(x, 1)} s" for x in backs), "all back",
                    yes(all(x is not None for x in backs))))
        out.append((f"rolling restart of {s['connected']:,}: members that blinked / ghosts "
                    "at the end",
                    f"{s['blinks']:,} / {s['ghosts']:,}", "0 / 0",
                    yes(s["blinks"] == 0 and s["ghosts"] == 0)))
    big = load("bigroom")
    for r in sorted((big or {}).get("runs", {}).values(),
                    key=lambda r: (-r["size"], r["kind"] != "count")):
        CURRENT["commit"] = r.get("commit")  # each run of this file names its own commit
        what = ("count-only" if r["kind"] == "count" else "full list") + (
            f", {r['tag']}" if r.get("tag") else "")
        late = r.get("late")
        if late:
            to_each = (late["presence_count_bytes_per_member_per_join"]
                       + late["presence_diff_bytes_per_member_per_join"])
            out.append((f"a join late in the ramp of a room of {r['size']:,}, {what}: server "
                        "CPU / joiner's presence_state / bytes to each member",
                        f"{late['cpu_ms_per_join']:.1f} ms / "
                        f"{bl.fmt(bl.pct(late['state_bytes'], 50))} B / {to_each:,.1f} B",
                        "–", "reported"))
        elif not r["ramp"]["done"]:
            out.append((f"ramp into a room of {r['size']:,}, {what}",
                        f"{r['ramp']['joined']:,} of {r['ramp']['planned']:,} joined in "
                        f"{r['ramp']['seconds']:.0f} s (budget)", "–", "reported"))
        t = r.get("typing")
        if t:
            p99 = [bl.pct([x[1] * 1000 for x in t["probes"][w]["rtts"]], 99)
                   for w in ("in_room", "other_room")]
            base = [bl.pct([x[1] * 1000 for x in t["baseline"][w]["rtts"]], 99)
                    for w in ("in_room", "other_room")] if "baseline" in t else [None, None]
            out.append((f"probe ping p99 with {t['senders']} members typing at {t['rate']:g}/s "
                         f"in a room of {r['size']:,} (probes in the room / in another room; "
                         "nobody typing just before)",
                         " / ".join(f"{bl.fmt(x, 1)} ms" for x in p99) + "; " + " / ".join(
                             f"{bl.fmt(x, 1)} ms" for x in base), "≤ 20 ms",
                         yes(all(x is not None and x <= 20 for x in p99))))
            got = sum(t["delivered_per_sender"].values())
            per = got / max(1, t["recipients"]) / t["senders"] / t["seconds"]
            out.append(("typing signals delivered per sender per second in that room",
                        f"{per:.3f}", f"{min(t['rate'], 10):g} (`PRESENCE_SIGNAL_RATE`)",
                        yes(per >= 0.9 * min(t["rate"], 10))))
    return out


def main():
    lines = ["## Summary", "",
             "Headline figures of the latest run of each benchmark (details, plots and "
             "commands in the sections below; `.venv/bin/python -m bench.summary` rewrites "
             "this table from `bench/results/`). *Commit*: the code a figure was measured "
             "on; rows marked *older* come from runs made before the admission gate, the "
             "drain, batched joins and upserted session rows, and are due to be run again.",
             "",
             "| figure | measured | target | | commit |", "|---|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows()]
    bl.update_doc("summary", "\n".join(lines))


if __name__ == "__main__":
    main()
