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
the typing starts, as the baseline. ``--profile`` runs py-spy (on CPU 1) over the ramp,
the idle baseline and an extra typing burst after the measured one.

    .venv/bin/python -m bench.bigroom --runs count:10000 --profile
    .venv/bin/python -m bench.bigroom --runs count:10000 --late 0 --typing 100 --tag typing \
        --profile
    .venv/bin/python -m bench.bigroom --runs full:10000 --profile
    .venv/bin/python -m bench.bigroom --runs full:2000,count:2000

The collector is the app's (``HEARTBEAT_GC_THRESHOLD``, "auto" by default);
``--gc-threshold`` sets other thresholds first (``BENCH_GC_THRESHOLD`` of
``bench/benchproj``), with ``--tag`` to keep such runs apart.

Results go to ``bench/results/bigroom.json``, one entry per run (a later invocation
replaces the runs it repeats and keeps the others, each with its own commit); the section
of docs/benchmarks.md and the plot are drawn from all of them by ``bench/bigroom_report.py``.
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
from bench.bigroom_report import NAME, PER_PROCESS, PROBE_ROOM, PROBES, ROOM, plot, render
from bench.handshake import top_lines

FULL_LIST_OFF = "100000"  # PRESENCE_FULL_LIST_MAX above any room here: the full list
COUNT_INTERVAL = 2.0  # PRESENCE_COUNT_INTERVAL, the demo's (and the app's) default
PROBE_EVERY = 0.02


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


def settle(server: bl.Server, least: float = 10.0, most: float = 60.0) -> float:
    """Wait until the server's CPU over 5 s (a checkpoint period) stops falling."""
    t0 = time.time()
    time.sleep(least - 5)
    last = cpu_over(server, 5.0)
    while time.time() - t0 < most:
        now = cpu_over(server, 5.0)
        if now > last - 0.05:  # within 5 points of a core of the window before
            break
        last = now
    return time.time() - t0


def scrape(port: int) -> dict[str, float]:
    """The app's counters from the server's /metrics view."""
    out = {}
    try:
        with urllib.request.urlopen(f"http://{bl.HOST}:{port}/metrics", timeout=30) as r:
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


def observers_done(counters: list[dict], kind: str, expect_joins: int,
                   at_end: list[dict]) -> bool:
    """Whether every observer has been told of the joins: with the full list, diffs with all
    of them; in a count-only room, a count sent after the last of them.

    A count is read from the store when it is sent, so one sent later includes every join;
    the count itself is not compared, since the room also holds sessions of handshakes the
    client gave up on, until they leave as zombies.
    """
    for c, b in zip(counters, at_end, strict=True):
        obs, then = c["observer"], b["observer"]
        if kind == "count" and obs["counts"] <= then["counts"]:
            return False
        if kind == "full" and obs["joins"] - then["joins_at_mark"] < expect_joins:
            return False
    return True


def quiet_room(server, procs, kind: str, most: float = 90.0) -> float:
    """After the ramp: every observer told of the last join, then the CPU settled."""
    t0 = time.time()
    time.sleep(1.0 + conf_tick())
    at_end = all_cmd(procs, cmd="counters")
    for c in at_end:
        c["observer"]["joins_at_mark"] = c["observer"]["joins"]
    while time.time() - t0 < min(20.0, most / 2):
        if kind == "full" or observers_done(all_cmd(procs, cmd="counters"), kind, 0, at_end):
            break
        time.sleep(1.0)
    return time.time() - t0 + settle(server, most=most - (time.time() - t0))


def conf_tick() -> float:
    return 1.0  # HEARTBEAT_TICK, the demo's default


# One run -----------------------------------------------------------------------------

def run_one(work, kind: str, size: int, args) -> dict:
    late = min(args.late, size // 4)
    env = {"REDIS_URL": bl.REDIS_URL, "BENCH_GC_LOG": "1",
           "PRESENCE_FULL_LIST_MAX": "200" if kind == "count" else FULL_LIST_OFF}
    if args.gc_threshold:
        env["BENCH_GC_THRESHOLD"] = args.gc_threshold
    if args.fanout:
        env["PRESENCE_SIGNAL_FANOUT"] = args.fanout
    if args.typing:
        # The probes send 50 frames a second, HEARTBEAT_MESSAGE_RATE's default: after a
        # stall of the server, the frames it reads at once would get them closed (4429).
        env["HEARTBEAT_MESSAGE_RATE"] = "off"
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
            rec["settle_s"] = settle(server, most=20)
            return rec
        rec["settle_s"] = quiet_room(server, procs, kind)
        # Idle baseline ---------------------------------------------------------------
        spy, raw = None, str(work.path / f"idle-{kind}-{size}.raw")
        if args.profile:
            spy = py_spy(server.proc.pid, args.idle + 30, raw)
        rec["idle_cpu_pct"] = cpu_over(server, args.idle) * 100
        rec["idle_profile"] = stop_spy(spy, raw)
        members = ok
        if late:
            rec["late"] = late_window(server, procs, late_proc, kind, ok, late,
                                      rec["idle_cpu_pct"], args)
            members += rec["late"]["joined"]
        if args.typing and kind == "count":
            rec["typing"] = typing(server, procs, late_proc, extra, members, work, args)
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


def late_window(server, procs, late_proc, kind: str, ok: int, late: int, idle_pct: float,
                args) -> dict:
    """The last members join at args.rate; what it cost the server and told the others."""
    before = all_cmd(procs, cmd="mark")
    tw0, cw0 = time.time(), server.cpu_seconds()
    answer = late_proc.cmd(cmd="open", n=late, inflight=args.inflight, rate=args.rate)
    tj = time.time()
    joined = answer["ok"]
    deadline = time.time() + 30
    time.sleep(conf_tick())  # a join of the last moment reaches the store
    at_end = all_cmd(procs, cmd="counters")
    for c, b in zip(at_end, before, strict=True):
        c["observer"]["joins_at_mark"] = b["observer"]["joins"]
    while True:
        after = all_cmd(procs, cmd="counters")
        done = observers_done(after, kind, joined, at_end)
        if done or time.time() > deadline:
            break
        time.sleep(0.5)
    time.sleep(1.0)  # the last fan-out written out
    tw1, cw1 = time.time(), server.cpu_seconds()
    after = all_cmd(procs, cmd="counters")
    n_old = sum(c["n_old"] for c in after)
    got = delta(merge(after, "old"), merge(before, "old"))
    idle = idle_pct / 100 * (tw1 - tw0)
    out = {
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
        out[f"{kind_}_bytes_per_member_per_join"] = nbytes / max(1, n_old) / max(
            1, joined)
        out[f"{kind_}_frames_per_member"] = frames / max(1, n_old)
    print(kind, ok + joined, "late", {k: v for k, v in out.items()
                                      if not isinstance(v, list)}, flush=True)
    return out


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
    rec = {"settle_s": quiet_room(server, procs, "count", most=60)}
    rec.update({"senders": args.typing, "rate": args.typing_rate, "seconds": args.typing_seconds,
           "members": members + PROBES, "probe_every_ms": PROBE_EVERY * 1000})
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
                                seconds=min(15.0, args.typing_seconds))
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
    while time.time() - t1 < (10 if profile else 45):
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
    out["delays"] = delay_summary([d for c in delays for d in c["delays"]])
    out["observer_seqs"] = delays[0]["observer_seqs"]
    out["closes"] = [c["closes"] for c in s1]
    if profile:
        out["profile"] = stop_spy(spy, raw)
        out["dump"] = dump
    return out


def delay_summary(delays_s: list[float]) -> dict:
    """Signal delays as their count and percentiles 0 to 100 in ms (nearest rank): a run
    with a million receipts keeps 101 numbers, not a million."""
    ordered = sorted(d * 1000 for d in delays_s)
    return {"count": len(ordered), "pct_ms": [bl.pct(ordered, p) for p in range(101)]}


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
    if args.late != 300:
        parts += ["--late", str(args.late)]
    if args.rate != 5:
        parts += ["--rate", f"{args.rate:g}"]
    if args.gc_threshold:
        parts += ["--gc-threshold", args.gc_threshold]
    if args.fanout:
        parts += ["--fanout", args.fanout]
    if args.tag:
        parts += ["--tag", args.tag]
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
        rec["tag"] = args.tag
        data["runs"][f"{kind}-{int(size)}" + (f"-{args.tag}" if args.tag else "")] = rec
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
    parser.add_argument("--late", type=int, default=300,
                        help="joins measured at the end (0: none)")
    parser.add_argument("--rate", type=float, default=5.0, help="late joins per second")
    parser.add_argument("--inflight", type=int, default=25,
                        help="handshakes in flight per client process")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds for the ramp")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle baseline")
    parser.add_argument("--typing", type=int, default=0, help="typing senders (count runs)")
    parser.add_argument("--typing-rate", type=float, default=10.0)
    parser.add_argument("--typing-seconds", type=float, default=30.0)
    parser.add_argument("--profile", action="store_true", help="py-spy over ramp and typing")
    parser.add_argument("--fanout", default="",
                        help="PRESENCE_SIGNAL_FANOUT of the server (frames a second, or off)")
    parser.add_argument("--tag", default="", help="a name of the runs' own, e.g. gc-default")
    parser.add_argument("--gc-threshold", default="",
                        help="gc.set_threshold() of the server, e.g. 50000,20,100")
    parser.add_argument("--commit", default=bl.head_commit())
    run(parser.parse_args())


if __name__ == "__main__":
    main()
