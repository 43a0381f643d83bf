"""Settings of the benchmark servers: the demo's settings plus the comparison consumers.

Everything the demo reads from the environment still applies (REDIS_URL, HEARTBEAT_*,
PRESENCE_*). Channel-layer keys get the BENCH_LAYER_PREFIX, so a benchmark run can
delete exactly what it wrote.

The servers import this package as ``benchproj`` (bench/ on their PYTHONPATH); the
benchmarks that set Django up in their own process import it as ``bench.benchproj``.
It names itself after whichever it was imported as; its app label is ``benchproj``
either way.
"""

import os

from project.settings import *  # noqa: F403
from project.settings import CHANNEL_LAYERS, INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, __package__]
ASGI_APPLICATION = f"{__package__}.asgi.application"

if CHANNEL_LAYERS["default"]["BACKEND"].startswith("channels_redis."):
    CHANNEL_LAYERS["default"]["CONFIG"]["prefix"] = os.environ.get(
        "BENCH_LAYER_PREFIX", "hbbench:asgi")

# A drain's listening sockets, for paired runs (bench/rolling.py --env ...=0).
HEARTBEAT_DRAIN_STOP_LISTENING = os.environ.get("HEARTBEAT_DRAIN_STOP_LISTENING", "1") != "0"
