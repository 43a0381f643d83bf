"""Rolling restart behind nginx: two Daphne processes on Redis, one restarted after the other.

A real nginx (its own config on loopback, one upstream block with both processes,
round-robin, the next upstream tried when one refuses connections) fronts two Daphne
processes (CPU 0) that share Redis (channels_redis and the Redis presence store).
--clients clients of the demo's RoomConsumer (rooms of 100, several client processes on
CPU 1) connect through nginx as the bundled client does: a tab id kept across reconnects
and the anonymous identity token the server issued presented again (``?anon=``), so a
tab that comes back is the same member. Then A gets SIGTERM (its drain closes every
client with 4001 and a spread retry hint), is started again once it exited, and when
every client is back the same is done to B. The clients honour the hints (bench/
loadclient.py). An observer process reads ``members()`` of every room from the store
every --poll seconds throughout: a member *blinked* when its key was listed, then not,
then listed again. At the end, after the leave grace, a *ghost* is a meta listed for a
session that no client holds open.

    .venv/bin/python -m bench.rolling [--clients 2000] [--wait 90]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import benchlib as bl
from tests.servers import free_port, wait_for_port

PER_ROOM = 100
GRACE = 5.0  # PRESENCE_LEAVE_GRACE's default, which the servers run with
PREFIX = "hbbench:presence"

CONFIG = """
worker_processes 1;
worker_rlimit_nofile 20000;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 16000; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    upstream daphne {{
        server 127.0.0.1:{a} max_fails=0;
        server 127.0.0.1:{b} max_fails=0;
    }}
    server {{
        listen 127.0.0.1:{listen} backlog=4096;
        location / {{
            proxy_pass http://daphne;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_read_timeout 120s;
            proxy_send_timeout 120s;
            proxy_next_upstream error timeout;
            proxy_connect_timeout 2s;
        }}
    }}
}}
"""


def nginx_binary() -> str:
    for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"):
        if Path(path).exists():
            return path
    raise SystemExit("nginx is not installed")


class Nginx:
    def __init__(self, upstreams: tuple[int, int]):
        self.tmp = Path(tempfile.mkdtemp(prefix="hbbench-nginx-"))
        self.port = free_port()
        (self.tmp / "nginx.conf").write_text(CONFIG.format(
            tmp=self.tmp, a=upstreams[0], b=upstreams[1], listen=self.port))
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(bl.CLIENT_CPU), nginx_binary(), "-c",
             str(self.tmp / "nginx.conf"), "-p", str(self.tmp), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=open(self.tmp / "stderr.log", "wb"),
            preexec_fn=bl._raise_nofile)
        if not wait_for_port("127.0.0.1", self.port, time.monotonic() + 10):
            raise RuntimeError(self.errors())
        return self

    def errors(self) -> str:
        return "".join((self.tmp / n).read_text(errors="replace")
                       for n in ("stderr.log", "error.log") if (self.tmp / n).exists())

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# The observer process -------------------------------------------------------------

async def observe(rooms: int, poll: float):
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.benchproj.settings")
    import django

    django.setup()
    from heartbeat_app.stores.redis import RedisStore

    store = RedisStore(bl.REDIS_URL, prefix=PREFIX)
    names = [f"roll{i}" for i in range(rooms)]
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    state = {"watch": False}
    seen: dict[tuple[str, str], dict] = {}  # (room, key) -> {"present", "gone_at", ...}
    blinks: list[dict] = []
    polls, poll_ms = 0, []

    async def poller():
        nonlocal polls
        while True:
            t = time.perf_counter()
            try:
                members = await asyncio.gather(*(store.members(r) for r in names))
            except Exception:
                await asyncio.sleep(poll)
                continue
            poll_ms.append((time.perf_counter() - t) * 1000)
            now = time.time()
            if state["watch"]:
                polls += 1
                present = {(r, k) for r, m in zip(names, members, strict=True) for k in m}
                for rk in present:
                    rec = seen.get(rk)
                    if rec is None:
                        seen[rk] = {"present": True, "gone_at": None}
                    elif not rec["present"]:
                        blinks.append({"room": rk[0], "key": rk[1], "gone_at": rec["gone_at"],
                                       "back_at": now})
                        rec["present"], rec["gone_at"] = True, None
                for rk, rec in seen.items():
                    if rec["present"] and rk not in present:
                        rec["present"], rec["gone_at"] = False, now
            state["last"] = members
            await asyncio.sleep(max(0.0, poll - (time.perf_counter() - t)))

    task = asyncio.ensure_future(poller())

    def reply(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    while True:
        line = (await reader.readline()).decode().strip()
        if not line or line == "quit":
            break
        if line == "watch":
            state["watch"] = True
            reply({"event": "watching"})
        elif line == "members":
            members = state.get("last") or []
            reply({"event": "members", "metas": [
                {"room": r, "key": k, "session": meta.get("session"),
                 "instance": meta.get("instance")}
                for r, m in zip(names, members, strict=True)
                for k, v in m.items() for meta in v["metas"]]})
        elif line == "report":
            reply({"event": "report", "blinks": blinks, "polls": polls,
                   "poll_ms_p50": bl.pct(poll_ms, 50), "poll_ms_max": max(poll_ms or [0]),
                   "keys_seen": len(seen),
                   "absent_at_end": sum(1 for r in seen.values() if not r["present"])})
    task.cancel()
    await store.close()


# The orchestrator -------------------------------------------------------------------

def total(clients, cmd="stats"):
    return [c.cmd(cmd) for c in clients]


def run(args):
    facts = bl.machine()
    work = bl.Workdir("rolling")
    bl.redis_cleanup()
    env = {"REDIS_URL": bl.REDIS_URL, **dict(kv.split("=", 1) for kv in args.env)}

    class Srv(bl.Server):
        stop_grace = 40.0  # the drain takes the leave grace plus a tick, at most 20 s

    a = Srv(work, "daphne", env, name="a").start()
    b = Srv(work, "daphne", env, name="b").start()
    proxy = Nginx((a.port, b.port)).start()
    n = args.clients
    rooms = math.ceil(n / PER_ROOM)
    k = max(1, math.ceil(n / 2000))
    share = math.ceil(n / k)
    clients, observer, phases = [], None, []
    servers = {"a": a, "b": b}
    phase_times: list[dict] = []
    try:
        clients = [bl.LoadClient(port=proxy.port, count=min(share, n - i * share),
                                 path="/ws/rooms/roll{room}/", offset=i * share,
                                 per_room=PER_ROOM, source=f"127.0.0.{2 + i}", inflight=20,
                                 reconnect=True, tabs=True, timeout=30)
                   for i in range(k)]
        answers = bl.connect_all(clients)
        connected = sum(x["ok"] for x in answers)
        print("connected", connected, answers[0]["errors"], flush=True)
        observer = subprocess.Popen(
            bl.client_command("rolling", "--observe", rooms, args.poll), cwd=bl.ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        time.sleep(3)
        observer.stdin.write("watch\n")
        observer.stdin.flush()
        bl.read_json_line(observer)
        time.sleep(2)
        for name in ("a", "b"):
            old = servers[name]
            before = sum(s["open"] for s in total(clients))
            arrivals0 = sum(len(s["arrivals"]) for s in total(clients))
            t_term = time.time()
            phase_times.append({"server": name, "term": t_term})
            old.stop()  # SIGTERM; waits for the process to exit
            t_exit = time.time()
            new = Srv(work, "daphne", env, name=name, port=old.port).start()
            servers[name] = new
            t_ready = time.time()
            t_back, deadline = None, t_term + args.wait
            moved = None
            while time.time() < deadline:
                time.sleep(0.5)
                stats = total(clients)
                moved = sum(len(s["arrivals"]) for s in stats) - arrivals0
                if sum(s["open"] for s in stats) >= connected and moved > 0:
                    t_back = time.time()
                    break
            stats = total(clients)
            phase = {"server": name, "open_before": before, "exit_s": t_exit - t_term,
                     "ready_s": t_ready - t_term,
                     "all_back_s": t_back - t_term if t_back else None,
                     "reconnected": sum(len(s["arrivals"]) for s in stats) - arrivals0,
                     "open_after": sum(s["open"] for s in stats),
                     "drain_log": old.log().count("drain"),
                     "drain_done": drain_done(old.log())}
            print(phase, flush=True)
            phases.append(phase)
            time.sleep(args.between)
        # After the last leave grace (5 s) and a reap interval, nothing stale may remain.
        time.sleep(args.settle)
        observer.stdin.write("members\n")
        observer.stdin.flush()
        metas = bl.read_json_line(observer)["metas"]
        live = {sid for c in clients for sid in c.cmd("live")["sessions"]}
        observer.stdin.write("report\n")
        observer.stdin.flush()
        report = bl.read_json_line(observer)
        stats = total(clients)
    finally:
        if observer is not None and observer.poll() is None:
            observer.stdin.write("quit\n")
            observer.stdin.flush()
            observer.wait(timeout=20)
        for c in clients:
            c.close()
        for s in servers.values():
            s.stop()
        proxy.stop()
        proxy_errors = nginx_error_kinds(proxy.errors())
        logs = {name: s.log() for name, s in servers.items()}
        bl.redis_cleanup()
    ghosts = [m for m in metas if m["session"] not in live]
    listed = {m["session"] for m in metas}
    errors: dict[str, int] = {}
    refusals: dict[str, int] = {}
    notices: dict[str, int] = {}
    for s in stats:
        for src, dst in ((s["errors"], errors), (s.get("refusals", {}), refusals),
                         (s.get("notices", {}), notices)):
            for key, v in src.items():
                dst[key] = dst.get(key, 0) + v
    away = classify(report["blinks"], [r for s in stats for r in s.get("returns", [])])
    summary = {
        **away,
        "clients": n, "connected": connected, "rooms": rooms, "phases": phases,
        "blinks": len(report["blinks"]), "blinked_keys": len({(x["room"], x["key"])
                                                              for x in report["blinks"]}),
        "blink_gone_p50_s": bl.pct([x["back_at"] - x["gone_at"] for x in report["blinks"]], 50),
        "blink_gone_max_s": max([x["back_at"] - x["gone_at"] for x in report["blinks"]] or [0]),
        "keys_seen": report["keys_seen"], "absent_at_end": report["absent_at_end"],
        "polls": report["polls"], "poll_ms_p50": report["poll_ms_p50"],
        "poll_ms_max": report["poll_ms_max"],
        "metas_at_end": len(metas), "live_at_end": len(live), "ghosts": len(ghosts),
        "live_not_listed": len(live - listed), "errors": errors, "refusals": refusals,
        "notices": notices, "proxy_errors": proxy_errors,
        "tracebacks": sum(x.count("Traceback") for x in logs.values()),
        "http_5xx": sum(v for key, v in errors.items()
                        if key.startswith("HTTP/") and " 5" in key[8:12]),
    }
    print(summary, flush=True)
    data = {"machine": facts, "commit": args.commit, "args": vars(args), "summary": summary,
            "blinks": report["blinks"], "ghosts": ghosts[:200],
            "returns": [r for s in stats for r in s.get("returns", [])],
            "phase_times": phase_times}
    name = f"rolling-{args.tag}" if args.tag else "rolling"
    bl.save_results(name, data)
    bl.update_doc(name, render(data, name))


def drain_done(log: str) -> str:
    """What the drain said at its end: done in how long, or timed out (then both)."""
    said = [line.split("heartbeat_app.drain", 1)[-1].strip() for line in log.splitlines()
            if "drain done" in line or "drain timed out" in line]
    return "; ".join(said) or "no drain logged"


def nginx_error_kinds(text: str) -> dict[str, int]:
    """nginx's error log counted by kind (what a 502 was, seen from the proxy)."""
    kinds: dict[str, int] = {}
    for line in text.splitlines():
        if "[error]" not in line and "[warn]" not in line:
            continue
        body = line.split("*", 1)[-1]
        body = body.split(" ", 1)[-1].split(", client:")[0]
        body = body.split(" while ")[0]
        kinds[body] = kinds.get(body, 0) + 1
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1])[:8])


def classify(blinks, returns):
    """How long each tab was away, and why each blink happened.

    For each blink, the tab's last close before its member went missing: back (hello)
    before the member went missing means its join reached the store late (the new
    process's backlog); back within the grace of its close yet missing means the
    server dropped it (target 0); back later than the grace is the capacity's.
    """
    away = sorted(back - closed for _, closed, back in returns)
    by_key: dict[str, list] = {}
    for key, closed, back in returns:
        by_key.setdefault(key, []).append((closed, back))
    early = late = joined_late = unknown = 0
    for blink in blinks:
        spans = sorted(c_b for c_b in by_key.get(blink["key"], ())
                       if c_b[0] <= blink["gone_at"] + 1.0)
        if not spans:
            unknown += 1
            continue
        closed, back = spans[-1]
        if back <= blink["gone_at"]:
            joined_late += 1
        elif back - closed <= GRACE:
            early += 1
        else:
            late += 1
    return {"returns": len(away), "away_p50_s": bl.pct(away, 50), "away_p99_s": bl.pct(away, 99),
            "away_max_s": max(away or [0]), "back_within_grace": sum(a <= GRACE for a in away),
            "blinks_back_within_grace": early, "blinks_back_late": late,
            "blinks_joined_late": joined_late, "blinks_unmatched": unknown}


def codes(d):
    return ", ".join(f"{k}: {v:,}" for k, v in sorted(d.items())) or "none"


def render(data, name="rolling"):
    s, a = data["summary"], data["args"]
    errors = ", ".join(f"`{k}`: {v:,}" for k, v in sorted(s["errors"].items(),
                                                          key=lambda kv: -kv[1])) or "none"
    lines = [
        "## Rolling restart behind nginx" + (f" ({a['tag']})" if a.get("tag") else ""), "",
        f"Commit `{data['commit']}`. " + bl.machine_line(data["machine"]), "",
        f"Command: `.venv/bin/python -m bench.rolling --clients {a['clients']} --wait "
        f"{a['wait']:g}" + (f" --tag {a['tag']}" if a.get("tag") else "")
        + "".join(f" --env {kv}" for kv in a.get("env", []))
        + f"` (results: `bench/results/{name}.json`).", "",
        "A real nginx (its own config on loopback: one upstream of both processes, "
        "round-robin, the next upstream tried when one refuses connections) fronts two "
        "Daphne processes (both on CPU 0) sharing Redis (channels_redis and the Redis "
        f"presence store). {s['connected']:,} clients of the demo's `RoomConsumer` in rooms "
        f"of {PER_ROOM} (client processes and nginx on CPU 1) connect through nginx as the "
        "bundled client does: the tab id kept across reconnects, the anonymous identity "
        "token presented again (`?anon=`), retry hints of close notices honoured on top of "
        "the backoff. A gets SIGTERM (the drain: 4001 with a hint spread over "
        "`HEARTBEAT_DRAIN_SPREAD`, presence leaves kept for the leave grace), is started "
        "again on its port once it exited, and when every client is back B gets the same. "
        f"An observer reads `members()` of every room from the store every {a['poll']:g} s "
        "throughout: a member *blinked* when its key was listed, then missing, then listed "
        f"again. {a['settle']:g} s after the last restart (past the leave grace and a reap), "
        "a *ghost* is a listed meta of a session no client holds open. Targets: 0 blinks, "
        "0 ghosts.", "",
        "| restarted | clients open before | process exited after SIGTERM | port open again "
        "| all back | reconnections | the drain's last log line |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in s["phases"]:
        lines.append(f"| {p['server'].upper()} | {p['open_before']:,} | {p['exit_s']:.1f} s | "
                     f"{p['ready_s']:.1f} s | {bl.fmt(p['all_back_s'], 1)} s | "
                     f"{p['reconnected']:,} | {p.get('drain_done', 'not recorded')} |")
    lines += [
        "", "| | |", "|---|---|",
        f"| members that blinked (target 0) | **{s['blinks']:,}** ({s['blinked_keys']:,} "
        f"room–member pairs of {s['keys_seen']:,} seen; {s['polls']:,} polls, "
        f"{bl.fmt(s['poll_ms_p50'], 1)} ms each at p50); missing for "
        f"{bl.fmt(s['blink_gone_p50_s'], 1)} s at p50, {bl.fmt(s['blink_gone_max_s'], 1)} s "
        "at most |",
        f"| tabs sent away and back | {s.get('returns', 0):,}; away "
        f"{bl.fmt(s.get('away_p50_s'), 1)} s "
        f"at p50, {bl.fmt(s.get('away_p99_s'), 1)} s at p99, {bl.fmt(s.get('away_max_s'), 1)} s at "
        f"most; {s.get('back_within_grace', 0):,} back within the {GRACE:g} s grace |",
        f"| blinks of tabs back within the grace (the server's, target 0) | "
        f"**{s.get('blinks_back_within_grace', 0):,}** (of tabs back later: "
        f"{s.get('blinks_back_late', 0):,}; of tabs greeted before their member went missing, "
        f"whose join reached the store late: {s.get('blinks_joined_late', 0):,}; not matched "
        "to a return: "
        f"{s.get('blinks_unmatched', 0):,}) |",
        f"| ghosts at the end (target 0) | **{s['ghosts']:,}** ({s['metas_at_end']:,} metas "
        f"listed, {s['live_at_end']:,} sessions open; open but not listed: "
        f"{s['live_not_listed']:,}) |",
        f"| close notices received by established clients, by close code | "
        f"{codes(s['notices'])} |",
        f"| refused before `hello`, by close code (4001: sent back to a draining process) | "
        f"{codes(s['refusals'])} |",
        f"| failed attempts | {errors} |",
        f"| HTTP 5xx | {s['http_5xx']:,} |",
        "| nginx's error log, by kind | " + ((", ".join(
            f"`{k}`: {v:,}" for k, v in s["proxy_errors"].items()) or "none")
            if "proxy_errors" in s else "not recorded by this run") + " |",
        f"| tracebacks in the servers' logs | {s['tracebacks']} |",
        "",
        "Targets: 0 blinks of tabs back within the grace "
        + ("met" if s.get("blinks_back_within_grace", s["blinks"]) == 0 else "**not met**")
        + "; 0 blinks in all " + ("met" if s["blinks"] == 0 else "**not met**") +
        "; 0 ghosts " + ("met" if s["ghosts"] == 0 else "**not met**") + "; all back "
        + ("met" if all(p["all_back_s"] is not None for p in s["phases"]) else "**not met**")
        + ".",
    ]
    return "\n".join(lines)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--render":
        # Rewrite the doc section from the saved results, without measuring.
        name = sys.argv[2] if len(sys.argv) > 2 else "rolling"
        data = json.loads((bl.RESULTS / f"{name}.json").read_text())
        if "returns" in data:  # the classification of the blinks, as the run saved them
            data["summary"].update(classify(data["blinks"], data["returns"]))
        bl.update_doc(name, render(data, name))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--observe":
        asyncio.run(observe(int(sys.argv[2]), float(sys.argv[3])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--wait", type=float, default=90.0)
    parser.add_argument("--between", type=float, default=5.0)
    parser.add_argument("--settle", type=float, default=12.0)
    parser.add_argument("--poll", type=float, default=0.25)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting of the servers, e.g. HEARTBEAT_DRAIN_STOP_LISTENING=0")
    parser.add_argument("--tag", default="", help="results and doc section of their own")
    parser.add_argument("--commit", default=bl.head_commit())
    run(parser.parse_args())


if __name__ == "__main__":
    main()
