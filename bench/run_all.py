"""Run every benchmark in turn with its defaults (about 15 to 20 minutes on 2 cores).

    .venv/bin/python bench/run_all.py [name ...]
"""

import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ORDER = ["pingpong", "scheduler_cost", "zombies", "crash", "presence_reads", "storm",
         "capacity", "summary"]


def main():
    names = sys.argv[1:] or ORDER
    for name in names:
        t = time.monotonic()
        print(f"== {name}", flush=True)
        subprocess.run([sys.executable, str(BENCH / f"{name}.py")], check=True)
        print(f"== {name}: {time.monotonic() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
