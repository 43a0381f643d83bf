"""Settings of the benchmark servers: the demo's settings plus the comparison consumers.

Everything the demo reads from the environment still applies (REDIS_URL, HEARTBEAT_*,
PRESENCE_*). Channel-layer keys get the BENCH_LAYER_PREFIX, so a benchmark run can
delete exactly what it wrote.
"""

import os

from project.settings import *  # noqa: F403
from project.settings import CHANNEL_LAYERS, INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "benchproj"]
ASGI_APPLICATION = "benchproj.asgi.application"

if CHANNEL_LAYERS["default"]["BACKEND"].startswith("channels_redis."):
    CHANNEL_LAYERS["default"]["CONFIG"]["prefix"] = os.environ.get(
        "BENCH_LAYER_PREFIX", "hbbench:asgi")
