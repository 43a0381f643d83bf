"""A room of 10,000 members on one Daphne process: what a join costs, count-only against the
full member list, and typing signals in that room while probes ping.

One Daphne process (CPU 0) with the Redis layer and Redis presence serves the demo's
``RoomConsumer`` (``bench/benchproj``); every member is in the room ``big``. Client
processes (CPU 1, the raw client of ``bench/roomclient.py``, 2,500 connections each from
source addresses 127.0.0.2, 127.0.0.3, ...) open the room up to ``size - late`` members,
then the last ``--late`` members join at ``--rate`` a second from a process of their own.
For those late joins the run measures the server's CPU (user + system from
/proc/<pid>/stat, the idle rate of the minutes before subtracted), the payload bytes of the
joiner's ``presence_state`` and the bytes every existing member received per join
(``presence_diff`` with the full list, ``presence_count`` every PRESENCE_COUNT_INTERVAL in
a count-only room). A run is ``count:N`` (PRESENCE_FULL_LIST_MAX at its default, 200)
or ``full:N`` (PRESENCE_FULL_LIST_MAX=100000: the full list). ``--budget`` bounds the ramp:
a run whose ramp is not done by then stops there and reports how far it got.

With ``--typing K`` a count-only run goes on: K members each send ``broadcast`` event
``typing`` ``--typing-rate`` times a second for ``--typing-seconds``, while probe clients
(two members of the room and two connections in a room of their own, ``bigprobe``) send
a protocol ping every 20 ms on a fixed schedule; the same probes ping for as long before
the typing starts, as the baseline. ``--profile`` runs py-spy (on CPU 1) over the ramp
and over an extra typing burst after the measured one.

    .venv/bin/python -m bench.bigroom --runs count:10000 --typing 100 --profile
    .venv/bin/python -m bench.bigroom --runs full:10000 --budget 300 --profile
    .venv/bin/python -m bench.bigroom --runs full:2000,count:2000

Results go to ``bench/results/bigroom.json``, one entry per run (a later invocation
replaces the runs it repeats and keeps the others, each with its own commit); the section
of docs/benchmarks.md is drawn from all of them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

from bench import benchlib as bl
from bench.handshake import top_lines
from bench.roomclient import LATENCY_SAMPLE

NAME = "bigroom"
ROOM, PROBE_ROOM = "big", "bigprobe"
PER_PROCESS = 2500
FULL_LIST_OFF = "100000"  # PRESENCE_FULL_LIST_MAX above any room here: the full list
COUNT_INTERVAL = 2.0  # PRESENCE_COUNT_INTERVAL, the demo's (and the app's) default
PROBE_EVERY = 0.02
PROBES = 2  # per probe process: in the room, and in a room of their own


class Clients:
    """A bench/roomclient.py process, driven by JSON commands."""

    def __init__(self, port: int, path: str, source: str):
        self.proc = bl.spawn_client("roomclient", json.dumps(
            {"port": port, "path": path, "source": source}))

    def send(self, **cmd) -> None:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def read(self) -> dict:
        return bl.read_json_line(self.proc)

    def cmd(self, **cmd) -> dict:
        self.send(**cmd)
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except Exception:
                self.proc.kill()
                self.proc.wait()


def all_cmd(procs: list[Clients], **cmd) -> list[dict]:
    for p in procs:
        p.send(**cmd)
    return [p.read() for p in procs]


class CpuSampler(threading.Thread):
    """The server's CPU once a second, for the plot of the ramp."""

    def __init__(self, server: bl.Server):
        super().__init__(daemon=True)
        self.server, self.samples, self.running = server, [], True

    def run(self):
        last_t, last_c = time.time(), self.server.cpu_seconds()
        while self.running:
            time.sleep(1.0)
            try:
                t, c = time.time(), self.server.cpu_seconds()
            except Exception:
                return
            self.samples.append((t, (c - last_c) / (t - last_t) * 100))
            last_t, last_c = t, c


def cpu_over(server: bl.Server, seconds: float) -> float:
    c0, t0 = server.cpu_seconds(), time.time()
    time.sleep(seconds)
    return (server.cpu_seconds() - c0) / (time.time() - t0)


def settle(server: bl.Server, low: float = 0.35, least: float = 5.0, most: float = 60.0):
    """Wait until the server's CPU over one second is below ``low`` of a core."""
    t0 = time.time()
    time.sleep(least)
    while time.time() - t0 < most and cpu_over(server, 1.0) > low:
        pass
    return time.time() - t0


def scrape(port: int) -> dict[str, float]:
    """The app's counters from the server's /metrics view."""
    out = {}
    try:
        with urllib.request.urlopen(f"http://{bl.HOST}:{port}/metrics", timeout=60) as r:
            text = r.read().decode()
    except Exception as exc:
        return {"error": str(exc)[:80]}
    for line in text.splitlines():
        m = re.match(r"(heartbeat_presence_(?:signals|broadcasts)_total)(\{[^}]*\})? ([0-9.e+]+)",
                     line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0) + float(m.group(3))
    return out


def py_spy(pid: int, seconds: float, out: str) -> subprocess.Popen:
    """py-spy record on the client CPU, so sampling takes no time from the server's."""
    return subprocess.Popen(
        ["taskset", "-c", str(bl.CLIENT_CPU), os.path.join(os.path.dirname(bl.PY), "py-spy"),
         "record", "--pid", str(pid), "--format", "raw", "--duration", str(int(seconds)),
         "--rate", "100", "--nonblocking", "--output", out],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def py_spy_dump(pid: int) -> str:
    exe = os.path.join(os.path.dirname(bl.PY), "py-spy")
    try:
        return subprocess.run([exe, "dump", "--pid", str(pid), "--nonblocking"],
                              capture_output=True, text=True, timeout=60).stdout
    except Exception as exc:
        return f"py-spy dump failed: {exc!r}"


def stop_spy(spy: subprocess.Popen | None, raw: str) -> dict | None:
    if spy is None:
        return None
    if spy.poll() is None:
        spy.send_signal(signal.SIGINT)  # py-spy writes what it has
    try:
        spy.wait(timeout=60)
    except subprocess.TimeoutExpired:
        spy.kill()
    return top_lines(raw, 20)


def gc_pauses(log: str) -> list[float]:
    return [float(x) for x in re.findall(r"gc gen2 pause ([0-9.]+) ms", log)]


def log_summary(text: str) -> dict[str, int]:
    """The server's log lines by level, logger and the words that open the message."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+) (.*)", line)
        if m:
            words = m.group(3).split(" member=")[0]  # the session log: one key per event
            words = re.sub(r"\b\S*\d\S*", "#", words)[:60]
            key = f"{m.group(1)} {m.group(2)}: {words}"
            out[key] = out.get(key, 0) + 1
    return out


def merge(counters: list[dict], side: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for c in counters:
        for kind, (frames, nbytes) in c[side].items():
            slot = out.setdefault(kind, [0, 0])
            slot[0] += frames
            slot[1] += nbytes
    return out


def delta(after: dict, before: dict) -> dict[str, list[int]]:
    return {k: [v[0] - before.get(k, [0, 0])[0], v[1] - before.get(k, [0, 0])[1]]
            for k, v in after.items() if v != before.get(k, [0, 0])}


def observers_done(counters: list[dict], kind: str, expect_count: int, expect_joins: int,
                   before: list[dict]) -> bool:
    """Whether every observer has been told of the late joins (a count, or their diffs)."""
    for c, b in zip(counters, before, strict=True):
        obs = c["observer"]
        if kind == "count" and obs["last_count"] != expect_count:
            return False
        if kind == "full" and obs["joins"] - b["observer"]["joins"] < expect_joins:
            return False
    return True


# One run -----------------------------------------------------------------------------

def run_one(work, kind: str, size: int, args) -> dict:
    late = min(args.late, size // 4)
    env = {"REDIS_URL": bl.REDIS_URL, "BENCH_GC_LOG": "1",
           "PRESENCE_FULL_LIST_MAX": "200" if kind == "count" else FULL_LIST_OFF}
    if args.gc_threshold:
        env["BENCH_GC_THRESHOLD"] = args.gc_threshold
    rec = {"kind": kind, "size": size, "late_planned": late, "rate": args.rate,
           "inflight": args.inflight, "idle_s": args.idle, "budget_s": args.budget,
           "env": env, "commit": args.commit, "machine": bl.machine(),
           "command": command_line(args, f"{kind}:{size}")}
    bl.redis_cleanup()
    server = bl.Server(work, "daphne", env, name=f"bigroom-{kind}-{size}").start()
    rec["server_nofile"] = _nofile(server.proc.pid)
    n_ramp = size - late
    k = max(1, math.ceil(n_ramp / PER_PROCESS))
    share = math.ceil(n_ramp / k)
    path = f"/ws/rooms/{ROOM}/"
    procs = [Clients(server.port, path, f"127.0.0.{2 + i}") for i in range(k)]
    late_proc = Clients(server.port, path, f"127.0.0.{2 + k}")
    extra: list[Clients] = []
    sampler = CpuSampler(server)
    try:
        time.sleep(1.0)  # the client processes are up
        # The ramp ------------------------------------------------------------------
        sampler.start()
        spy, raw = None, str(work.path / f"ramp-{kind}-{size}.raw")
        t0, c0 = time.time(), server.cpu_seconds()
        if args.profile:
            spy = py_spy(server.proc.pid, args.budget + 60, raw)
        until = t0 + args.budget
        for i, p in enumerate(procs):
            p.send(cmd="open", n=min(share, n_ramp - i * share), inflight=args.inflight,
                   until=until)
        answers = [p.read() for p in procs]
        t1, c1 = time.time(), server.cpu_seconds()
        rec["ramp_profile"] = stop_spy(spy, raw)
        ramp_joins = sorted(j for a in answers for j in a["joins"])
        ok = sum(a["ok"] for a in answers)
        rec["ramp"] = {
            "planned": n_ramp, "joined": ok, "skipped": sum(a["skipped"] for a in answers),
            "failed": sum(a["failed"] for a in answers),
            "errors": [a["errors"] for a in answers if a["errors"]],
            "refusals": [a["refusals"] for a in answers if a["refusals"]],
            "seconds": t1 - t0, "cpu_s": c1 - c0, "cpu_pct": (c1 - c0) / (t1 - t0) * 100,
            "done": ok >= n_ramp,
            # (seconds from the start, members, ms to the state, state bytes), thinned
            "curve": [(j[0] - t0, n + 1, j[1], j[2])
                      for n, j in enumerate(ramp_joins) if n % 25 == 0 or n == ok - 1],
        }
        rec["ramp_cpu_samples"] = [(t - t0, pct) for t, pct in sampler.samples]
        tail = ramp_joins[-max(1, min(late, len(ramp_joins) // 10)):]
        if len(tail) > 1:
            rec["ramp"]["tail_rate"] = (len(tail) - 1) / max(1e-9, tail[-1][0] - tail[0][0])
            rec["ramp"]["tail_state_bytes_p50"] = bl.pct([j[2] for j in tail], 50)
            rec["ramp"]["tail_join_ms_p50"] = bl.pct([j[1] for j in tail], 50)
        print(kind, size, "ramp", ok, f"in {t1 - t0:.0f} s", flush=True)
        if not rec["ramp"]["done"]:
            rec["dump"] = py_spy_dump(server.proc.pid) if args.profile else None
            rec["settle_s"] = settle(server, most=30)
            return rec
        rec["settle_s"] = settle(server)
        # Idle baseline ---------------------------------------------------------------
        rec["idle_cpu_pct"] = cpu_over(server, args.idle) * 100
        # The late joins --------------------------------------------------------------
        before = all_cmd(procs, cmd="mark")
        tw0, cw0 = time.time(), server.cpu_seconds()
        answer = late_proc.cmd(cmd="open", n=late, inflight=args.inflight, rate=args.rate)
        tj = time.time()
        joined = answer["ok"]
        expect = ok + joined
        deadline = time.time() + 60
        time.sleep(1.0)
        while True:
            after = all_cmd(procs, cmd="counters")
            done = observers_done(after, kind, expect, joined, before)
            if done or time.time() > deadline:
                break
            time.sleep(0.5)
        time.sleep(1.0)  # the last fan-out written out
        tw1, cw1 = time.time(), server.cpu_seconds()
        after = all_cmd(procs, cmd="counters")
        n_old = sum(c["n_old"] for c in after)
        got = delta(merge(after, "old"), merge(before, "old"))
        idle = rec["idle_cpu_pct"] / 100 * (tw1 - tw0)
        rec["late"] = {
            "joined": joined, "failed": answer["failed"], "errors": answer["errors"],
            "refusals": answer["refusals"], "seconds": tj - tw0, "window_s": tw1 - tw0,
            "told_all": done, "existing_members": n_old,
            "cpu_s": cw1 - cw0, "idle_cpu_s": idle,
            "cpu_ms_per_join": (cw1 - cw0 - idle) / max(1, joined) * 1000,
            "cpu_ms_per_join_gross": (cw1 - cw0) / max(1, joined) * 1000,
            "state_bytes": [j[2] for j in answer["joins"]],
            "join_ms": [j[1] for j in answer["joins"]],
            "received_by_existing": got,
            "observer": [c["observer"] for c in after],
        }
        for kind_ in ("presence_diff", "presence_count"):
            frames, nbytes = got.get(kind_, [0, 0])
            rec["late"][f"{kind_}_bytes_per_member_per_join"] = nbytes / max(1, n_old) / max(
                1, joined)
            rec["late"][f"{kind_}_frames_per_member"] = frames / max(1, n_old)
        print(kind, size, "late", {k: v for k, v in rec["late"].items()
                                   if not isinstance(v, list)}, flush=True)
        if args.typing and kind == "count":
            rec["typing"] = typing(server, procs, late_proc, extra, expect, work, args)
    finally:
        sampler.running = False
        for p in [*procs, late_proc, *extra]:
            p.close()
        server.stop()
        log = server.log()
        rec["tracebacks"] = log.count("Traceback")
        rec["gc_pauses_ms"] = gc_pauses(log)
        rec["log"] = log_summary(log)
        rec["log_tail"] = log[-2000:] if rec.get("tracebacks") else ""
        bl.redis_cleanup()
    return rec


def typing(server, procs, late_proc, extra, members, work, args) -> dict:
    """Typing signals in the big room while probes ping; the probes' RTT before and during."""
    probe_in = Clients(server.port, f"/ws/rooms/{ROOM}/", "127.0.0.20")
    probe_out = Clients(server.port, f"/ws/rooms/{PROBE_ROOM}/", "127.0.0.21")
    extra += [probe_in, probe_out]
    probes = [probe_in, probe_out]
    for p in probes:
        a = p.cmd(cmd="open", n=PROBES, inflight=PROBES)
        if a["ok"] != PROBES:
            raise RuntimeError(f"probe clients did not join: {a}")
    time.sleep(COUNT_INTERVAL + 2)
    rec = {"senders": args.typing, "rate": args.typing_rate, "seconds": args.typing_seconds,
           "members": members + PROBES, "probe_every_ms": PROBE_EVERY * 1000}
    # Baseline: the probes alone.
    log0 = len(gc_pauses(server.log()))
    all_cmd(probes, cmd="probe", every=PROBE_EVERY)
    c0, t0 = server.cpu_seconds(), time.time()
    time.sleep(min(15.0, args.typing_seconds))
    rec["baseline_cpu_pct"] = (server.cpu_seconds() - c0) / (time.time() - t0) * 100
    base = all_cmd(probes, cmd="unprobe")
    rec["baseline"] = {"in_room": base[0], "other_room": base[1]}
    rec["baseline_gc"] = gc_pauses(server.log())[log0:]
    time.sleep(1.0)
    rec.update(burst(server, procs, probes, args, profile=False, work=work))
    if args.profile:
        time.sleep(2.0)
        rec["profiled"] = burst(server, procs, probes, args, profile=True, work=work,
                                seconds=min(20.0, args.typing_seconds))
    return rec


def burst(server, procs, probes, args, *, profile, work, seconds=None) -> dict:
    seconds = seconds or args.typing_seconds
    everyone = [*procs, *probes[:1]]  # the members of the big room
    log0 = len(gc_pauses(server.log()))
    text0 = len(server.log())
    m0 = scrape(server.port)
    s0 = all_cmd(everyone, cmd="counters")
    all_cmd(everyone, cmd="delays")  # clear
    all_cmd(probes, cmd="probe", every=PROBE_EVERY)
    per = math.ceil(args.typing / len(procs))
    c0, t0 = server.cpu_seconds(), time.time()
    for i, p in enumerate(procs):
        n = max(0, min(per, args.typing - i * per))
        p.send(cmd="typing", first=i * per, senders=n, rate=args.typing_rate, seconds=seconds,
               room=ROOM)
    [p.read() for p in procs]
    spy, raw, dump = None, str(work.path / "typing.raw"), None
    if profile:
        spy = py_spy(server.proc.pid, seconds - 4, raw)
        time.sleep(seconds / 2)
        dump = py_spy_dump(server.proc.pid)
        time.sleep(seconds / 2)
    else:
        time.sleep(seconds)
    c1, t1 = server.cpu_seconds(), time.time()
    rtts = all_cmd(probes, cmd="unprobe")
    m1 = scrape(server.port)
    # Drain: signals still arriving after the senders stopped.
    last, still, t_last = -1, 0, time.time()
    while time.time() - t1 < (20 if profile else 60):
        now = sum(c["signals_total"] for c in all_cmd(everyone, cmd="counters"))
        if now != last:
            last, t_last, still = now, time.time(), 0
        else:
            still += 1
            if still >= 3:
                break
        time.sleep(1.0)
    c2, t2 = server.cpu_seconds(), time.time()
    s1 = all_cmd(everyone, cmd="counters")
    m2 = scrape(server.port)
    delays = all_cmd(everyone, cmd="delays")
    out = {"cpu_pct": (c1 - c0) / (t1 - t0) * 100, "window_s": t1 - t0,
           "cpu_s_to_drained": c2 - c0, "seconds_to_drained": t2 - t0,
           "drain_s": t_last - t1, "metrics": [m0, m1, m2],
           "probes": {"in_room": rtts[0], "other_room": rtts[1]},
           "gc_ms": gc_pauses(server.log())[log0:],
           "log": log_summary(server.log()[text0:])}
    sent: dict[str, int] = {}
    for c in s1:
        for s, v in c["sent"].items():
            sent[s] = sent.get(s, 0) + v
    for c in s0:
        for s, v in c["sent"].items():
            sent[s] -= v
    got: dict[str, int] = {}
    for c1_, c0_ in zip(s1, s0, strict=True):
        for s, v in c1_["signals"].items():
            got[s] = got.get(s, 0) + v - c0_["signals"].get(s, 0)
    out["sent_per_sender"] = sent
    out["delivered_per_sender"] = got
    out["recipients"] = sum(c["open"] for c in s1) - 1
    out["delays_s"] = [d for c in delays for d in c["delays"]]
    out["observer_seqs"] = delays[0]["observer_seqs"]
    out["closes"] = [c["closes"] for c in s1]
    if profile:
        out["profile"] = stop_spy(spy, raw)
        out["dump"] = dump
    return out


def _nofile(pid: int) -> str:
    try:
        for line in open(f"/proc/{pid}/limits"):
            if line.startswith("Max open files"):
                return " ".join(line.split()[3:5])
    except OSError:
        pass
    return "?"


def command_line(args, runs: str) -> str:
    parts = [".venv/bin/python -m bench.bigroom", "--runs", runs]
    if args.typing and runs.startswith("count"):
        parts += ["--typing", str(args.typing)]
        if args.typing_rate != 10:
            parts += ["--typing-rate", f"{args.typing_rate:g}"]
        if args.typing_seconds != 30:
            parts += ["--typing-seconds", f"{args.typing_seconds:g}"]
    if args.budget != 300:
        parts += ["--budget", f"{args.budget:g}"]
    if args.late != 500:
        parts += ["--late", str(args.late)]
    if args.rate != 20:
        parts += ["--rate", f"{args.rate:g}"]
    if args.gc_threshold:
        parts += ["--gc-threshold", args.gc_threshold]
    if args.profile:
        parts.append("--profile")
    return " ".join(parts)


# Results and the doc -----------------------------------------------------------------

def load() -> dict:
    path = bl.RESULTS / f"{NAME}.json"
    return json.loads(path.read_text()) if path.exists() else {"runs": {}}


def run(args):
    data = load()
    work = bl.Workdir(NAME)
    for spec in args.runs.split(","):
        kind, size = spec.split(":")
        if kind not in ("count", "full"):
            raise SystemExit(f"a run is count:N or full:N, not {spec!r}")
        rec = run_one(work, kind, int(size), args)
        data["runs"][f"{kind}-{int(size)}"] = rec
        bl.save_results(NAME, data)
        time.sleep(2)
    plot(data)
    bl.update_doc(NAME, render(data))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--render":
        data = load()
        plot(data)
        bl.update_doc(NAME, render(data))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="count:10000", help="kind:size, one run each")
    parser.add_argument("--late", type=int, default=500, help="joins measured at the end")
    parser.add_argument("--rate", type=float, default=20.0, help="late joins per second")
    parser.add_argument("--inflight", type=int, default=25,
                        help="handshakes in flight per client process")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds for the ramp")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle baseline")
    parser.add_argument("--typing", type=int, default=0, help="typing senders (count runs)")
    parser.add_argument("--typing-rate", type=float, default=10.0)
    parser.add_argument("--typing-seconds", type=float, default=30.0)
    parser.add_argument("--profile", action="store_true", help="py-spy over ramp and typing")
    parser.add_argument("--gc-threshold", default="",
                        help="gc.set_threshold() of the server, e.g. 50000,20,100")
    parser.add_argument("--commit", default=subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=bl.ROOT, capture_output=True,
        text=True).stdout.strip())
    run(parser.parse_args())


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
}


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
                    label=f"{LABELS[r['kind']]}, {r['size']:,}"
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
    gc_args = {r.get("gc_threshold") or r["env"].get("BENCH_GC_THRESHOLD") for r in runs}
    gc_note = ("the collector at Python's own thresholds" if gc_args == {None} else
               "`gc.set_threshold(" + ", ".join(sorted(str(g) for g in gc_args if g))
               + ")` in the server (`BENCH_GC_THRESHOLD` of `bench/benchproj`)")
    late_n, rate = first["late_planned"], first["rate"]
    lines = [
        "## A room of 10,000 members", "",
        bl.machine_line(first["machine"]), "",
        "Commands (results: `bench/results/bigroom.json`, one entry per run):", "",
    ]
    for r in runs:
        m = r["machine"]
        lines.append(f"- `{r['command']}`: commit `{r['commit']}`, measured {m['date']}, load "
                     f"average {' / '.join(map(str, m['loadavg']))}")
    lines += [
        "",
        "One Daphne process (CPU 0, open-file limit "
        f"{first.get('server_nofile', '?').split()[0]}) with the Redis layer and Redis "
        "presence serves the demo's `RoomConsumer` (`bench/benchproj`, the demo's settings "
        f"and middleware, session rows included), with {gc_note}. Every member is in the "
        f"room `{ROOM}`. Client processes (CPU 1, the raw client of `bench/roomclient.py`, "
        f"{PER_PROCESS:,} connections each, {first.get('inflight', 25)} handshakes in flight "
        "each) open the room up to its size less "
        f"{late_n:,}; once the server is quiet and its idle CPU has been read for "
        f"{first.get('idle_s', 10):g} s, the last {late_n:,} members join from a process of "
        f"their own at "
        f"{rate:g} a second. A member has joined when its `presence_state` arrived. For "
        "those late joins: the payload bytes of the joiner's `presence_state`, the bytes "
        "every existing member received per join (`presence_diff`s with the full list; "
        "`presence_count`s, at most one per `PRESENCE_COUNT_INTERVAL` of 2 s, in a "
        "count-only room), counted from the first late connect until every observer (the "
        "first member of each client process) has been told of the last join, and the "
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
        if "late" not in r:
            lines.append(f"| {LABELS[r['kind']]}, {r['size']:,} | ramp stopped at "
                         f"{r['ramp']['joined']:,} of {r['ramp']['planned']:,} "
                         f"(budget {r['ramp']['seconds']:.0f} s) | – | "
                         f"{bl.fmt(r['ramp'].get('tail_state_bytes_p50'))} B (the ramp's last "
                         "joins) | "
                         f"{bl.fmt(r['ramp'].get('tail_join_ms_p50'))} ms p50 (the ramp's last "
                         "joins) | – | – |")
            continue
        late = r["late"]
        lines.append(
            f"| {LABELS[r['kind']]}, {r['size']:,} | {r['ramp']['joined']:,} | "
            f"{late['joined']:,} at {r['rate']:g}/s | "
            f"{bl.fmt(bl.pct(late['state_bytes'], 50))} B | "
            f"{bl.fmt(bl.pct(late['join_ms'], 50), 1)} / {bl.fmt(bl.pct(late['join_ms'], 99), 1)}"
            f" ms | {per_member(r)} | {late['cpu_ms_per_join']:.1f} ms "
            f"({late['cpu_ms_per_join_gross']:.1f}) |")
    lines += ["", "| run | ramp | server CPU in the ramp | joins a second at the end | full "
              "collections in the whole run | failed attempts (retried) |",
              "|---|---|---|---|---|---|"]
    for r in runs:
        ramp = r["ramp"]
        errors: dict[str, int] = {}
        for e in ramp["errors"]:
            for k, v in e.items():
                errors[k] = errors.get(k, 0) + v
        err = ", ".join(f"`{k}`: {v}" for k, v in sorted(errors.items(), key=lambda x: -x[1]))
        g = r["gc_pauses_ms"]
        lines.append(
            f"| {LABELS[r['kind']]}, {r['size']:,} | {ramp['joined']:,} of {ramp['planned']:,} "
            f"in {ramp['seconds']:.0f} s{'' if ramp['done'] else ' (budget)'} | "
            f"{ramp['cpu_pct']:.0f} % | {bl.fmt(ramp.get('tail_rate'), 1)} | "
            f"{len(g)}, {sum(g) / 1000:.1f} s, longest {bl.fmt(max(g) if g else None)} ms | "
            f"{err or 'none'} |")
    lines.append("")
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
    out = [f"**{LABELS[r['kind']]} at {r['size']:,}: not finished within the budget.** "
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
    delays = [d * 1000 for d in t["delays_s"]]
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
        f"(at most 60 s after the senders stopped). `PRESENCE_SIGNAL_RATE` is 10: the "
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
        f"{LATENCY_SAMPLE}th member) | {bl.fmt(bl.pct(delays, 50))} / "
        f"{bl.fmt(bl.pct(delays, 99))} ms ({len(delays):,} receipts) |",
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


if __name__ == "__main__":
    main()
