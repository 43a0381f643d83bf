"""Size of the bundled browser client: raw, gzipped, minified and minified + gzipped.

Run: ``python -m bench.client_size``. Minification uses esbuild (``npx --yes
esbuild@0.28.2 --minify``, fetched from the npm registry on first use); gzip is level 9.
The figures in docs/client.md come from this script.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "heartbeat_app" / "static" / "heartbeat_app" / "heartbeat.js"
ESBUILD = "esbuild@0.28.2"


def gz(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def minify(source: bytes) -> bytes | None:
    if not shutil.which("npx"):
        return None
    result = subprocess.run(
        ["npx", "--yes", ESBUILD, "--minify", "--loader=js"],
        input=source, capture_output=True, check=False, timeout=300,
    )
    if result.returncode != 0:
        sys.stderr.write(result.stderr.decode(errors="replace"))
        return None
    return result.stdout


def kb(n: int) -> str:
    return f"{n / 1024:.1f} KiB ({n} bytes)"


def main() -> int:
    source = CLIENT.read_bytes()
    lines = source.count(b"\n")
    print(f"{CLIENT.relative_to(ROOT)}: {lines} lines")
    print()
    print("| form | size |")
    print("|---|---|")
    print(f"| source | {kb(len(source))} |")
    print(f"| source, gzip -9 | {kb(gz(source))} |")
    minified = minify(source)
    if minified is None:
        print("| minified | (esbuild not available: needs npx) |")
        return 1
    print(f"| minified ({ESBUILD}) | {kb(len(minified))} |")
    print(f"| minified, gzip -9 | {kb(gz(minified))} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
