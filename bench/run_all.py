"""Run every benchmark in turn, as docs/benchmarks.md shows them (about an hour on 2 cores).

    .venv/bin/python -m bench.run_all [name ...]

Run it from the repository root; each benchmark runs as ``python -m bench.<module>``.
"""

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = {  # name -> the bench module and its arguments
    "pingpong": ["pingpong"],
    "scheduler_cost": ["scheduler_cost"],
    "zombies": ["zombies"],
    "crash": ["crash"],
    "presence_reads": ["presence_reads"],
    "handshake": ["handshake", "--rounds", "5", "--connections", "600", "--inflight", "20",
                  "--profile"],
    "storm": ["storm", "--clients", "3000,5000", "--wait", "90"],
    "storm-19k": ["storm", "--clients", "19000", "--wait", "150", "--inflight", "15",
                  "--tag", "19k"],
    "rolling": ["rolling", "--clients", "2000"],
    "capacity": ["capacity", "--sessions", "5000"],
    # Issue #12's runs: 5 rounds at 5,000, and 19,000 with a bare consumer beside them.
    "capacity-5k-rounds": ["capacity", "--sessions", "5000", "--repeats", "5",
                           "--tag", "5k-rounds"],
    "capacity-19k-final": ["capacity", "--sessions", "19000", "--soak", "300",
                           "--variants", "bare,redis", "--tag", "19k-final"],
    "flood": ["flood"],
    # A room of 10,000: runs of their own, each within 10 minutes (see the doc's section).
    "bigroom": ["bigroom", "--runs", "count:10000", "--profile"],
    "bigroom-typing": ["bigroom", "--runs", "count:10000", "--late", "0", "--typing", "100",
                       "--tag", "typing", "--profile"],
    "bigroom-full": ["bigroom", "--runs", "full:10000", "--profile"],
    "bigroom-2000": ["bigroom", "--runs", "full:2000,count:2000"],
    "summary": ["summary"],
}


def main():
    names = sys.argv[1:] or list(RUNS)
    for name in names:
        t = time.monotonic()
        print(f"== {name}", flush=True)
        module, *args = RUNS[name]
        subprocess.run([sys.executable, "-m", f"bench.{module}", *args], cwd=ROOT, check=True)
        print(f"== {name}: {time.monotonic() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
