"""Zombie detection: time from each client's last frame to its 4408 close.

1,000 clients (rooms of 10) on one Daphne process with HEARTBEAT_INTERVAL=2,
HEARTBEAT_TIMEOUT=2, HEARTBEAT_TICK=0.2 answer the server's probes for a while, then all
go silent at once: they stop sending anything (protocol pongs included) but keep
reading, so each records when its close frame arrives. The server's own 'silent for'
log lines are counted too.

    .venv/bin/python -m bench.zombies [--clients 1000]
"""

from __future__ import annotations

import argparse
import re
import time

from bench import benchlib as bl

INTERVAL, TIMEOUT, TICK = 2.0, 2.0, 0.2


def run(args):
    facts = bl.machine()
    work = bl.Workdir("zombies")
    env = {"HEARTBEAT_INTERVAL": str(INTERVAL), "HEARTBEAT_TIMEOUT": str(TIMEOUT),
           "HEARTBEAT_TICK": str(TICK)}
    with bl.Server(work, "daphne", env, name="daphne") as server:
        client = bl.LoadClient(port=server.port, count=args.clients, path="/ws/rooms/z{room}/",
                               per_room=10)
        try:
            connected = client.cmd("connect")
            print("connected", connected["ok"], "failed", connected["failed"], flush=True)
            time.sleep(args.healthy)  # several probe cycles, answered
            before = client.cmd("stats")
            muted = client.cmd("mute")
            deadline = time.time() + INTERVAL + TIMEOUT + 15
            while time.time() < deadline:
                time.sleep(1)
                report = client.cmd("report")
                if all(at is not None for at in report["closed_at"]):
                    break
            report = client.cmd("report")
        finally:
            client.close()
        log = server.log()
    silences = [float(x) for x in re.findall(r"silent for ([0-9.]+) s", log)]
    detect = [closed - last for last, closed, code in
              zip(report["last_sent"], report["closed_at"], report["close_code"], strict=True)
              if closed is not None and code == 4408]
    codes = {}
    for code in report["close_code"]:
        codes[str(code)] = codes.get(str(code), 0) + 1
    summary = {
        "clients": args.clients, "connected": connected["ok"],
        "probes_answered_before": before["probes"], "closed_4408": len(detect),
        "close_codes": codes, "closed_before_mute": sum(
            1 for at in report["closed_at"] if at is not None and at < muted["t"]),
        "p50_s": bl.pct(detect, 50), "p99_s": bl.pct(detect, 99),
        "min_s": min(detect) if detect else None, "max_s": max(detect) if detect else None,
        "server_silent_lines": len(silences),
        "server_silence_p50_s": bl.pct(silences, 50),
        "server_silence_max_s": max(silences) if silences else None,
        "bound_s": INTERVAL + TIMEOUT + TICK, "interval_plus_timeout_s": INTERVAL + TIMEOUT,
    }
    print(summary, flush=True)
    data = {"machine": facts, "args": vars(args), "summary": summary, "detect_s": detect,
            "server_silences_s": silences}
    bl.save_results("zombies", data)
    plot(data)
    bl.update_doc("zombies", render(data))


def plot(data):
    plt = bl.pyplot()
    s = data["summary"]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.hist(data["detect_s"], bins=60, color="C0",
            label="client: last frame sent → 4408 close frame read")
    ax.axvline(s["interval_plus_timeout_s"], color="k", ls="--", label="interval + timeout")
    ax.axvline(s["bound_s"], color="C3", ls=":", label="interval + timeout + 1 tick")
    ax.set_xlabel("seconds")
    ax.set_ylabel("clients")
    ax.set_title(f"{s['closed_4408']:,} silent clients closed with 4408 "
                 f"(interval {INTERVAL:g} s, timeout {TIMEOUT:g} s, tick {TICK:g} s)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(bl.plot_path("zombies"))


def render(data):
    s, a = data["summary"], data["args"]
    over = sum(1 for x in data["detect_s"] if x > s["bound_s"])
    return "\n".join([
        "## Zombie detection", "",
        bl.commit_line(data) + bl.machine_line(data["machine"]), "",
        f"Command: `.venv/bin/python -m bench.zombies --clients {a['clients']}` "
        f"(results: `bench/results/zombies.json`).", "",
        f"{s['clients']:,} raw clients (rooms of 10, `bench/loadclient.py` on CPU 1) on one "
        f"Daphne process (CPU 0, in-memory layer) with `HEARTBEAT_INTERVAL={INTERVAL:g}`, "
        f"`HEARTBEAT_TIMEOUT={TIMEOUT:g}`, `HEARTBEAT_TICK={TICK:g}`. They answered "
        f"{s['probes_answered_before']:,} server probes over {a['healthy']:g} s, then all went "
        f"silent at once: nothing sent any more, protocol pongs included, while still "
        f"reading. Each client timed its last frame sent and the arrival of its close frame "
        f"(one process, one clock).", "",
        "![Time from silence to the 4408 close](img/bench-zombies.png)", "",
        "| closed with 4408 | p50 | p99 | min | max | interval + timeout | documented bound "
        "(+ 1 tick) | over the bound | server 'silent for' lines (p50 / max) |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {s['closed_4408']:,} of {s['connected']:,} | {s['p50_s']:.2f} s | "
        f"{s['p99_s']:.2f} s | {s['min_s']:.2f} s | {s['max_s']:.2f} s | "
        f"{s['interval_plus_timeout_s']:g} s | {s['bound_s']:g} s | {over} | "
        f"{s['server_silent_lines']:,} ({bl.fmt(s['server_silence_p50_s'], 2)} / "
        f"{bl.fmt(s['server_silence_max_s'], 2)} s) |", "",
        f"Close codes seen: {', '.join(f'{k}: {v}' for k, v in s['close_codes'].items())}; "
        f"closed before the silence began: {s['closed_before_mute']}.",
        "The server measures silence on its stall-credited clock (docs/architecture.md), so "
        "any time the loop was late, for instance while 1,000 closes and their presence "
        "leaves went out together, is added to every close; the client's figure includes "
        "it, plus the close frame's trip.",
    ])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--healthy", type=float, default=6.0)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
