"""Where a benchmark server's Python memory goes: tracemalloc, snapshots on SIGUSR2.

With BENCH_TRACEMALLOC=<file> the server traces its allocations from start-up (10 frames
each). The first SIGUSR2 takes the base snapshot; each later one writes, as one JSON line
appended to <file>, the allocation sites that grew most since the base: by line, by file,
and the stacks of the largest. Tracing slows the server and adds memory of its own, so a
run with it measures where memory goes, not how much (bench/capacity.py --tracemalloc).
"""

from __future__ import annotations

import json
import signal
import sysconfig
import tracemalloc
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2]) + "/"
STDLIB = sysconfig.get_paths()["stdlib"] + "/"

FRAMES = 10
_base: list[tracemalloc.Snapshot] = []


def _name(filename: str) -> str:
    """A file named as the page shows it: a package's own path, the standard library's, the
    repository's; never the machine's."""
    if "site-packages/" in filename:
        return filename.rsplit("site-packages/", 1)[-1]
    if filename.startswith(STDLIB):
        return "stdlib " + filename[len(STDLIB):]
    return filename.removeprefix(ROOT)


def _site(frame) -> str:
    return f"{_name(frame.filename)}:{frame.lineno}"


def _snapshot(path: str) -> None:
    snap = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)])
    if not _base:
        _base.append(snap)
        return
    base = _base[0]
    by_line = snap.compare_to(base, "lineno")[:25]
    by_file = snap.compare_to(base, "filename")[:15]
    stacks = snap.compare_to(base, "traceback")[:8]
    record = {
        "traced_mb": sum(s.size for s in snap.statistics("filename")) / 2**20,
        "growth_mb": sum(d.size_diff for d in snap.compare_to(base, "filename")) / 2**20,
        "lines": [[_site(d.traceback[0]), d.size_diff, d.count_diff] for d in by_line],
        "files": [[_name(d.traceback[0].filename), d.size_diff, d.count_diff]
                  for d in by_file],
        "stacks": [[[_site(f) for f in d.traceback], d.size_diff, d.count_diff]
                   for d in stacks],
    }
    with open(path, "a") as out:
        out.write(json.dumps(record) + "\n")


def install(path: str) -> None:
    tracemalloc.start(FRAMES)
    signal.signal(signal.SIGUSR2, lambda *_: _snapshot(path))
