"""Rolling restarts side by side: saved bench.rolling results in one table.

    python -m bench.rolling_compare NAME=LABEL [NAME=LABEL ...] [--tag TAG]

Each NAME is a results file of ``bench.rolling`` (``bench/results/NAME.json``); the
section ``rolling-compare`` (or ``rolling-compare-TAG``) of docs/benchmarks.md gets
one row per run: its commit, the servers' settings it changed, blinks, refusals, time
to all back after each restart and how each drain ended. Nothing is measured here.
"""

from __future__ import annotations

import json
import sys

from bench import benchlib as bl


def row(label: str, data: dict) -> str:
    s = data["summary"]
    phases = s["phases"]
    env = ", ".join(f"`{kv}`" for kv in data["args"].get("env", [])) or "defaults"
    back = " / ".join(f"{bl.fmt(p['all_back_s'], 1)} s" for p in phases)
    drains = " / ".join(p.get("drain_done", "not recorded") for p in phases)
    refused = sum(s.get("refusals", {}).values())
    return (f"| {label} | `{data['commit']}` | {env} | {s['blinks']:,} | "
            f"{s['ghosts']:,} | "
            f"{refused:,} | {back} | {drains} |")


def render(runs: list[tuple[str, str, dict]], title: str) -> str:
    first = runs[0][2]
    lines = [
        f"## {title}", "",
        bl.machine_line(first["machine"]), "",
        "Rows from `bench.rolling` results, rendered by `python -m bench.rolling_compare "
        + " ".join(f"{name}={label!r}" for name, label, _ in runs) + "` "
        f"(results: {', '.join(f'`bench/results/{name}.json`' for name, _, _ in runs)}). "
        "Each run: two Daphne processes behind nginx, "
        f"{first['args']['clients']:,} clients, A then B restarted with SIGTERM (the "
        "*Rolling restart behind nginx* sections say how).", "",
        "| run | commit | servers' settings | members that blinked | ghosts | refused (4013) "
        "| all back after A / B | the drains' last log lines (A / B) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [row(label, data) for _, label, data in runs]
    return "\n".join(lines)


def main() -> None:
    args = sys.argv[1:]
    tag = ""
    if "--tag" in args:
        i = args.index("--tag")
        tag, args = args[i + 1], args[:i] + args[i + 2:]
    runs = []
    for spec in args:
        name, _, label = spec.partition("=")
        runs.append((name, label or name, json.loads((bl.RESULTS / f"{name}.json").read_text())))
    if not runs:
        sys.exit(__doc__)
    section = f"rolling-compare-{tag}" if tag else "rolling-compare"
    bl.update_doc(section, render(runs, "Rolling restarts compared" + (f" ({tag})" if tag else "")))


if __name__ == "__main__":
    main()
