"""Reaper pass cost: one `reap()` of the Redis store with many rooms and nothing expired.

    .venv/bin/python -m bench.reaper [--rooms 100,1000,10000] [--reps 50] [--tag now]

Every room holds one live session; each pass also finds ``--expired`` sessions of a
room of their own past their expiry (joined again before the next pass). A pass is one
or more Lua scripts, and Redis runs nothing else while one runs: its time is time every
other client of that Redis waits. Results of every tag are kept side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from bench import benchlib as bl

T0 = 1_800_000_000_000
TTL = 3_600_000


def meta(i: int, room: str) -> dict:
    return {"session": f"s{room}{i}", "key": f"u{i}", "tab": f"t{i}", "visible": True,
            "online_at": T0, "instance": "bench", "channel": f"specific.x!c{i}",
            "ref": f"r{i}"}


async def measure(rooms: int, reps: int, expired: int) -> dict:
    from heartbeat_app.stores.redis import RedisStore

    store = RedisStore(bl.REDIS_URL, prefix=f"hbbench:reap{rooms}")
    await store.flush()
    for first in range(0, rooms, 1000):
        await store.join_many([(f"room-{i}", meta(i, "")) for i in
                               range(first, min(rooms, first + 1000))], TTL, T0)
    client = bl.redis_client()
    times, redis_us, reaped = [], [], 0
    for rep in range(reps + 1):
        now = T0 + 1_000 * (rep + 1)
        await store.join_many([("short", meta(i, f"r{rep}-")) for i in range(expired)],
                              1, now - 10)
        usec = int(client.info("commandstats").get("cmdstat_evalsha", {}).get("usec", 0))
        start = time.perf_counter()
        result = await store.reap(10_000_000, now)
        took = time.perf_counter() - start
        spent = int(client.info("commandstats").get("cmdstat_evalsha", {}).get("usec", 0))
        assert len(result.changes) == expired, (len(result.changes), expired)
        if rep:  # the first pass may index rooms written before the index
            times.append(took)
            redis_us.append(spent - usec)
            reaped += len(result.changes)
    assert await store.count("room-0") == 1
    await store.flush()
    await store.close()
    return {"rooms": rooms, "expired": expired, "n": reps, "reaped": reaped,
            "p50_ms": bl.pct(times, 50) * 1000, "p99_ms": bl.pct(times, 99) * 1000,
            "redis_p50_ms": bl.pct(redis_us, 50) / 1000}


def run(args) -> None:
    import os

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.benchproj.settings")
    import django

    django.setup()
    facts = bl.machine()
    try:
        rows = [asyncio.run(measure(int(n), args.reps, args.expired))
                for n in args.rooms.split(",")]
    finally:
        bl.redis_cleanup()
    for row in rows:
        print(row, flush=True)
    path = bl.RESULTS / "reaper.json"
    data = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    data["runs"][args.tag] = {"machine": facts, "args": vars(args), "rows": rows,
                              "commit": bl.head_commit()}
    bl.save_results("reaper", data)
    bl.update_doc("reaper", render(data))


def render(data: dict) -> str:
    lines = [
        "## Reaper pass", "",
        "Command: `.venv/bin/python -m bench.reaper --rooms R --reps N --expired E --tag T` "
        "(results: `bench/results/reaper.json`, one run per tag).", "",
        "Rooms of one live session each in the Redis store, then sequential `reap()` passes, "
        "each with E sessions just past their expiry. *Redis* is the time Redis spent in the "
        "pass's scripts (`INFO commandstats`, `evalsha` usec): Redis runs nothing else "
        "meanwhile, so every other client of that Redis (the channel layer, every process's "
        "joins and beats) waits that long.", "",
        "| run | commit | rooms | expired a pass | pass p50 / p99 | Redis p50 |",
        "|---|---|---|---|---|---|",
    ]
    for tag, run_ in data["runs"].items():
        for r in run_["rows"]:
            lines.append(f"| {tag} | `{run_['commit']}` | {r['rooms']:,} | {r['expired']} | "
                         f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f} ms | "
                         f"{r['redis_p50_ms']:.2f} ms |")
    for tag, run_ in data["runs"].items():
        lines += ["", f"*{tag}*: " + bl.machine_line(run_["machine"])]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rooms", default="100,1000,10000")
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--expired", type=int, default=10)
    parser.add_argument("--tag", default="now")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
