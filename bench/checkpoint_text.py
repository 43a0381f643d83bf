"""Checkpoint parameters: the session rows' datetimes as SQLite text, Django's way and directly.

A checkpoint slice builds its parameters on the database thread while holding the GIL,
so the time it takes is time the event loop cannot run. This times the recorder's
``_payload`` (its datetimes through ``recorder._datetime_text``) against the same rows
through Django's ``adapt_datetimefield_value`` for each value, as before.

    .venv/bin/python -m bench.checkpoint_text [--rows 2000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import time
import timeit

from bench import benchlib as bl

NAME = "checkpoint-text"


def rows_of(n: int) -> list[dict]:
    from heartbeat_app import recorder

    now = time.time()
    return [{"id": f"{i:032d}", "rooms": "a b", "last_seen_at": recorder._dt(now - i / 1000),
             "stale_after": recorder._dt(now + 30), "zombie_after": recorder._dt(now + 40),
             "recorded_at": recorder._dt(now), "rtt_ms": 1.5, "rtt_avg_ms": 1.2,
             "visible": True, "frames_in": 10, "probes_sent": 2,
             "last_probe_at": recorder._dt(now - 3), "zombie_detected_at": None,
             "closed_at": None, "close_code": None, "close_reason": ""} for i in range(n)]


def run(args):
    import os

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.benchproj.settings")
    import django

    django.setup()
    from django.db import connection

    from heartbeat_app import recorder
    from heartbeat_app.models import Session

    facts = bl.machine()
    rows = rows_of(args.rows)
    fields = [Session._meta.get_field(n) for n in recorder.CHECKPOINT_FIELDS]

    def django_way():  # every datetime through Django's adapt_datetimefield_value
        return recorder._payload(rows, fields, recorder._django_text())

    assert django_way() == recorder._payload(rows, fields), "the two texts differ"
    timed = {}
    for label, fn in (("django", django_way), ("direct", lambda: recorder._payload(rows, fields))):
        runs = timeit.repeat(fn, number=10, repeat=args.repeat)
        timed[label] = {"best_ms": min(runs) / 10 * 1000,
                        "median_ms": sorted(runs)[len(runs) // 2] / 10 * 1000}
        print(label, timed[label], flush=True)
    data = {"machine": facts, "commit": args.commit, "args": vars(args),
            "vendor": connection.vendor, "timed": timed}
    bl.save_results(NAME, data)
    bl.update_doc(NAME, render(data))


def render(data):
    a, t = data["args"], data["timed"]
    return "\n".join([
        "## Checkpoint parameters: datetimes as SQLite text", "",
        f"Commit `{data['commit']}`. " + bl.machine_line(data["machine"]), "",
        f"Command: `.venv/bin/python -m bench.checkpoint_text --rows {a['rows']} --repeat "
        f"{a['repeat']}` (results: `bench/results/{NAME}.json`).", "",
        f"{a['rows']:,} live rows of the checkpoint's columns (five datetimes each, two "
        "empty) made into the parameters of one statement, ten times a repeat, in one "
        f"process on {data['vendor']}. *Django's way* adapts each datetime with "
        "`adapt_datetimefield_value`, as the recorder did; *direct* is the recorder's "
        "`_payload` now, which gives a UTC datetime its naive `str()` when the connection is "
        "in UTC. Both give the same text (checked by the script and by "
        "`tests/test_recorder_text.py`).", "",
        "| | best | median |", "|---|---|---|",
        f"| Django's way | {t['django']['best_ms']:.2f} ms | {t['django']['median_ms']:.2f} ms |",
        f"| direct | {t['direct']['best_ms']:.2f} ms | {t['direct']['median_ms']:.2f} ms |",
        "", f"Direct ÷ Django's way (best): {t['direct']['best_ms'] / t['django']['best_ms']:.2f}.",
    ])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--commit", default=bl.head_commit())
    run(parser.parse_args())


if __name__ == "__main__":
    main()
