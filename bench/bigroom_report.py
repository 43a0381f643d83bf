"""The doc section and the plot of bench/bigroom.py, drawn from bench/results/bigroom.json.

Kept apart from the measurement: ``python -m bench.bigroom --render`` redraws both from
the saved results without measuring.
"""

from __future__ import annotations

from bench import benchlib as bl
from bench.roomclient import LATENCY_SAMPLE

NAME = "bigroom"
ROOM, PROBE_ROOM = "big", "bigprobe"
PER_PROCESS = 2500
PROBES = 2  # per probe process: in the room, and in a room of their own

LABELS = {"count": "count-only", "full": "full list"}
SKIP = ("<module>", "run_forever", "_run_once", "_bootstrap", "entrypoint (cli", "_run_code",
        "_run_module_as_main", "run (threading", "_worker", "run (asyncioreactor",
        "Handle._run", "Server.run", "CommandLineInterface.run", "callWithContext",
        "callWithLogger", ".__call__ (", "as_asgi.<locals>.app")  # wrappers, middleware
# Functions whose share of the profile the text names (inclusive samples).
NAMED = {
    "aclose_old_connections (db.py)": "Channels' `aclose_old_connections()`, a thread hop "
    "that `AsyncConsumer.dispatch` makes before every channel-layer message",
    "RedisChannelLayer.receive (core.py)": "channels_redis' `receive()` (two tasks and an "
    "`asyncio.wait` per message and consumer)",
    "await_many_dispatch (utils.py)": "Channels' `await_many_dispatch` (a task per message)",
    "RedisChannelLayer.group_send (core.py)": "channels_redis' `group_send` (the group's "
    "members read and packed for every signal)",
    "write (recorder.py)": "session rows (`Recorder.write`, on the database thread)",
    "Server.application_checker (server.py)": "Daphne's `application_checker` (a pass over "
    "every connection each second)",
    "Scheduler.step (scheduler.py)": "the heartbeat scheduler",
}


def label(r: dict, sep: str = ", ") -> str:
    """A run's name in the tables: its kind, its size and, if any, its tag."""
    return (f"{LABELS[r['kind']]}{sep}{r['size']:,}"
            + (f" ({r['tag']})" if r.get("tag") else ""))


def ordered(data) -> list[dict]:
    return sorted(data["runs"].values(), key=lambda r: (-r["size"], r["kind"] != "count"))


def plot(data):
    plt = bl.pyplot()
    runs = ordered(data)
    typing_runs = [r for r in runs if r.get("typing")]
    fig, axes = plt.subplots(1, 2 if typing_runs else 1, figsize=(12, 4.2), squeeze=False)
    ax = axes[0, 0]
    for r in runs:
        curve = r["ramp"]["curve"]
        if curve:
            ax.plot([c[0] for c in curve], [c[1] for c in curve],
                    label=label(r)
                    + ("" if r["ramp"]["done"] else " (stopped at the budget)"))
    ax.set_xlabel("seconds from the first connect")
    ax.set_ylabel("members joined (presence_state received)")
    ax.set_title("Ramp into one room, one Daphne process")
    ax.legend(fontsize=7)
    if typing_runs:
        ax = axes[0, 1]
        t = typing_runs[0]["typing"]
        for (where, color) in (("in_room", "C0"), ("other_room", "C1")):
            base = t["baseline"][where]["rtts"]
            during = t["probes"][where]["rtts"]
            t0 = min(x[0] for x in base + during)
            ax.plot([x[0] - t0 for x in base], [x[1] * 1000 for x in base], ".", ms=1.5,
                    color=color, alpha=0.5)
            ax.plot([x[0] - t0 for x in during], [x[1] * 1000 for x in during], ".", ms=1.5,
                    color=color, label=f"probes {where.replace('_', ' ')}")
        ax.axhline(20, color="k", ls=":", lw=0.8, label="target p99 20 ms")
        ax.set_yscale("log")
        ax.set_xlabel("seconds (baseline, then typing)")
        ax.set_ylabel("ping RTT, ms (log)")
        ax.set_title(f"Probes every 20 ms; {t['senders']} typing senders at "
                     f"{t['rate']:g}/s in the room of {typing_runs[0]['size']:,}")
        ax.legend(fontsize=7, markerscale=6)
    fig.tight_layout()
    fig.savefig(bl.plot_path(NAME))


def rtt_cells(probe: dict) -> str:
    ms = [x[1] * 1000 for x in probe["rtts"]]
    if not ms:
        return "–"
    return (f"{bl.fmt(bl.pct(ms, 50), 1)} / {bl.fmt(bl.pct(ms, 99), 1)} / "
            f"{bl.fmt(max(ms), 1)} ms ({len(ms):,} pings, {probe['unanswered']} unanswered)")


def rtt_p99(probe: dict) -> float | None:
    return bl.pct([x[1] * 1000 for x in probe["rtts"]], 99)


def share(profile: dict | None, name: str) -> float | None:
    if not profile or not profile.get("total"):
        return None
    for fn, count in profile["inclusive"]:
        if fn == name:
            return count / profile["total"] * 100
    return 0.0


def profile_table(profile: dict, title: str) -> list[str]:
    total = profile["total"]
    out = [title, "", "| function (file) | inclusive | self |", "|---|---|---|"]
    own = dict(profile["self"])
    shown = 0
    for fn, count in profile["inclusive"]:
        if any(x in fn for x in SKIP):
            continue
        out.append(f"| `{fn}` | {count / total * 100:.1f} % | "
                   f"{own.get(fn, 0) / total * 100:.1f} % |")
        shown += 1
        if shown >= 15:
            break
    out += ["", "| most samples at the top of the stack (self) | |", "|---|---|"]
    out += [f"| `{fn}` | {count / total * 100:.1f} % |" for fn, count in profile["self"][:10]]
    return out + [""]


def named_shares(profile: dict | None) -> str:
    parts = []
    for fn, what in NAMED.items():
        x = share(profile, fn)
        if x:
            parts.append(f"{what}: {x:.0f} %")
    return "; ".join(parts)


def gc_text(pauses: list[float], seconds: float) -> str:
    if not pauses:
        return "no full collection over 10 ms"
    return (f"{len(pauses)} full collections over 10 ms, {sum(pauses) / 1000:.1f} s in all "
            f"({sum(pauses) / 1000 / seconds * 100:.0f} % of the {seconds:.0f} s), the longest "
            f"{max(pauses):,.0f} ms")


def log_cell(log: dict[str, int]) -> str:
    lines = {k: v for k, v in log.items() if "sessions:" not in k}
    return ", ".join(f"`{k}`: {v:,}" for k, v in sorted(lines.items(), key=lambda x: -x[1])) \
        or "none"


def per_member(r: dict) -> str:
    late = r["late"]
    if r["kind"] == "count":
        b, f = (late["presence_count_bytes_per_member_per_join"],
                late["presence_count_frames_per_member"])
        extra = late["presence_diff_bytes_per_member_per_join"]
        return (f"{b:.2f} B of `presence_count` ({f:.1f} counts in the window)"
                + (f", {extra:.1f} B of diffs" if extra else ""))
    b, f = (late["presence_diff_bytes_per_member_per_join"],
            late["presence_diff_frames_per_member"])
    return f"{b:,.0f} B of `presence_diff` ({f:.1f} diffs in the window)"


def render(data) -> str:
    runs = ordered(data)
    if not runs:
        return "## A room of 10,000 members\n"
    first = runs[0]
    gc_args = {r["env"].get("BENCH_GC_THRESHOLD") for r in runs}
    gc_note = ("the collector as the app sets it (`HEARTBEAT_GC_THRESHOLD` at its default, "
               "\"auto\")" if gc_args == {None} else
               "`gc.set_threshold(" + ", ".join(sorted(str(g) for g in gc_args if g))
               + ")` in the server (`BENCH_GC_THRESHOLD` of `bench/benchproj`)"
               + (" unless a run's tag says otherwise" if None in gc_args else ""))
    with_late = next((r for r in runs if r.get("late")), first)
    late_n, rate = with_late["late_planned"], with_late["rate"]
    lines = [
        "## A room of 10,000 members", "",
        bl.machine_line(first["machine"]), "",
        "Commands (results: `bench/results/bigroom.json`, one entry per run; the runs "
        "were made on more than one machine, named at each: compare only runs of one):"
        if len({r["machine"]["cpu"] for r in runs}) > 1 else
        "Commands (results: `bench/results/bigroom.json`, one entry per run):", "",
    ]
    for r in runs:
        m = r["machine"]
        lines.append(f"- `{r['command']}`: commit `{r['commit']}`, measured {m['date']} on "
                     f"{m['cpus']} × {m['cpu']}, load average "
                     f"{' / '.join(map(str, m['loadavg']))}")
    lines += [
        "",
        "One Daphne process (CPU 0, open-file limit "
        f"{first.get('server_nofile', '?').split()[0]}) with the Redis layer and Redis "
        "presence serves the demo's `RoomConsumer` (`bench/benchproj`, the demo's settings "
        f"and middleware, session rows included), with {gc_note}. Every member is in the "
        f"room `{ROOM}`. Client processes (CPU 1, the raw client of `bench/roomclient.py`, "
        f"{PER_PROCESS:,} connections each, {first.get('inflight', 25)} handshakes in flight "
        "each) open the room up to its size less "
        f"{late_n:,}; once the server's CPU has settled (two 5 s windows within 5 points of "
        f"a core) and its idle rate has been read for {with_late.get('idle_s', 10):g} s, the "
        f"last {late_n:,} members join from a process of their own, {rate:g} a second "
        "asked. A member has joined when its `presence_state` arrived. For "
        "those late joins: the payload bytes of the joiner's `presence_state`, the bytes "
        "every existing member received per join (`presence_diff`s with the full list; "
        "`presence_count`s, at most one per `PRESENCE_COUNT_INTERVAL` of 2 s, spaced out "
        "further while the process lags, in a count-only room), counted from the first "
        "late connect until every observer (the "
        "first member of each client process) has been told of the last join (a count sent "
        "after it, or diffs carrying every late join; at most 30 s), and the "
        "server's CPU (user + system from /proc/<pid>/stat) over the same window, less the "
        "idle rate. *count-only* is `PRESENCE_FULL_LIST_MAX` at its default, 200; *full "
        "list* sets it to 100,000. A ramp not done within the budget stops there.", "",
        "![Ramps into one room, and the probes' ping RTT while members type]"
        f"(img/bench-{NAME}.png)",
        "",
        "### Joins late in the ramp", "",
        "| run | members before | late joins | joiner's `presence_state` (payload, p50) | "
        "connect → `presence_state` p50 / p99 | each existing member got, per join | server "
        "CPU per join, idle subtracted (gross) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        if "late" not in r and r["ramp"]["done"]:
            continue  # a run for the typing only
        if "late" not in r:
            lines.append(f"| {label(r)} | ramp stopped at "
                         f"{r['ramp']['joined']:,} of {r['ramp']['planned']:,} "
                         f"(budget {r['ramp']['seconds']:.0f} s) | – | "
                         f"{bl.fmt(r['ramp'].get('tail_state_bytes_p50'))} B (the ramp's last "
                         "joins) | "
                         f"{bl.fmt(r['ramp'].get('tail_join_ms_p50'))} ms p50 (the ramp's last "
                         "joins) | – | – |")
            continue
        late = r["late"]
        lines.append(
            f"| {label(r)} | {r['ramp']['joined']:,} | "
            f"{late['joined']:,}, {r['rate']:g}/s asked, "
            f"{late['joined'] / max(1e-9, late['seconds']):.1f}/s done | "
            f"{bl.fmt(bl.pct(late['state_bytes'], 50))} B | "
            f"{bl.fmt(bl.pct(late['join_ms'], 50), 1)} / {bl.fmt(bl.pct(late['join_ms'], 99), 1)}"
            f" ms | {per_member(r)} | {late['cpu_ms_per_join']:.1f} ms "
            f"({late['cpu_ms_per_join_gross']:.1f}) |")
    lines += ["", "| run | ramp | server CPU in the ramp | joins a second at the end | "
              "server CPU idle after the ramp | full collections in the whole run | failed "
              "attempts (retried) | server log (session lines left out) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        ramp = r["ramp"]
        errors: dict[str, int] = {}
        for e in ramp["errors"]:
            for k, v in e.items():
                errors[k] = errors.get(k, 0) + v
        err = ", ".join(f"`{k}`: {v}" for k, v in sorted(errors.items(), key=lambda x: -x[1]))
        g = r["gc_pauses_ms"]
        lines.append(
            f"| {label(r)} | {ramp['joined']:,} of {ramp['planned']:,} "
            f"in {ramp['seconds']:.0f} s{'' if ramp['done'] else ' (budget)'} | "
            f"{ramp['cpu_pct']:.0f} % | {bl.fmt(ramp.get('tail_rate'), 1)} | "
            f"{bl.fmt(r.get('idle_cpu_pct'))} % | "
            f"{len(g)}, {sum(g) / 1000:.1f} s, longest {bl.fmt(max(g) if g else None)} ms | "
            f"{err or 'none'} | {log_cell(r.get('log', {}))} |")
    lines.append("")
    for r in runs:
        prof = r.get("idle_profile")
        if prof and prof.get("total"):
            lines += [f"What the process of {label(r)} did with nobody joining, at "
                      f"{bl.fmt(r['idle_cpu_pct'])} % of a core (py-spy over the idle "
                      f"baseline, {prof['total']:,} samples): "
                      + (named_shares(prof) or "see the table") + ".", ""]
            lines += profile_table(prof, "Profile of the idle baseline (py-spy, 100 Hz; idle "
                                   "time not sampled), most samples on the stack:")
    lines += ratios(data)
    for r in runs:
        if not r["ramp"]["done"]:
            lines += unfinished(r)
    typed = [r for r in runs if r.get("typing")]
    for r in typed:
        lines += typing_section(r)
    return "\n".join(lines)


def ratios(data) -> list[str]:
    out = []
    sizes = sorted({r["size"] for r in data["runs"].values()})
    for size in sizes:
        c, f = data["runs"].get(f"count-{size}"), data["runs"].get(f"full-{size}")
        if not (c and f and "late" in c and "late" in f):
            continue
        cl, fl = c["late"], f["late"]
        cs, fs = bl.pct(cl["state_bytes"], 50), bl.pct(fl["state_bytes"], 50)
        cb = cl["presence_count_bytes_per_member_per_join"] + \
            cl["presence_diff_bytes_per_member_per_join"]
        fb = fl["presence_diff_bytes_per_member_per_join"] + \
            fl["presence_count_bytes_per_member_per_join"]
        out += [f"At {size:,} members, side by side: the full list costs "
                f"{fl['cpu_ms_per_join'] / max(1e-9, cl['cpu_ms_per_join']):.1f}× the server "
                f"CPU per join of count-only ({fl['cpu_ms_per_join']:.1f} against "
                f"{cl['cpu_ms_per_join']:.1f} ms), a `presence_state` {fs / cs:,.0f}× larger "
                f"({fs:,} against {cs:,} B) and {fb / max(1e-9, cb):,.0f}× the bytes to every "
                f"existing member per join ({fb:,.1f} against {cb:,.2f} B).", ""]
    return out


def unfinished(r) -> list[str]:
    ramp = r["ramp"]
    out = [f"**{label(r, ' at ')}: not finished within the budget.** "
           f"{ramp['joined']:,} of {ramp['planned']:,} members had joined after "
           f"{ramp['seconds']:.0f} s, at {bl.fmt(ramp.get('tail_rate'), 1)} joins a second at "
           f"the end, each of those last joins taking {bl.fmt(ramp.get('tail_join_ms_p50'))} "
           f"ms (p50) from connect to its `presence_state` of "
           f"{bl.fmt(ramp.get('tail_state_bytes_p50'))} B; the server ran at "
           f"{ramp['cpu_pct']:.0f} % CPU; "
           + gc_text(r["gc_pauses_ms"], ramp["seconds"]) + "."]
    prof = r.get("ramp_profile")
    if prof and prof.get("total"):
        named = named_shares(prof)
        out += ["", f"Where its CPU went (py-spy over the ramp, {prof['total']:,} samples): "
                + (named + "." if named else "see the table.")]
        out += [""] + profile_table(prof, "Profile of that ramp (py-spy, 100 Hz, the main "
                                    "thread and the database thread; idle time not "
                                    "sampled), most samples on the stack:")
    return out + [""]


def typing_section(r) -> list[str]:
    t = r["typing"]
    senders, rate, secs = t["senders"], t["rate"], t["seconds"]
    sent = sum(t["sent_per_sender"].values())
    got = sum(t["delivered_per_sender"].values())
    m0, m1, m2 = (m.get("heartbeat_presence_signals_total") for m in t["metrics"])
    emitted = (m2 - m0) if m0 is not None and m2 is not None else None
    emitted_window = (m1 - m0) if m0 is not None and m1 is not None else None
    recipients = t["recipients"]
    per_sender = got / max(1, recipients) / senders / secs
    # Older runs kept every delay; newer ones their percentiles (bigroom.delay_summary).
    delays = t.get("delays") or {"count": len(t["delays_s"]), "pct_ms": [
        bl.pct([d * 1000 for d in t["delays_s"]], p) for p in range(101)]}
    seqs = t["observer_seqs"]
    last_q = int(rate * secs) - 1
    got_last = sum(1 for v in seqs.values() if last_q in v)
    p99s = {w: rtt_p99(t["probes"][w]) for w in ("in_room", "other_room")}
    logs = {k: v for k, v in t.get("log", {}).items() if "sessions:" not in k}
    idle = t["baseline_cpu_pct"] / 100  # the probes alone
    out = [
        f"### Typing in the room of {r['size']:,}", "",
        f"{senders} members (spread over the client processes) each send "
        f"`{{\"type\":\"broadcast\",\"room\":\"{ROOM}\",\"event\":\"typing\",...}}` "
        f"{rate:g} times a second for {secs:g} s, out of step with each other. Probes: "
        f"{PROBES} connections that are members of the room (they also receive the signals) "
        f"and {PROBES} in a room of their own (`{PROBE_ROOM}`), each sending a protocol "
        f"`ping` every {t['probe_every_ms']:g} ms on a fixed schedule (a stall delays, and "
        "counts, every ping sent during it), in their own client process; the baseline is "
        "the same probes with nobody typing, just before. The room then has "
        f"{t['members']:,} members. Signals were counted until none had arrived for 3 s "
        f"(at most 45 s after the senders stopped). `HEARTBEAT_MESSAGE_RATE` is off in this "
        "run, so the probes' 50 frames a second, read at once after a stall, do not get them "
        "closed with 4429. `PRESENCE_SIGNAL_RATE` is 10: the "
        "server sends at most 10 signals a second per sender, room and event, the latest "
        "winning.", "",
        "| probe ping p50 / p99 / max | members of the room | in another room |",
        "|---|---|---|",
        f"| baseline, nobody typing (server CPU {t['baseline_cpu_pct']:.0f} %) | "
        f"{rtt_cells(t['baseline']['in_room'])} | {rtt_cells(t['baseline']['other_room'])} |",
        f"| while {senders} members type (server CPU {t['cpu_pct']:.0f} %) | "
        f"{rtt_cells(t['probes']['in_room'])} | {rtt_cells(t['probes']['other_room'])} |",
        "",
        "| typing fan-out | |", "|---|---|",
        f"| signals sent by the clients | {sent:,} ({sent / senders / secs:.1f} a second per "
        "sender) |",
        "| signals the server sent on (`heartbeat_presence_signals_total`) | "
        + (f"{emitted:,.0f} ({emitted / senders / secs:.2f} a second per sender; "
           f"{emitted_window:,.0f} of them while the senders sent)" if emitted is not None
           else "– (the metrics view did not answer)") + " |",
        f"| signals received, all members together | {got:,} of "
        + (f"{emitted * recipients:,.0f} sent on × {recipients:,} recipients "
           f"({got / max(1, emitted * recipients) * 100:.2f} %)" if emitted else "–") + " |",
        f"| delivered per sender per second, at an average member | **{per_sender:.3f}** "
        f"(target {min(rate, 10):g}) |",
        f"| delay of a delivered signal, send → receipt, p50 / p99 (every "
        f"{LATENCY_SAMPLE}th member) | {bl.fmt(delays['pct_ms'][50])} / "
        f"{bl.fmt(delays['pct_ms'][99])} ms ({delays['count']:,} receipts) |",
        f"| senders whose last signal reached the observer member | {got_last} of {senders} |",
        f"| signals still arriving after the senders stopped | for {t['drain_s']:.1f} s |",
        "| server CPU per signal received by a member, from the first signal until the "
        "drain ended (idle rate subtracted) | "
        + (f"{(t['cpu_s_to_drained'] - idle * t['seconds_to_drained']) / got * 1e6:,.0f} µs"
           if got and "cpu_s_to_drained" in t else "–") + " |",
        f"| full collections over 10 ms, the window and the drain | "
        f"{gc_text(t['gc_ms'], t['window_s'] + t['drain_s'])} |",
        "| server log lines in the window and the drain | "
        + (", ".join(f"`{k}`: {v:,}" for k, v in sorted(logs.items(), key=lambda x: -x[1]))
           or "none") + " |",
        "",
    ]
    met_rtt = all(p is not None and p <= 20 for p in p99s.values())
    met_fan = per_sender >= 0.9 * min(rate, 10)
    out += [f"Targets: probe ping p99 ≤ 20 ms: {'met' if met_rtt else '**not met**'} "
            f"({bl.fmt(p99s['in_room'], 1)} ms in the room, {bl.fmt(p99s['other_room'], 1)} ms "
            f"in another room); every sender's signals delivered at up to "
            f"`PRESENCE_SIGNAL_RATE` ({min(rate, 10):g} a second): "
            f"{'met' if met_fan else '**not met**'} ({per_sender:.3f}).", ""]
    prof = (t.get("profiled") or {}).get("profile")
    if prof and prof.get("total"):
        named = named_shares(prof)
        p = t["profiled"]
        out += [f"A second burst of {p['window_s']:.0f} s, run only to profile it (py-spy on "
                f"CPU 1, {prof['total']:,} samples): "
                + (named + "." if named else "see the table.") + " Its probes: "
                f"{rtt_cells(p['probes']['other_room'])} in another room.", ""]
        out += profile_table(prof, "Profile of the typing burst (py-spy, 100 Hz; idle time "
                             "not sampled), most samples on the stack:")
    return out
