"""Crash: from ``kill -9`` of one of two Daphne workers to the last leave on the other.

Two Daphne processes share Redis (database 12, ``hbbench`` prefixes) with
PRESENCE_INSTANCE_TTL=3 and PRESENCE_REAP_INTERVAL=1 (tick 1 s). 200 clients sit on A,
one observer on B, all in one room. A is killed with SIGKILL; the observer times every
``presence_diff`` leave. Repeated with a fresh A each time.

    .venv/bin/python -m bench.crash [--clients 200] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from bench import benchlib as bl

INSTANCE_TTL, REAP_INTERVAL, TICK = 3.0, 1.0, 1.0


async def observer(port, room, expect):
    """Observer process: join B, say READY when the room is full, time the leaves."""
    from bench import rawws

    members: set[str] = set()
    leaves: list[tuple[float, str, str]] = []
    full = asyncio.Event()
    done = asyncio.Event()

    def on_text(client, payload):
        message = json.loads(payload)
        kind = message.get("type")
        if kind == "presence_state":
            members.update(message["members"])
        elif kind == "presence_diff":
            members.update(message["joins"])
            now = time.time()
            for key, value in message["leaves"].items():
                for meta in value["metas"]:
                    leaves.append((now, key, meta.get("reason", "")))
        if len(members) >= expect + 1:
            full.set()
        if len({k for _, k, r in leaves if r == "instance_lost"}) >= expect:
            done.set()

    await rawws.connect(bl.HOST, port, f"/ws/rooms/{room}/", on_text=on_text)
    await asyncio.wait_for(full.wait(), 60)
    print(json.dumps({"event": "ready", "members": len(members)}), flush=True)
    try:
        await asyncio.wait_for(done.wait(), 40)
    except TimeoutError:
        pass
    print(json.dumps({"event": "leaves", "leaves": leaves}), flush=True)


def run(args):
    facts = bl.machine()
    work = bl.Workdir("crash")
    # The observer follows the member list: a room above PRESENCE_FULL_LIST_MAX (200 by
    # default) would send it only the count.
    env = {"REDIS_URL": bl.REDIS_URL, "PRESENCE_INSTANCE_TTL": str(INSTANCE_TTL),
           "PRESENCE_FULL_LIST_MAX": "none",
           "PRESENCE_REAP_INTERVAL": str(REAP_INTERVAL), "HEARTBEAT_TICK": str(TICK)}
    reps = []
    bl.redis_cleanup()
    try:
        with bl.Server(work, "daphne", env, name="B", cpu=1) as b:
            for rep in range(args.reps):
                room = f"crash{rep}"
                a = bl.Server(work, "daphne", env, name=f"A{rep}", cpu=0).start()
                clients = bl.LoadClient(cpu=None, port=a.port, count=args.clients,
                                        path=f"/ws/rooms/{room}/", per_room=10**9)
                try:
                    clients.cmd("connect")
                    obs = bl.spawn_client("crash", "--observe", b.port, room, args.clients,
                                          cpu=None)
                    ready = bl.read_json_line(obs)
                    time.sleep(1.5)  # a few ticks of steady state
                    t_kill = time.time()
                    a.kill9()
                    leaves = bl.read_json_line(obs)["leaves"]
                    obs.wait(timeout=10)
                finally:
                    clients.close()
                    a.stop()
                lost = [t - t_kill for t, _, reason in leaves if reason == "instance_lost"]
                rec = {"rep": rep, "members_before": ready["members"],
                       "instance_lost_leaves": len(lost),
                       "other_leaves": len(leaves) - len(lost),
                       "first_s": min(lost) if lost else None,
                       "last_s": max(lost) if lost else None, "times": sorted(lost)}
                reps.append(rec)
                print({k: v for k, v in rec.items() if k != "times"}, flush=True)
                time.sleep(1)
    finally:
        bl.redis_cleanup()
    data = {"machine": facts, "args": vars(args), "reps": reps,
            "bound_s": INSTANCE_TTL + REAP_INTERVAL + TICK}
    bl.save_results("crash", data)
    plot(data)
    bl.update_doc("crash", render(data))


def plot(data):
    plt = bl.pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.4))
    for rec in data["reps"]:
        ts = rec["times"]
        ax.step(ts, range(1, len(ts) + 1), where="post", label=f"run {rec['rep'] + 1}")
    ax.axvline(data["bound_s"], color="C3", ls=":",
               label="INSTANCE_TTL + REAP_INTERVAL + TICK")
    ax.axvline(INSTANCE_TTL, color="k", ls="--", lw=0.8, label="INSTANCE_TTL")
    ax.set_xlim(0, max(data["bound_s"] + 1, max((r["last_s"] or 0) for r in data["reps"]) + 0.5))
    ax.set_xlabel("seconds after kill -9 of worker A")
    ax.set_ylabel("leaves seen by the observer on B")
    ax.set_title(f"{data['args']['clients']} sessions of a killed worker leaving the room")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(bl.plot_path("crash"))


def render(data):
    a = data["args"]
    lines = [
        "## Crash of a worker: leaves on the other", "",
        bl.commit_line(data) + bl.machine_line(data["machine"]), "",
        f"Command: `.venv/bin/python -m bench.crash --clients {a['clients']} --reps "
        f"{a['reps']}` (results: `bench/results/crash.json`).", "",
        f"Two Daphne processes share Redis (channels_redis and the Redis presence store) "
        f"with `PRESENCE_INSTANCE_TTL={INSTANCE_TTL:g}`, `PRESENCE_REAP_INTERVAL="
        f"{REAP_INTERVAL:g}`, `HEARTBEAT_TICK={TICK:g}`. {a['clients']} clients sit on A and "
        f"one observer on B, all in one room; A is killed with SIGKILL, and the observer "
        f"times each `presence_diff` leave (reason `instance_lost`) from the kill. A fresh A "
        f"for each run.", "",
        "![Leaves after kill -9](img/bench-crash.png)", "",
        "| run | members before | `instance_lost` leaves | first leave | last leave | "
        "documented bound |",
        "|---|---|---|---|---|---|",
    ]
    for r in data["reps"]:
        lines.append(f"| {r['rep'] + 1} | {r['members_before']} | {r['instance_lost_leaves']} "
                     f"| {bl.fmt(r['first_s'], 2)} s | {bl.fmt(r['last_s'], 2)} s | "
                     f"{data['bound_s']:g} s |")
    worst = max((r["last_s"] or 0) for r in data["reps"])
    lines += ["", f"Worst last leave: **{worst:.2f} s** against the bound of "
              f"{data['bound_s']:g} s."]
    if all(r["first_s"] == r["last_s"] for r in data["reps"]):
        lines[-1] += (" In every run all the leaves arrived in one diff: the reaper removes a "
                      "lost instance's sessions in one script, and the tracker sends at most "
                      "one diff per room per tick.")
    return "\n".join(lines)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--observe":
        asyncio.run(observer(int(sys.argv[2]), sys.argv[3], int(sys.argv[4])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
